"""Thompson sampling (Thompson 1933; Agrawal & Goyal, "Analysis of Thompson Sampling for the
Multi-armed Bandit Problem", COLT 2012), one bandit per device.

``prior="beta"`` (default): Beta-Bernoulli. Each arm's success probability has a Beta(α, β)
posterior (α = β = 1 at start); the arm with the largest posterior draw is played. A reward
x ∈ [0, 1] is first turned into a Bernoulli success with probability x (the "Bernoulli trick" of
Agrawal & Goyal, drawn from a separate seeded RNG so that 0/1 rewards consume no randomness); then
α += success, β += 1 − success. Per-arm posterior samplers are ``random.Random`` streams seeded from
the learner's RNG when the arm is first seen, in arm order: river's ``bandit.ThompsonSampling`` with
``proba.Beta()`` does the same, so on 0/1 reward streams the choices coincide. (river counts *any*
non-zero reward as a success; for fractional rewards simfed's Bernoulli trick intentionally
differs, because it keeps the posterior mean equal to the mean reward.)

``prior="gaussian"``: θ_a ~ N(μ̂_a, σ²/(n_a + 1)) with μ̂_a the arm's mean reward.

``discount`` γ < 1 shrinks every arm's evidence toward the prior after each play (discounted
Thompson sampling, for drifting rewards); 1 keeps it all.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from simfed.decisions.arms import ArmSpace
from simfed.decisions.policies.base import DiscretePolicy, derived_seed
from simfed.options import Annotated, Choices, Range
from simfed.records import Arm

PRIORS = ("beta", "gaussian")


class BetaThompsonLearner:
    def __init__(self, n_arms: int, seed: int, discount: float = 1.0) -> None:
        self.discount = discount
        self._rng = random.Random(seed)
        self._trick_rng = random.Random(derived_seed(seed, "bernoulli-trick"))
        self._samplers: list[random.Random | None] = [None] * n_arms
        self._alpha = [1.0] * n_arms
        self._beta = [1.0] * n_arms

    def _sampler(self, arm: int) -> random.Random:
        s = self._samplers[arm]
        if s is None:
            s = random.Random(self._rng.randint(0, 2**32))
            self._samplers[arm] = s
        return s

    def choose(self) -> int:
        draws = [self._sampler(a).betavariate(self._alpha[a], self._beta[a]) for a in range(len(self._alpha))]
        best = max(draws)
        return draws.index(best)

    def learn(self, arm: int, reward: float) -> None:
        if reward <= 0.0:
            success = 0.0
        elif reward >= 1.0:
            success = 1.0
        else:
            success = 1.0 if self._trick_rng.random() < reward else 0.0
        if self.discount < 1.0:
            g = self.discount
            self._alpha = [1.0 + g * (a - 1.0) for a in self._alpha]
            self._beta = [1.0 + g * (b - 1.0) for b in self._beta]
        self._alpha[arm] += success
        self._beta[arm] += 1.0 - success


class GaussianThompsonLearner:
    def __init__(self, n_arms: int, seed: int, discount: float = 1.0, sigma: float = 0.5) -> None:
        self.discount = discount
        self.sigma = sigma
        self._rng = random.Random(seed)
        self._n = [0.0] * n_arms
        self._s = [0.0] * n_arms

    def choose(self) -> int:
        draws = []
        for n, s in zip(self._n, self._s):
            mean = s / n if n > 0 else 0.5
            draws.append(self._rng.gauss(mean, self.sigma / math.sqrt(n + 1.0)))
        return draws.index(max(draws))

    def learn(self, arm: int, reward: float) -> None:
        if self.discount < 1.0:
            self._n = [self.discount * n for n in self._n]
            self._s = [self.discount * s for s in self._s]
        self._n[arm] += 1.0
        self._s[arm] += reward


class ThompsonSampling(DiscretePolicy):
    """Per-device Thompson sampling on a (p, r) grid (Beta-Bernoulli or Gaussian)."""

    name = "thompson"

    def __init__(self, *, arm_space: ArmSpace | None = None, seed: int = 0, arms: Sequence[Arm] | None = None,
                 prior: Annotated[str, Choices(PRIORS)] = "beta", discount: Annotated[float, Range(gt=0, le=1), "γ"] = 1.0,
                 sigma: Annotated[float, Range(gt=0), "σ"] = 0.5) -> None:
        super().__init__(arm_space=arm_space, seed=seed, arms=arms)
        self._check_options(locals())
        self.prior = prior
        self.discount = discount
        self.sigma = sigma

    def _new_learner(self, seed: int):
        if self.prior == "beta":
            return BetaThompsonLearner(len(self._arms), seed, self.discount)
        return GaussianThompsonLearner(len(self._arms), seed, self.discount, self.sigma)

    @classmethod
    def _test_params(cls) -> list[dict]:
        return [{}, {"prior": "gaussian"}, {"discount": 0.9}]
