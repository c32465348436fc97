"""Thompson sampling (Thompson 1933; Agrawal & Goyal, "Analysis of Thompson Sampling for the
Multi-armed Bandit Problem", COLT 2012), one bandit per device.

``prior="beta"`` (default): Beta-Bernoulli. Each arm's success probability has a Beta(α, β)
posterior (α = β = 1 at start); the arm with the largest posterior draw is played. A reward
x ∈ [0, 1] is first turned into a Bernoulli success with probability x (the "Bernoulli trick" of
Agrawal & Goyal, drawn from a separate random stream so that 0/1 rewards consume no randomness); then
α += success, β += 1 − success.

``prior="gaussian"``: θ_a ~ N(μ̂_a, σ²/(n_a + 1)) with μ̂_a the arm's mean reward.

``discount`` γ < 1 shrinks every arm's evidence toward the prior after each play (discounted
Thompson sampling, for drifting rewards); 1 keeps it all.

Random draws. ``rng="mersenne"``: per-arm posterior samplers are ``random.Random`` streams seeded from
the learner's RNG when the arm is first seen, in arm order, and drawn with ``betavariate``: river's
``bandit.ThompsonSampling`` with ``proba.Beta()`` does the same, so on 0/1 reward streams the choices
coincide. (river counts *any* non-zero reward as a success; for fractional rewards simfed's Bernoulli trick
intentionally differs, because it keeps the posterior mean equal to the mean reward.) ``rng="counter"``:
the device's counter-based draws (:mod:`.counter_rng`): Beta variates as Gamma ratios by Marsaglia & Tsang
(:func:`~simfed.decisions.policies.counter_rng.beta_draws`), Gaussian ones by Box-Muller, keyed by
(device, selection, arm); the Bernoulli trick's uniform by (device, update, slot 0). :class:`BetaThompsonArrays`
and :class:`GaussianThompsonArrays` draw the same numbers for all devices at once.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

import numpy as np

from simfed.decisions.arms import ArmSpace
from simfed.decisions.policies.arrays import DiscreteArrays, Field
from simfed.decisions.policies.base import BACKENDS, DiscretePolicy, derived_seed
from simfed.decisions.policies.counter_rng import CounterStream, beta_draws, learner_rng, normal_draws, uniforms
from simfed.options import Annotated, Choices, Range
from simfed.records import Arm

PRIORS = ("beta", "gaussian")
#: Devices × arms drawn at once by the arrays (bounds the temporaries of the variate kernels).
CHUNK = 1 << 20


def _success(reward: float, u: float) -> float:
    if reward <= 0.0:
        return 0.0
    if reward >= 1.0:
        return 1.0
    return 1.0 if u < reward else 0.0


class BetaThompsonLearner:
    def __init__(self, n_arms: int, seed: int, discount: float = 1.0, rng: str = "mersenne") -> None:
        self.discount = discount
        self._rng = learner_rng(seed, rng)
        self._counter = isinstance(self._rng, CounterStream)
        if self._counter:
            self._learns = 0  # the Bernoulli trick's counter
        else:
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
        k = len(self._alpha)
        if self._counter:
            stream = self._rng
            draws = beta_draws(np.array(self._alpha), np.array(self._beta), np.full(k, stream.key, dtype=np.uint64),
                               np.full(k, stream.counter), np.arange(k), k).tolist()
            stream.counter += 1
        else:
            draws = [self._sampler(a).betavariate(self._alpha[a], self._beta[a]) for a in range(k)]
        best = max(draws)
        return draws.index(best)

    def learn(self, arm: int, reward: float) -> None:
        if self._counter:
            u = self._rng.uniform(0, counter=self._learns) if 0.0 < reward < 1.0 else 0.0
            self._learns += 1
        else:
            u = self._trick_rng.random() if 0.0 < reward < 1.0 else 0.0
        success = _success(reward, u)
        if self.discount < 1.0:
            g = self.discount
            self._alpha = [1.0 + g * (a - 1.0) for a in self._alpha]
            self._beta = [1.0 + g * (b - 1.0) for b in self._beta]
        self._alpha[arm] += success
        self._beta[arm] += 1.0 - success


class GaussianThompsonLearner:
    def __init__(self, n_arms: int, seed: int, discount: float = 1.0, sigma: float = 0.5, rng: str = "mersenne") -> None:
        self.discount = discount
        self.sigma = sigma
        self._rng = learner_rng(seed, rng)
        self._n = [0.0] * n_arms
        self._s = [0.0] * n_arms

    def choose(self) -> int:
        k = len(self._n)
        if isinstance(self._rng, CounterStream):
            z = normal_draws(np.full(k, self._rng.key, dtype=np.uint64), np.full(k, self._rng.counter),
                             1 + 2 * np.arange(k)).tolist()
            self._rng.counter += 1
        draws = []
        for a, (n, s) in enumerate(zip(self._n, self._s)):
            mean = s / n if n > 0 else 0.5
            sd = self.sigma / math.sqrt(n + 1.0)
            draws.append(mean + z[a] * sd if isinstance(self._rng, CounterStream) else self._rng.gauss(mean, sd))
        return draws.index(max(draws))

    def learn(self, arm: int, reward: float) -> None:
        if self.discount < 1.0:
            self._n = [self.discount * n for n in self._n]
            self._s = [self.discount * s for s in self._s]
        self._n[arm] += 1.0
        self._s[arm] += reward


def _argmax_in_chunks(rows: np.ndarray, counters: np.ndarray, k: int,
                      draws: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """The arm index of the largest posterior draw for every row, ``draws(rows, counters)`` -> [rows, k],
    called on chunks of at most ``CHUNK`` draws so that memory stays bounded at any population size."""
    out = np.empty(rows.size, dtype=np.int64)
    step = max(1, CHUNK // k)
    for lo in range(0, rows.size, step):
        out[lo : lo + step] = draws(rows[lo : lo + step], counters[lo : lo + step]).argmax(axis=1)
    return out


class BetaThompsonArrays(DiscreteArrays):
    """:class:`BetaThompsonLearner` (counter draws) of every device: ``alpha``, ``beta`` [devices, arms], ``learns``."""

    def __init__(self, owner: str, arms: Sequence[Arm], discount: float) -> None:
        self.discount = discount
        super().__init__(owner, arms)

    def _fields(self) -> dict[str, Field]:
        k = (self.n_arms,)
        return {"alpha": (np.float64, k, 1.0), "beta": (np.float64, k, 1.0), "learns": (np.int64, (), 0)}

    def _choose_index(self, rows: np.ndarray, counters: np.ndarray) -> np.ndarray:
        k = self.n_arms

        def draws(r: np.ndarray, c: np.ndarray) -> np.ndarray:
            return beta_draws(self.alpha[r].ravel(), self.beta[r].ravel(), np.repeat(self.key[r], k),
                              np.repeat(c, k), np.tile(np.arange(k), r.size), k).reshape(r.size, k)

        return _argmax_in_chunks(rows, counters, k, draws)

    def _learn_index(self, rows: np.ndarray, arms: np.ndarray, rewards: np.ndarray) -> None:
        learns = self.learns[rows]
        u = np.zeros(rows.size)
        frac = np.flatnonzero((rewards > 0.0) & (rewards < 1.0))
        u[frac] = uniforms(self.key[rows[frac]], learns[frac], 0)
        success = np.where(rewards <= 0.0, 0.0, np.where(rewards >= 1.0, 1.0, np.where(u < rewards, 1.0, 0.0)))
        self.learns[rows] = learns + 1
        if self.discount < 1.0:
            g = self.discount
            self.alpha[rows] = 1.0 + g * (self.alpha[rows] - 1.0)
            self.beta[rows] = 1.0 + g * (self.beta[rows] - 1.0)
        self.alpha[rows, arms] += success
        self.beta[rows, arms] += 1.0 - success


class GaussianThompsonArrays(DiscreteArrays):
    """:class:`GaussianThompsonLearner` (counter draws) of every device: (discounted) plays ``count`` and reward
    sums ``total`` [devices, arms]."""

    def __init__(self, owner: str, arms: Sequence[Arm], discount: float, sigma: float) -> None:
        self.discount = discount
        self.sigma = sigma
        super().__init__(owner, arms)

    def _fields(self) -> dict[str, Field]:
        k = (self.n_arms,)
        return {"count": (np.float64, k, 0.0), "total": (np.float64, k, 0.0)}

    def _choose_index(self, rows: np.ndarray, counters: np.ndarray) -> np.ndarray:
        k = self.n_arms

        def draws(r: np.ndarray, c: np.ndarray) -> np.ndarray:
            n, s = self.count[r], self.total[r]
            z = normal_draws(np.repeat(self.key[r], k), np.repeat(c, k), np.tile(1 + 2 * np.arange(k), r.size))
            with np.errstate(divide="ignore", invalid="ignore"):
                mean = np.where(n > 0, s / n, 0.5)
            return mean + z.reshape(r.size, k) * (self.sigma / np.sqrt(n + 1.0))

        return _argmax_in_chunks(rows, counters, k, draws)

    def _learn_index(self, rows: np.ndarray, arms: np.ndarray, rewards: np.ndarray) -> None:
        if self.discount < 1.0:
            self.count[rows] = self.discount * self.count[rows]
            self.total[rows] = self.discount * self.total[rows]
        self.count[rows, arms] += 1.0
        self.total[rows, arms] += rewards


class ThompsonSampling(DiscretePolicy):
    """Per-device Thompson sampling on a (p, r) grid (Beta-Bernoulli or Gaussian)."""

    name = "thompson"

    def __init__(self, *, arm_space: ArmSpace | None = None, seed: int = 0, arms: Sequence[Arm] | None = None,
                 prior: Annotated[str, Choices(PRIORS)] = "beta", discount: Annotated[float, Range(gt=0, le=1), "γ"] = 1.0,
                 sigma: Annotated[float, Range(gt=0), "σ"] = 0.5,
                 backend: Annotated[str, Choices(BACKENDS)] = "arrays") -> None:
        super().__init__(arm_space=arm_space, seed=seed, arms=arms, backend=backend)
        self._check_options(locals())
        self.prior = prior
        self.discount = discount
        self.sigma = sigma

    def _new_learner(self, seed: int):
        if self.prior == "beta":
            return BetaThompsonLearner(len(self._arms), seed, self.discount, rng=self._learner_rng)
        return GaussianThompsonLearner(len(self._arms), seed, self.discount, self.sigma, rng=self._learner_rng)

    def _new_arrays(self) -> DiscreteArrays:
        if self.prior == "beta":
            return BetaThompsonArrays(type(self).__name__, self._arms, self.discount)
        return GaussianThompsonArrays(type(self).__name__, self._arms, self.discount, self.sigma)

    @classmethod
    def _test_params(cls) -> list[dict]:
        return [{}, {"prior": "gaussian"}, {"discount": 0.9}, {"backend": "learners"}, {"backend": "mersenne"},
                {"prior": "gaussian", "backend": "learners"}]
