"""Uniformly random arms from the grid: the no-learning floor of every bandit study."""

from __future__ import annotations

from collections.abc import Sequence

from simfed.decisions.arms import ArmSpace
from simfed.decisions.policies.arrays import RandomArrays
from simfed.decisions.policies.base import BACKENDS, DiscretePolicy
from simfed.decisions.policies.counter_rng import CounterStream, learner_rng
from simfed.options import Annotated, Choices
from simfed.records import Arm


class RandomLearner:
    """``randrange(n_arms)`` from its ``random.Random``, or with ``rng="counter"`` arm ⌊u·K⌋ (as :class:`RandomArrays`)."""

    def __init__(self, n_arms: int, seed: int, rng: str = "mersenne") -> None:
        self.n_arms = n_arms
        self._rng = learner_rng(seed, rng)

    def choose(self) -> int:
        if isinstance(self._rng, CounterStream):
            arm = self._rng.choice(range(self.n_arms))
            self._rng.counter += 1
            return arm
        return self._rng.randrange(self.n_arms)

    def learn(self, arm: int, reward: float) -> None:  # nothing to learn
        return None


class RandomPolicy(DiscretePolicy):
    """Each device plays a uniformly random grid arm each round (own seeded random stream per device)."""

    name = "random"

    def __init__(self, *, arm_space: ArmSpace | None = None, seed: int = 0, arms: Sequence[Arm] | None = None,
                 backend: Annotated[str, Choices(BACKENDS)] = "arrays") -> None:
        super().__init__(arm_space=arm_space, seed=seed, arms=arms, backend=backend)
        self._check_options(locals())

    def _new_learner(self, seed: int) -> RandomLearner:
        return RandomLearner(len(self._arms), seed, rng=self._learner_rng)

    def _new_arrays(self) -> RandomArrays:
        return RandomArrays(type(self).__name__, self._arms)

    @classmethod
    def _test_params(cls) -> list[dict]:
        return [{}, {"backend": "learners"}, {"backend": "mersenne"}]
