"""FedSpine's per-device reward (DESIGN §3; reconstruction of the paper's Eq. 9, see
``reference/fedspine-paper-notes.md`` §4.3): what the server credits a device's arm with after a round.

    R_i = F_loss · F_prune · F_importance · F_rank · F_time,   and R_i = 0 for a failed device

with every factor built only from what the server observes (an :class:`~simfed.records.Observation`):

* ``F_loss = (1 − w_L) + w_L · ℓ̃_i``: ℓ_i = max(0, (L_before − L_after) / L_before) is the relative
  local-loss drop; in a round it is normalised by the round's largest drop (ℓ̃ = ℓ / max_j ℓ_j), so
  the factor ranks devices within the round rather than decaying as training converges.
* ``F_prune = (1 − w_S) + w_S · π_i``: π_i = Δs / (s* − s_before) is the share of the remaining way
  to the target sparsity the round covered (1 once the target is reached: nothing left to reward).
* ``F_importance = (1 − w_I) + w_I · ι_i``: ι_i = ‖B·A‖_F / (‖B·A‖_F + mean_j ‖B_j·A_j‖_F) ∈ [0, 1).
* ``F_rank = min(1, r / r_ref) ** w_R``: a capacity prior. A larger rank carries more of the
  update; in training runs the loss and importance terms also measure this, but in timing-only runs
  it is the only term that rewards capacity, without which every device would just play the cheapest
  arm.
* ``F_time = min(c, T_ref / T_i) ** λ``: T_i is the device's completion time; T_ref is the round's
  mean completion time T̄ (default), a quantile of the round's times (``time_reference="quantile"``,
  Oort's preferred duration) or the largest *other* device's time (``"others-max"``: the straggler is
  charged for the time by which it extended the round). On the timing layer the mean did best; the
  others fill up until the pace drifts up (quantile) or the signal is too sparse (others-max)
  (docs/decisions.md, "Timing-layer study").

The capacity weight w_R = 0.1 (was 0.5): with λ = 2 a device's optimum spends w_R/λ of its time on
rank; at 0.25 every device of a compute-bound model went to large ranks and the round lengthened
(measured, docs/decisions.md).

Timing-only runs (NaN losses and norms) make ``F_loss`` and ``F_importance`` neutral (= 1), so the
reward is still meaningful: pruning progress × capacity × relative speed.

Why the time factor is capped at ``c = 1`` by default (our decision; set ``time_cap=inf`` for the
plain ``(T̄/T_i)^λ`` of Eq. 9): with the plain ratio, T_i = k_i · C(p, r) for a device of slowness k_i
gives ``ln R = ln F_prune(p) + ln F_rank(r) − λ ln C(p, r) + const_i``, whose argmax does *not*
depend on k_i: a straggler and a fast device would want the same arm. With the cap, a device faster
than its peers gains nothing by being faster still, so it spends its slack on capacity (large r up to
the point where it would become slower than average), while a device slower than its peers is
penalised for every second it adds and prefers the arm with the best capacity-per-time trade:
a smaller r (its rank share of the time must fall to w_R/λ, 5 % by default) and a larger p (progress, and a
smaller model for the rest of the round). That is the behaviour DESIGN §3 asks of a straggler.
With the default weights every factor is in [0, 1], so the reward is in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from simfed.records import Observation


TIME_REFERENCES = ("mean", "quantile", "others-max")


@dataclass(frozen=True)
class RewardWeights:
    """Weights of the reward factors; defaults are simfed's (documented in docs/decisions.md)."""

    loss: float = 0.5  # w_L: share of F_loss that depends on the loss drop
    prune: float = 0.5  # w_S: share of F_prune that depends on pruning progress
    importance: float = 0.3  # w_I: share of F_importance that depends on the update norm
    rank: float = 0.1  # w_R: exponent of the capacity prior (r / r_ref)
    rank_ref: int = 32  # r_ref: the rank at which F_rank reaches 1 (the arm space's r_max)
    time_exponent: float = 2.0  # λ
    time_cap: float = 1.0  # c: the most F_time's ratio can reach (inf: the plain Eq. 9 ratio)
    time_reference: str = "mean"  # T_ref of F_time: "mean", "quantile" or "others-max" (see the module docstring)
    time_quantile: float = 0.9  # q of time_reference="quantile"

    def __post_init__(self) -> None:
        for name in ("loss", "prune", "importance"):
            v = getattr(self, name)
            if not (0.0 <= v <= 1.0):
                raise ValueError(f"RewardWeights.{name} must be in [0, 1], got {v!r}")
        if not (self.rank >= 0 and math.isfinite(self.rank)):
            raise ValueError(f"RewardWeights.rank must be a finite number >= 0, got {self.rank!r}")
        if not (self.rank_ref >= 1):
            raise ValueError(f"RewardWeights.rank_ref must be >= 1, got {self.rank_ref!r}")
        if not (self.time_exponent >= 0 and math.isfinite(self.time_exponent)):
            raise ValueError(f"RewardWeights.time_exponent must be a finite number >= 0, got {self.time_exponent!r}")
        if not (self.time_cap > 0):
            raise ValueError(f"RewardWeights.time_cap must be > 0, got {self.time_cap!r}")
        if self.time_reference not in TIME_REFERENCES:
            raise ValueError(f"RewardWeights.time_reference must be one of {TIME_REFERENCES}, got {self.time_reference!r}")
        if not (0.0 <= self.time_quantile <= 1.0):
            raise ValueError(f"RewardWeights.time_quantile must be in [0, 1], got {self.time_quantile!r}")

    @classmethod
    def from_dict(cls, values: dict) -> "RewardWeights":
        """Build from a config mapping; an unknown key is an error naming it."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"reward weights: unknown key(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT_WEIGHTS = RewardWeights()


@dataclass(frozen=True)
class RoundContext:
    """Round-level normalisers, computed by the server from the round's successful observations."""

    max_loss_drop: float = float("nan")  # largest relative loss drop this round (nan: none measured)
    mean_update_norm: float = float("nan")  # mean ||B·A||_F this round (nan: none measured)
    completion_s: tuple[float, ...] = ()  # the successful devices' completion times, ascending

    @classmethod
    def from_observations(cls, observations: Iterable[Observation]) -> "RoundContext":
        drops, norms, times = [], [], []
        for obs in observations:
            if not obs.ok:
                continue
            if math.isfinite(obs.completion_s):
                times.append(obs.completion_s)
            d = relative_loss_drop(obs)
            if math.isfinite(d):
                drops.append(d)
            if math.isfinite(obs.update_norm) and obs.update_norm >= 0:
                norms.append(obs.update_norm)
        return cls(
            max_loss_drop=max(drops) if drops else float("nan"),
            mean_update_norm=sum(norms) / len(norms) if norms else float("nan"),
            completion_s=tuple(sorted(times)),
        )

    def time_reference_s(self, obs: Observation, weights: "RewardWeights") -> float:
        """T_ref of ``obs``'s time factor (see the module docstring); nan when there is none."""
        times = self.completion_s
        kind = weights.time_reference
        if kind == "mean" or not times:
            return obs.round_mean_completion_s
        if kind == "quantile":
            return _quantile(times, weights.time_quantile)
        # others-max: the round's end had this device not taken part (its own time excluded once)
        if len(times) == 1:
            return float("nan")
        return times[-2] if obs.completion_s >= times[-1] else times[-1]


