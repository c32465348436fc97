"""Discounted UCB (Kocsis & Szepesvári 2006; Garivier & Moulines, "On Upper-Confidence Bound
Policies for Non-Stationary Bandit Problems", arXiv 0805.3415), one bandit per device.

After each of the device's plays every arm's statistics are multiplied by γ, so a reward observed
k plays ago weighs γ^k: N_a = Σ γ^(t−s) 1{a_s = a}, X̄_a = Σ γ^(t−s) x_s 1{a_s = a} / N_a,
n = Σ_a N_a. Index: X̄_a + 2b·√(ξ ln n / N_a) (b = 1 for rewards in [0, 1]; ξ = 0.6 as in the paper's
experiments). Untried arms first; ties broken at random with the learner's RNG. The discount counts
the device's own plays, not global rounds (a device that sits out rounds keeps its memory).

With ``rng="counter"`` ties use the device's counter-based draws and ln n is numpy's logarithm (the one
:class:`DiscountedUCBArrays` applies to all devices; it may differ from :func:`math.log` in the last bit).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from simfed.decisions.arms import ArmSpace
from simfed.decisions.policies.arrays import DiscreteArrays, Field, argmax_ties, sequential_row_sum
from simfed.decisions.policies.base import BACKENDS, DiscretePolicy, IndexLearner
from simfed.decisions.policies.counter_rng import CounterStream, learner_rng
from simfed.options import Annotated, Choices, Range
from simfed.records import Arm


def _np_log(x: float) -> float:
    return float(np.log(np.array([x]))[0])


class DiscountedUCBLearner(IndexLearner):
    def __init__(self, n_arms: int, seed: int, discount: float = 0.95, xi: float = 0.6, scale: float = 1.0,
                 rng: str = "mersenne") -> None:
        self.discount = discount
        self.xi = xi
        self.scale = scale
        self._rng = learner_rng(seed, rng)
        self._n = [0.0] * n_arms  # discounted counts
        self._s = [0.0] * n_arms  # discounted reward sums
        self._played = [False] * n_arms

    def indices(self) -> list[float]:
        total = sum(self._n)
        log = _np_log if isinstance(self._rng, CounterStream) else math.log
        log_n = log(total) if total > 1.0 else 0.0
        out = []
        for n, s, played in zip(self._n, self._s, self._played):
            if not played or n <= 0.0:
                out.append(math.inf)
            else:
                out.append(s / n + 2.0 * self.scale * math.sqrt(self.xi * log_n / n))
        return out

    def learn(self, arm: int, reward: float) -> None:
        g = self.discount
        self._n = [g * n for n in self._n]
        self._s = [g * s for s in self._s]
        self._n[arm] += 1.0
        self._s[arm] += reward
        self._played[arm] = True


class DiscountedUCBArrays(DiscreteArrays):
    """:class:`DiscountedUCBLearner` (counter draws) of every device: discounted counts ``dcount`` and reward sums
    ``dsum``, ``played`` [devices, arms]."""

    def __init__(self, owner: str, arms: Sequence[Arm], discount: float, xi: float, scale: float = 1.0) -> None:
        self.discount = discount
        self.xi = xi
        self.scale = scale
        super().__init__(owner, arms)

    def _fields(self) -> dict[str, Field]:
        k = (self.n_arms,)
        return {"dcount": (np.float64, k, 0.0), "dsum": (np.float64, k, 0.0), "played": (np.bool_, k, False)}

    def _choose_index(self, rows: np.ndarray, counters: np.ndarray) -> np.ndarray:
        n = self.dcount[rows]
        total = sequential_row_sum(n)
        log_n = np.zeros_like(total)
        big = total > 1.0
        log_n[big] = np.log(total[big])
        with np.errstate(divide="ignore", invalid="ignore"):
            idx = self.dsum[rows] / n + 2.0 * self.scale * np.sqrt(self.xi * log_n[:, None] / n)
        idx[~self.played[rows] | (n <= 0.0)] = np.inf
        return argmax_ties(idx, self.key[rows], counters)

    def _learn_index(self, rows: np.ndarray, arms: np.ndarray, rewards: np.ndarray) -> None:
        g = self.discount
        self.dcount[rows] = g * self.dcount[rows]
        self.dsum[rows] = g * self.dsum[rows]
        self.dcount[rows, arms] += 1.0
        self.dsum[rows, arms] += rewards
        self.played[rows, arms] = True


class DiscountedUCB(DiscretePolicy):
    """Per-device discounted UCB on a (p, r) grid; ``discount`` is γ, ``xi`` is ξ."""

    name = "discounted-ucb"

    def __init__(self, *, arm_space: ArmSpace | None = None, seed: int = 0, arms: Sequence[Arm] | None = None,
                 discount: Annotated[float, Range(gt=0, le=1), "γ"] = 0.95,
                 xi: Annotated[float, Range(gt=0), "ξ"] = 0.6,
                 backend: Annotated[str, Choices(BACKENDS)] = "arrays") -> None:
        super().__init__(arm_space=arm_space, seed=seed, arms=arms, backend=backend)
        self._check_options(locals())
        self.discount = discount
        self.xi = xi

    def _new_learner(self, seed: int) -> DiscountedUCBLearner:
        return DiscountedUCBLearner(len(self._arms), seed, self.discount, self.xi, rng=self._learner_rng)

    def _new_arrays(self) -> DiscountedUCBArrays:
        return DiscountedUCBArrays(type(self).__name__, self._arms, self.discount, self.xi)

    @classmethod
    def _test_params(cls) -> list[dict]:
        return [{}, {"discount": 0.8}, {"backend": "learners"}, {"backend": "mersenne"}]
