"""UCB1 (Auer, Cesa-Bianchi & Fischer, "Finite-time Analysis of the Multiarmed Bandit Problem",
Machine Learning 2002), one bandit per device over a discrete arm grid.

Index of arm a after n plays in all: μ̂_a + c·√(2 ln n / n_a); an arm never played has index +∞, so
every arm is tried once first. Ties (including the initial round of untried arms) are broken
uniformly at random. With ``rng="mersenne"`` a learner uses its own ``random.Random``: exactly river's
``bandit.UCB(delta=c)`` conventions (its running mean, its tie-breaking, its RNG use), so a learner
seeded like river's reproduces river's choices on the same reward stream (tests/decisions/test_river_match.py).
With ``rng="counter"`` a tie among m arms takes the ⌊u·m⌋-th, u the device's counter-based uniform of its
selection (:mod:`.counter_rng`): what :class:`UCB1Arrays` does for all devices at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from simfed.decisions.arms import ArmSpace
from simfed.decisions.policies.arrays import DiscreteArrays, Field, argmax_ties, log_int
from simfed.decisions.policies.base import BACKENDS, DiscretePolicy, IndexLearner
from simfed.decisions.policies.counter_rng import learner_rng
from simfed.options import Annotated, Choices, Range
from simfed.records import Arm

class UCB1Learner(IndexLearner):
    """UCB1 for one device over ``n_arms`` arms (indices)."""

    def __init__(self, n_arms: int, seed: int, exploration: float = 1.0, rng: str = "mersenne") -> None:
        self.n_arms = n_arms
        self.exploration = exploration
        self._rng = learner_rng(seed, rng)
        self._means = [0.0] * n_arms
        self._counts = [0] * n_arms
        self._n = 0

    def indices(self) -> list[float]:
        out = []
        for m, c in zip(self._means, self._counts):
            if c == 0:
                out.append(math.inf)
            else:
                out.append(m + self.exploration * math.sqrt(2.0 * math.log(self._n) / c))
        return out

    def learn(self, arm: int, reward: float) -> None:
        self._n += 1
        self._counts[arm] += 1
        self._means[arm] += (1.0 / self._counts[arm]) * (reward - self._means[arm])


class UCB1Arrays(DiscreteArrays):
    """:class:`UCB1Learner` (counter draws) of every device: ``means``, ``counts`` [devices, arms], ``plays``."""

    def __init__(self, owner: str, arms: Sequence[Arm], exploration: float) -> None:
        self.exploration = exploration
        super().__init__(owner, arms)

    def _fields(self) -> dict[str, Field]:
        k = (self.n_arms,)
        return {"means": (np.float64, k, 0.0), "counts": (np.int32, k, 0), "plays": (np.int64, (), 0)}

    def _choose_index(self, rows: np.ndarray, counters: np.ndarray) -> np.ndarray:
        counts = self.counts[rows]
        log_n = log_int(self.plays[rows])[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            idx = self.means[rows] + self.exploration * np.sqrt(2.0 * log_n / counts)
        idx[counts == 0] = np.inf
        return argmax_ties(idx, self.key[rows], counters)

    def _learn_index(self, rows: np.ndarray, arms: np.ndarray, rewards: np.ndarray) -> None:
        self.plays[rows] += 1
        self.counts[rows, arms] += 1
        means = self.means[rows, arms]
        self.means[rows, arms] = means + (1.0 / self.counts[rows, arms]) * (rewards - means)


class UCB1(DiscretePolicy):
    """Per-device UCB1 on a (p, r) grid. ``exploration`` is c in the bonus c·√(2 ln n / n_a)."""

    name = "ucb1"

    def __init__(self, *, arm_space: ArmSpace | None = None, seed: int = 0, arms: Sequence[Arm] | None = None,
                 exploration: Annotated[float, Range(ge=0), "c"] = 1.0,
                 backend: Annotated[str, Choices(BACKENDS)] = "arrays") -> None:
        super().__init__(arm_space=arm_space, seed=seed, arms=arms, backend=backend)
        self._check_options(locals())
        self.exploration = exploration

    def _new_learner(self, seed: int) -> UCB1Learner:
        return UCB1Learner(len(self._arms), seed, self.exploration, rng=self._learner_rng)

    def _new_arrays(self) -> UCB1Arrays:
        return UCB1Arrays(type(self).__name__, self._arms, self.exploration)

    @classmethod
    def _test_params(cls) -> list[dict]:
        return [{}, {"exploration": 0.5}, {"backend": "learners"}, {"backend": "mersenne"}]
