"""LinUCB over arm features (Li, Chu, Langford & Schapire, "A Contextual-Bandit Approach to
Personalized News Article Recommendation", WWW 2010), one linear model per device.

Unlike the disjoint LinUCB of the paper (one model per arm), the arms here share one model over
their features φ(p, r) = [1, u_p, u_r, u_p·u_r, u_p², u_r²] (:meth:`ArmSpace.features`): the reward of
(p, r) varies smoothly, so what is learned about one arm informs its neighbours and the grid is
explored with far fewer plays. A = λI + Σ φφᵀ, b = Σ x φ, θ̂ = A⁻¹b; play
argmax_a θ̂ᵀφ_a + α·√(φ_aᵀ A⁻¹ φ_a) (ties at random). ``discount`` γ < 1 forgets old plays
(A ← γA + (1 − γ)λI, b ← γb) for drifting rewards.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

from simfed.decisions.arms import ArmSpace
from simfed.decisions.policies.base import DiscretePolicy, argmax_random_ties
from simfed.options import Annotated, Range
from simfed.records import Arm


class LinUCBLearner:
    def __init__(self, features: np.ndarray, seed: int, alpha: float = 0.5, ridge: float = 1.0, discount: float = 1.0) -> None:
        self.alpha = alpha
        self.ridge = ridge
        self.discount = discount
        self._phi = np.asarray(features, dtype=float)  # (K, d)
        d = self._phi.shape[1]
        self._rng = random.Random(seed)
        self._A = ridge * np.eye(d)
        self._b = np.zeros(d)

    def indices(self) -> np.ndarray:
        a_inv = np.linalg.inv(self._A)
        theta = a_inv @ self._b
        mean = self._phi @ theta
        width = np.sqrt(np.maximum(np.einsum("kd,de,ke->k", self._phi, a_inv, self._phi), 0.0))
        return mean + self.alpha * width

    def choose(self) -> int:
        idx = self.indices()
        return argmax_random_ties(idx.tolist(), self._rng, tol=1e-12)

    def learn(self, arm: int, reward: float) -> None:
        phi = self._phi[arm]
        if self.discount < 1.0:
            d = self._A.shape[0]
            self._A = self.discount * self._A + (1.0 - self.discount) * self.ridge * np.eye(d)
            self._b = self.discount * self._b
        self._A += np.outer(phi, phi)
        self._b += reward * phi


class LinUCB(DiscretePolicy):
    """Per-device LinUCB with shared arm features; ``alpha`` scales the confidence width."""

    name = "linucb"

    def __init__(self, *, arm_space: ArmSpace | None = None, seed: int = 0, arms: Sequence[Arm] | None = None,
                 alpha: Annotated[float, Range(ge=0), "α"] = 0.5, ridge: Annotated[float, Range(gt=0), "λ"] = 1.0,
                 discount: Annotated[float, Range(gt=0, le=1), "γ"] = 1.0) -> None:
        super().__init__(arm_space=arm_space, seed=seed, arms=arms)
        self._check_options(locals())
        self.alpha = alpha
        self.ridge = ridge
        self.discount = discount
        self._features = np.stack([self.arm_space.features(a) for a in self._arms])

    def _new_learner(self, seed: int) -> LinUCBLearner:
        return LinUCBLearner(self._features, seed, self.alpha, self.ridge, self.discount)

    @classmethod
    def _test_params(cls) -> list[dict]:
        return [{}, {"discount": 0.9}]
