"""Sliding-window UCB (Garivier & Moulines, arXiv 0805.3415), one bandit per device.

Only the device's last ``window`` plays count: N_a = plays of a among them, X̄_a their mean reward.
Index: X̄_a + b·√(ξ ln min(t, window) / N_a), t the device's number of plays (b = 1 for rewards in
[0, 1]; ξ = 0.6). An arm absent from the window is untried again (index +∞): after an abrupt change
the policy forgets the old regime within ``window`` plays. Ties are broken at random (the learner's
``random.Random``, or with ``rng="counter"`` its counter-based draws, as :class:`SlidingWindowUCBArrays`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

import numpy as np

from simfed.decisions.arms import ArmSpace
from simfed.decisions.policies.arrays import DiscreteArrays, Field, argmax_ties, log_int
from simfed.decisions.policies.base import BACKENDS, DiscretePolicy, IndexLearner
from simfed.decisions.policies.counter_rng import learner_rng
from simfed.options import Annotated, Choices, Range
from simfed.records import Arm


class SlidingWindowUCBLearner(IndexLearner):
    def __init__(self, n_arms: int, seed: int, window: int = 50, xi: float = 0.6, scale: float = 1.0,
                 rng: str = "mersenne") -> None:
        self.window = window
        self.xi = xi
        self.scale = scale
        self._rng = learner_rng(seed, rng)
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


class SlidingWindowUCBArrays(DiscreteArrays):
    """:class:`SlidingWindowUCBLearner` (counter draws) of every device: ``counts``, ``sums`` [devices, arms], the
    window as a ring buffer ``hist_arm``, ``hist_reward`` [devices, window] from ``head``, and ``plays``."""

    def __init__(self, owner: str, arms: Sequence[Arm], window: int, xi: float, scale: float = 1.0) -> None:
        self.window = int(window)
        self.xi = xi
        self.scale = scale
        super().__init__(owner, arms)

    def _fields(self) -> dict[str, Field]:
        k, w = (self.n_arms,), (self.window,)
        arm_type = np.int16 if self.n_arms < 2**15 else np.int64
        return {"counts": (np.int32, k, 0), "sums": (np.float64, k, 0.0), "hist_arm": (arm_type, w, 0),
                "hist_reward": (np.float64, w, 0.0), "head": (np.int64, (), 0), "plays": (np.int64, (), 0)}

    def _choose_index(self, rows: np.ndarray, counters: np.ndarray) -> np.ndarray:
        counts = self.counts[rows]
        log_n = log_int(np.minimum(self.plays[rows], self.window))[:, None]  # log 0 := 0 = log 1
        with np.errstate(divide="ignore", invalid="ignore"):
            idx = self.sums[rows] / counts + self.scale * np.sqrt(self.xi * log_n / counts)
        idx[counts == 0] = np.inf
        return argmax_ties(idx, self.key[rows], counters)

    def _learn_index(self, rows: np.ndarray, arms: np.ndarray, rewards: np.ndarray) -> None:
        w = self.window
        plays = self.plays[rows]
        head = self.head[rows]
        full = plays >= w  # the window holds w plays: the new one replaces the oldest, at ``head``
        slot = np.where(full, head, (head + plays) % w)
        old_arm = self.hist_arm[rows, slot].astype(np.int64)
        old_reward = self.hist_reward[rows, slot]
        self.hist_arm[rows, slot] = arms
        self.hist_reward[rows, slot] = rewards
        self.plays[rows] = plays + 1
        self.counts[rows, arms] += 1
        self.sums[rows, arms] += rewards
        f = np.flatnonzero(full)
        if f.size:
            fr, fa = rows[f], old_arm[f]
            self.counts[fr, fa] -= 1
            self.sums[fr, fa] -= old_reward[f]
            emptied = self.counts[fr, fa] == 0
            self.sums[fr[emptied], fa[emptied]] = 0.0
            self.head[fr] = (head[f] + 1) % w


class SlidingWindowUCB(DiscretePolicy):
    """Per-device sliding-window UCB on a (p, r) grid; ``window`` is τ (plays), ``xi`` is ξ."""

    name = "sliding-window-ucb"

    def __init__(self, *, arm_space: ArmSpace | None = None, seed: int = 0, arms: Sequence[Arm] | None = None,
                 window: Annotated[int, Range(ge=1), "τ"] = 50, xi: Annotated[float, Range(gt=0), "ξ"] = 0.6,
                 backend: Annotated[str, Choices(BACKENDS)] = "arrays") -> None:
        super().__init__(arm_space=arm_space, seed=seed, arms=arms, backend=backend)
        self._check_options(locals())
        self.window = int(window)
        self.xi = xi

    def _new_learner(self, seed: int) -> SlidingWindowUCBLearner:
        return SlidingWindowUCBLearner(len(self._arms), seed, self.window, self.xi, rng=self._learner_rng)

    def _new_arrays(self) -> SlidingWindowUCBArrays:
        return SlidingWindowUCBArrays(type(self).__name__, self._arms, self.window, self.xi)

    @classmethod
    def _test_params(cls) -> list[dict]:
        return [{}, {"window": 5}, {"backend": "learners", "window": 5}, {"backend": "mersenne"}]
