"""UCB1 (Auer, Cesa-Bianchi & Fischer, "Finite-time Analysis of the Multiarmed Bandit Problem",
Machine Learning 2002), one bandit per device over a discrete arm grid.

Index of arm a after n plays in all: μ̂_a + c·√(2 ln n / n_a); an arm never played has index +∞, so
every arm is tried once first. Ties (including the initial round of untried arms) are broken
uniformly at random with the learner's own ``random.Random``. These are exactly river's
``bandit.UCB(delta=c)`` conventions (its running mean, its tie-breaking, its RNG use), so a learner
seeded like river's reproduces river's choices on the same reward stream (tests/decisions/test_river_match.py).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from simfed.decisions.arms import ArmSpace
from simfed.decisions.policies.base import DiscretePolicy, argmax_random_ties
from simfed.options import Annotated, Range
from simfed.records import Arm


class UCB1Learner:
    """UCB1 for one device over ``n_arms`` arms (indices)."""

    def __init__(self, n_arms: int, seed: int, exploration: float = 1.0) -> None:
        self.n_arms = n_arms
        self.exploration = exploration
        self._rng = random.Random(seed)
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

    def choose(self) -> int:
        idx = self.indices()
        return argmax_random_ties(idx, self._rng)

    def learn(self, arm: int, reward: float) -> None:
        self._n += 1
        self._counts[arm] += 1
        self._means[arm] += (1.0 / self._counts[arm]) * (reward - self._means[arm])


class UCB1(DiscretePolicy):
    """Per-device UCB1 on a (p, r) grid. ``exploration`` is c in the bonus c·√(2 ln n / n_a)."""

    name = "ucb1"

    def __init__(self, *, arm_space: ArmSpace | None = None, seed: int = 0, arms: Sequence[Arm] | None = None,
                 exploration: Annotated[float, Range(ge=0), "c"] = 1.0) -> None:
        super().__init__(arm_space=arm_space, seed=seed, arms=arms)
        self._check_options(locals())
        self.exploration = exploration

    def _new_learner(self, seed: int) -> UCB1Learner:
        return UCB1Learner(len(self._arms), seed, self.exploration)

    @classmethod
    def _test_params(cls) -> list[dict]:
        return [{}, {"exploration": 0.5}]
