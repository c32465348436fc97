"""Sliding-window UCB (Garivier & Moulines, arXiv 0805.3415), one bandit per device.

Only the device's last ``window`` plays count: N_a = plays of a among them, X̄_a their mean reward.
Index: X̄_a + b·√(ξ ln min(t, window) / N_a), t the device's number of plays (b = 1 for rewards in
[0, 1]; ξ = 0.6). An arm absent from the window is untried again (index +∞): after an abrupt change
the policy forgets the old regime within ``window`` plays. Ties are broken at random.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Sequence

from simfed.decisions.arms import ArmSpace
from simfed.decisions.policies.base import DiscretePolicy, argmax_random_ties
from simfed.options import Annotated, Range
from simfed.records import Arm


class SlidingWindowUCBLearner:
    def __init__(self, n_arms: int, seed: int, window: int = 50, xi: float = 0.6, scale: float = 1.0) -> None:
        self.window = window
        self.xi = xi
        self.scale = scale
        self._rng = random.Random(seed)
        self._history: deque[tuple[int, float]] = deque()
        self._counts = [0] * n_arms
        self._sums = [0.0] * n_arms
        self._t = 0

    def indices(self) -> list[float]:
        log_n = math.log(min(self._t, self.window)) if self._t > 1 else 0.0
        out = []
        for c, s in zip(self._counts, self._sums):
            if c == 0:
                out.append(math.inf)
            else:
                out.append(s / c + self.scale * math.sqrt(self.xi * log_n / c))
        return out

    def choose(self) -> int:
        idx = self.indices()
        return argmax_random_ties(idx, self._rng)

    def learn(self, arm: int, reward: float) -> None:
        self._t += 1
        self._history.append((arm, reward))
        self._counts[arm] += 1
        self._sums[arm] += reward
        if len(self._history) > self.window:
            old_arm, old_reward = self._history.popleft()
            self._counts[old_arm] -= 1
            self._sums[old_arm] -= old_reward
            if self._counts[old_arm] == 0:
                self._sums[old_arm] = 0.0  # no float residue for an arm that left the window


class SlidingWindowUCB(DiscretePolicy):
    """Per-device sliding-window UCB on a (p, r) grid; ``window`` is τ (plays), ``xi`` is ξ."""

    name = "sliding-window-ucb"

    def __init__(self, *, arm_space: ArmSpace | None = None, seed: int = 0, arms: Sequence[Arm] | None = None,
                 window: Annotated[int, Range(ge=1), "τ"] = 50, xi: Annotated[float, Range(gt=0), "ξ"] = 0.6) -> None:
        super().__init__(arm_space=arm_space, seed=seed, arms=arms)
        self._check_options(locals())
        self.window = int(window)
        self.xi = xi

    def _new_learner(self, seed: int) -> SlidingWindowUCBLearner:
        return SlidingWindowUCBLearner(len(self._arms), seed, self.window, self.xi)

    @classmethod
    def _test_params(cls) -> list[dict]:
        return [{}, {"window": 5}]
