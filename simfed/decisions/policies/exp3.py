"""EXP3 (Auer, Cesa-Bianchi, Freund & Schapire, "The Nonstochastic Multiarmed Bandit Problem",
SIAM J. Computing 2002), one bandit per device: the adversarial-reward baseline.

Play probabilities p_a = (1 − γ)·w_a / Σ_j w_j + γ/K; draw a ~ p; after reward x ∈ [0, 1] for the
played arm, x̂ = x / p_a and w_a ← w_a · exp(γ x̂ / K). Weights are kept as logarithms (the same
update, without overflow on long runs). The draw uses the learner's ``random.Random`` exactly as
``random.choices`` does (one ``random()`` against the cumulative probabilities), which is river's
``bandit.Exp3`` convention, so a learner seeded like river's makes the same choices.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Sequence
from itertools import accumulate

from simfed.decisions.arms import ArmSpace
from simfed.decisions.policies.base import DiscretePolicy
from simfed.options import Annotated, Range
from simfed.records import Arm


class EXP3Learner:
    def __init__(self, n_arms: int, seed: int, gamma: float = 0.1) -> None:
        self.n_arms = n_arms
        self.gamma = gamma
        self._rng = random.Random(seed)
        self._log_w = [0.0] * n_arms
        self._last_probs: list[float] | None = None

    def probabilities(self) -> list[float]:
        """The current play distribution p (a pure function of the weights)."""
        top = max(self._log_w)
        w = [math.exp(x - top) for x in self._log_w]
        total = sum(w)
        k = self.n_arms
        return [(1.0 - self.gamma) * (wi / total) + self.gamma / k for wi in w]

    def choose(self) -> int:
        probs = self.probabilities()
        self._last_probs = probs
        cum = list(accumulate(probs))
        return bisect.bisect(cum, self._rng.random() * (cum[-1] + 0.0), 0, self.n_arms - 1)

    def learn(self, arm: int, reward: float) -> None:
        probs = self._last_probs if self._last_probs is not None else self.probabilities()
        estimate = reward / probs[arm]
        self._log_w[arm] += self.gamma * estimate / self.n_arms
        self._last_probs = None


class EXP3(DiscretePolicy):
    """Per-device EXP3 on a (p, r) grid; ``gamma`` ∈ (0, 1] is the exploration (egalitarianism) rate."""

    name = "exp3"

    def __init__(self, *, arm_space: ArmSpace | None = None, seed: int = 0, arms: Sequence[Arm] | None = None,
                 gamma: Annotated[float, Range(ge=0, le=1), "γ"] = 0.1) -> None:
        super().__init__(arm_space=arm_space, seed=seed, arms=arms)
        self._check_options(locals())
        self.gamma = gamma

    def _new_learner(self, seed: int) -> EXP3Learner:
        return EXP3Learner(len(self._arms), seed, self.gamma)

    @classmethod
    def _test_params(cls) -> list[dict]:
        return [{}, {"gamma": 0.5}]
