"""Discounted UCB (Kocsis & Szepesvári 2006; Garivier & Moulines, "On Upper-Confidence Bound
Policies for Non-Stationary Bandit Problems", arXiv 0805.3415), one bandit per device.

After each of the device's plays every arm's statistics are multiplied by γ, so a reward observed
k plays ago weighs γ^k: N_a = Σ γ^(t−s) 1{a_s = a}, X̄_a = Σ γ^(t−s) x_s 1{a_s = a} / N_a,
n = Σ_a N_a. Index: X̄_a + 2b·√(ξ ln n / N_a) (b = 1 for rewards in [0, 1]; ξ = 0.6 as in the paper's
experiments). Untried arms first; ties broken at random with the learner's RNG. The discount counts
the device's own plays, not global rounds (a device that sits out rounds keeps its memory).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from simfed.decisions.arms import ArmSpace
from simfed.decisions.policies.base import DiscretePolicy, argmax_random_ties
from simfed.options import Annotated, Range
from simfed.records import Arm


class DiscountedUCBLearner:
    def __init__(self, n_arms: int, seed: int, discount: float = 0.95, xi: float = 0.6, scale: float = 1.0) -> None:
        self.discount = discount
        self.xi = xi
        self.scale = scale
        self._rng = random.Random(seed)
        self._n = [0.0] * n_arms  # discounted counts
        self._s = [0.0] * n_arms  # discounted reward sums
        self._played = [False] * n_arms

    def indices(self) -> list[float]:
        total = sum(self._n)
        log_n = math.log(total) if total > 1.0 else 0.0
        out = []
        for n, s, played in zip(self._n, self._s, self._played):
            if not played or n <= 0.0:
                out.append(math.inf)
            else:
                out.append(s / n + 2.0 * self.scale * math.sqrt(self.xi * log_n / n))
        return out

    def choose(self) -> int:
        idx = self.indices()
        return argmax_random_ties(idx, self._rng)

    def learn(self, arm: int, reward: float) -> None:
        g = self.discount
        self._n = [g * n for n in self._n]
        self._s = [g * s for s in self._s]
        self._n[arm] += 1.0
        self._s[arm] += reward
        self._played[arm] = True


class DiscountedUCB(DiscretePolicy):
    """Per-device discounted UCB on a (p, r) grid; ``discount`` is γ, ``xi`` is ξ."""

    name = "discounted-ucb"

    def __init__(self, *, arm_space: ArmSpace | None = None, seed: int = 0, arms: Sequence[Arm] | None = None,
                 discount: Annotated[float, Range(gt=0, le=1), "γ"] = 0.95,
                 xi: Annotated[float, Range(gt=0), "ξ"] = 0.6) -> None:
        super().__init__(arm_space=arm_space, seed=seed, arms=arms)
        self._check_options(locals())
        self.discount = discount
        self.xi = xi

    def _new_learner(self, seed: int) -> DiscountedUCBLearner:
        return DiscountedUCBLearner(len(self._arms), seed, self.discount, self.xi)

    @classmethod
    def _test_params(cls) -> list[dict]:
        return [{}, {"discount": 0.8}]