def _quantile(ascending: tuple[float, ...], q: float) -> float:
    """Linear-interpolation quantile of sorted values (numpy's default rule)."""
    pos = q * (len(ascending) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(ascending) - 1)
    return ascending[lo] + (pos - lo) * (ascending[hi] - ascending[lo])


@dataclass(frozen=True)
class RewardTerms:
    """Every factor of one device's reward, for the per-device-round table."""

    loss: float
    prune: float
    importance: float
    rank: float
    time: float
    total: float


def relative_loss_drop(obs: Observation) -> float:
    """max(0, (L_before − L_after) / L_before); nan when the losses were not measured."""
    lb, la = obs.loss_before, obs.loss_after
    if not (math.isfinite(lb) and math.isfinite(la)) or lb <= 0:
        return float("nan")
    return max(0.0, (lb - la) / lb)


def pruning_progress(obs: Observation) -> float:
    """Share of the remaining way to s* covered this round, in [0, 1]; 1 once s* is reached."""
    remaining = obs.s_star - obs.sparsity_before
    if remaining <= 1e-12:
        return 1.0
    delta = obs.sparsity_after - obs.sparsity_before
    if not math.isfinite(delta):
        return 0.0
    return min(1.0, max(0.0, delta / remaining))


def reward_terms(obs: Observation, weights: RewardWeights = DEFAULT_WEIGHTS, context: RoundContext | None = None) -> RewardTerms:
    """The factors of one device's reward. A failed device (any outcome but OK) gets all zeros.

    Without a ``context`` the loss drop is used unnormalised and the importance factor is neutral
    (one observation alone has no scale for ‖B·A‖_F).
    """
    if not obs.ok:
        return RewardTerms(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    w = weights
    # loss drop
    drop = relative_loss_drop(obs)
    if not math.isfinite(drop):
        f_loss = 1.0
    else:
        scale = context.max_loss_drop if context is not None else float("nan")
        norm_drop = drop / scale if (math.isfinite(scale) and scale > 0) else (0.0 if math.isfinite(scale) else drop)
        f_loss = (1.0 - w.loss) + w.loss * min(1.0, norm_drop)
    # pruning progress
    f_prune = (1.0 - w.prune) + w.prune * pruning_progress(obs)
    # update importance
    mean_norm = context.mean_update_norm if context is not None else float("nan")
    if math.isfinite(obs.update_norm) and math.isfinite(mean_norm) and obs.update_norm + mean_norm > 0:
        iota = obs.update_norm / (obs.update_norm + mean_norm)
        f_imp = (1.0 - w.importance) + w.importance * iota
    else:
        f_imp = 1.0
    # capacity prior
    f_rank = min(1.0, obs.arm.r / w.rank_ref) ** w.rank
    # relative speed
    t_i = obs.completion_s
    t_bar = context.time_reference_s(obs, w) if context is not None else obs.round_mean_completion_s
    if math.isfinite(t_i) and math.isfinite(t_bar) and t_bar > 0:
        ratio = t_bar / t_i if t_i > 0 else math.inf
        f_time = min(w.time_cap, ratio) ** w.time_exponent
    else:
        f_time = 1.0
    total = f_loss * f_prune * f_imp * f_rank * f_time
    return RewardTerms(f_loss, f_prune, f_imp, f_rank, f_time, total)


def reward(obs: Observation, weights: RewardWeights = DEFAULT_WEIGHTS, context: RoundContext | None = None) -> float:
    """One device's reward (see the module docstring); 0 for a failed device."""
    return reward_terms(obs, weights, context).total


def round_reward_terms(observations: Iterable[Observation], weights: RewardWeights = DEFAULT_WEIGHTS) -> dict[str, RewardTerms]:
    """The reward factors of every device of one round, normalised within the round."""
    obs_list = list(observations)
    context = RoundContext.from_observations(obs_list)
    return {obs.device_id: reward_terms(obs, weights, context) for obs in obs_list}


def round_rewards(observations: Iterable[Observation], weights: RewardWeights = DEFAULT_WEIGHTS) -> dict[str, float]:
    """Every device's reward for one round: ``{device_id: R_i}`` (0 for failed devices)."""
    return {k: t.total for k, t in round_reward_terms(observations, weights).items()}
