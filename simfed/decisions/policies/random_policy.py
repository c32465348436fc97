"""Uniformly random arms from the grid: the no-learning floor of every bandit study."""

from __future__ import annotations

import random
from collections.abc import Sequence

from simfed.decisions.arms import ArmSpace
from simfed.decisions.policies.base import DiscretePolicy
from simfed.records import Arm


class RandomLearner:
    def __init__(self, n_arms: int, seed: int) -> None:
        self.n_arms = n_arms
        self._rng = random.Random(seed)

    def choose(self) -> int:
        return self._rng.randrange(self.n_arms)

    def learn(self, arm: int, reward: float) -> None:  # nothing to learn
        return None


class RandomPolicy(DiscretePolicy):
    """Each device plays a uniformly random grid arm each round (own seeded RNG per device)."""

    name = "random"

    def __init__(self, *, arm_space: ArmSpace | None = None, seed: int = 0, arms: Sequence[Arm] | None = None) -> None:
        super().__init__(arm_space=arm_space, seed=seed, arms=arms)

    def _new_learner(self, seed: int) -> RandomLearner:
        return RandomLearner(len(self._arms), seed)
