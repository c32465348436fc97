"""EXP3 (Auer, Cesa-Bianchi, Freund & Schapire, "The Nonstochastic Multiarmed Bandit Problem",
SIAM J. Computing 2002), one bandit per device: the adversarial-reward baseline.

Play probabilities p_a = (1 − γ)·w_a / Σ_j w_j + γ/K; draw a ~ p; after reward x ∈ [0, 1] for the
played arm, x̂ = x / p_a and w_a ← w_a · exp(γ x̂ / K). Weights are kept as logarithms (the same
update, without overflow on long runs). With ``rng="mersenne"`` the draw uses the learner's
``random.Random`` exactly as ``random.choices`` does (one ``random()`` against the cumulative
probabilities), which is river's ``bandit.Exp3`` convention, so a learner seeded like river's makes the
same choices. With ``rng="counter"`` that one uniform is the device's counter-based draw of its selection
and the weights are exponentiated by numpy (as :class:`EXP3Arrays` does for all devices at once).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from itertools import accumulate

import numpy as np

from simfed.decisions.arms import ArmSpace
from simfed.decisions.policies.arrays import DiscreteArrays, Field, sequential_row_sum
from simfed.decisions.policies.base import BACKENDS, DiscretePolicy
from simfed.decisions.policies.counter_rng import CounterStream, learner_rng, uniforms
from simfed.options import Annotated, Choices, Range
from simfed.records import Arm


class EXP3Learner:
    def __init__(self, n_arms: int, seed: int, gamma: float = 0.1, rng: str = "mersenne") -> None:
        self.n_arms = n_arms
        self.gamma = gamma
        self._rng = learner_rng(seed, rng)
        self._log_w = [0.0] * n_arms
        self._last_probs: list[float] | None = None

    def probabilities(self) -> list[float]:
        """The current play distribution p (a pure function of the weights)."""
        top = max(self._log_w)
        if isinstance(self._rng, CounterStream):
            w = np.exp(np.array(self._log_w) - top).tolist()
        else:
            w = [math.exp(x - top) for x in self._log_w]
        total = sum(w)
        k = self.n_arms
        return [(1.0 - self.gamma) * (wi / total) + self.gamma / k for wi in w]

    def choose(self) -> int:
        probs = self.probabilities()
        self._last_probs = probs
        cum = list(accumulate(probs))
        if isinstance(self._rng, CounterStream):
            u = self._rng.uniform()
            self._rng.counter += 1
        else:
            u = self._rng.random()
        return bisect.bisect(cum, u * (cum[-1] + 0.0), 0, self.n_arms - 1)

    def learn(self, arm: int, reward: float) -> None:
        probs = self._last_probs if self._last_probs is not None else self.probabilities()
        estimate = reward / probs[arm]
        self._log_w[arm] += self.gamma * estimate / self.n_arms
        self._last_probs = None


class EXP3Arrays(DiscreteArrays):
    """:class:`EXP3Learner` (counter draws) of every device: ``log_w`` [devices, arms] and the played arm's
    probability ``pend_prob``."""

    def __init__(self, owner: str, arms: Sequence[Arm], gamma: float) -> None:
        self.gamma = gamma
        super().__init__(owner, arms)

    def _fields(self) -> dict[str, Field]:
        return {"log_w": (np.float64, (self.n_arms,), 0.0), "pend_prob": (np.float64, (), 1.0)}

    def _choose_index(self, rows: np.ndarray, counters: np.ndarray) -> np.ndarray:
        log_w = self.log_w[rows]
        w = np.exp(log_w - log_w.max(axis=1)[:, None])
        total = sequential_row_sum(w)
        probs = (1.0 - self.gamma) * (w / total[:, None]) + self.gamma / self.n_arms
        cum = np.cumsum(probs, axis=1)
        x = uniforms(self.key[rows], counters, 0) * (cum[:, -1] + 0.0)
        idx = (cum[:, : self.n_arms - 1] <= x[:, None]).sum(axis=1)
        self.pend_prob[rows] = probs[np.arange(rows.size), idx]
        return idx

    def _learn_index(self, rows: np.ndarray, arms: np.ndarray, rewards: np.ndarray) -> None:
        self.log_w[rows, arms] += self.gamma * (rewards / self.pend_prob[rows]) / self.n_arms


class EXP3(DiscretePolicy):
    """Per-device EXP3 on a (p, r) grid; ``gamma`` ∈ (0, 1] is the exploration (egalitarianism) rate."""

    name = "exp3"

    def __init__(self, *, arm_space: ArmSpace | None = None, seed: int = 0, arms: Sequence[Arm] | None = None,
                 gamma: Annotated[float, Range(ge=0, le=1), "γ"] = 0.1,
                 backend: Annotated[str, Choices(BACKENDS)] = "arrays") -> None:
        super().__init__(arm_space=arm_space, seed=seed, arms=arms, backend=backend)
        self._check_options(locals())
        self.gamma = gamma

    def _new_learner(self, seed: int) -> EXP3Learner:
        return EXP3Learner(len(self._arms), seed, self.gamma, rng=self._learner_rng)

    def _new_arrays(self) -> EXP3Arrays:
        return EXP3Arrays(type(self).__name__, self._arms, self.gamma)

    @classmethod
    def _test_params(cls) -> list[dict]:
        return [{}, {"gamma": 0.5}, {"backend": "learners"}, {"backend": "mersenne"}]
