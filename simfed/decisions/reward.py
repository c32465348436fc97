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
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from simfed.records import Observation, ObservationBatch


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
    mean_update_norm: float = float("nan")  # mean ||B·A||_F this round (nan: none measured; exactly rounded)
    completion_s: tuple[float, ...] = ()  # the successful devices' completion times, ascending

    @classmethod
    def from_observations(cls, observations: "Iterable[Observation] | ObservationBatch") -> "RoundContext":
        """The normalisers of a round's observations (records or a batch)."""
        batch = ObservationBatch.of(observations)
        ok = batch.ok
        drops = relative_loss_drops(batch.loss_before[ok], batch.loss_after[ok])
        drops = drops[np.isfinite(drops)]
        norms = batch.update_norm[ok]
        norms = norms[np.isfinite(norms) & (norms >= 0)]
        times = batch.completion_s[ok]
        times = np.sort(times[np.isfinite(times)])
        return cls(
            max_loss_drop=float(drops.max()) if drops.size else float("nan"),
            mean_update_norm=math.fsum(norms.tolist()) / norms.size if norms.size else float("nan"),
            completion_s=tuple(times.tolist()),
        )

    def time_references_s(self, batch: ObservationBatch, weights: "RewardWeights") -> np.ndarray:
        """T_ref of each observation's time factor (see the module docstring); nan where there is none."""
        times = self.completion_s
        kind = weights.time_reference
        if kind == "mean" or not times:
            return batch.round_mean_completion_s
        if kind == "quantile":
            return np.full(len(batch), float(np.quantile(np.asarray(times), weights.time_quantile)))
        # others-max: the round's end had this device not taken part (its own time excluded once)
        if len(times) == 1:
            return np.full(len(batch), float("nan"))
        return np.where(batch.completion_s >= times[-1], times[-2], times[-1])

    def time_reference_s(self, obs: Observation, weights: "RewardWeights") -> float:
        """T_ref of one observation's time factor; nan when there is none."""
        return float(self.time_references_s(ObservationBatch.of([obs]), weights)[0])


@dataclass(frozen=True)
class RewardTerms:
    """Every factor of one device's reward, for the per-device-round table."""

    loss: float
    prune: float
    importance: float
    rank: float
    time: float
    total: float


#: The factors of :func:`reward_arrays` (and fields of :class:`RewardTerms`), ``total`` last.
FACTORS = ("loss", "prune", "importance", "rank", "time", "total")


def relative_loss_drops(loss_before: np.ndarray, loss_after: np.ndarray) -> np.ndarray:
    """max(0, (L_before − L_after) / L_before) elementwise; nan where the losses were not measured."""
    lb, la = np.asarray(loss_before, dtype=float), np.asarray(loss_after, dtype=float)
    valid = np.isfinite(lb) & np.isfinite(la) & (lb > 0)
    out = np.full(lb.shape, np.nan)
    out[valid] = np.maximum(0.0, (lb[valid] - la[valid]) / lb[valid])
    return out


def relative_loss_drop(obs: Observation) -> float:
    """max(0, (L_before − L_after) / L_before); nan when the losses were not measured."""
    return float(relative_loss_drops(np.array([obs.loss_before]), np.array([obs.loss_after]))[0])


def pruning_progresses(sparsity_before: np.ndarray, sparsity_after: np.ndarray, s_star: np.ndarray) -> np.ndarray:
    """Share of the remaining way to s* covered this round, in [0, 1], elementwise; 1 once s* is reached."""
    before = np.asarray(sparsity_before, dtype=float)
    remaining = np.asarray(s_star, dtype=float) - before
    delta = np.asarray(sparsity_after, dtype=float) - before
    done = remaining <= 1e-12
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.clip(delta / np.where(done, 1.0, remaining), 0.0, 1.0)
    share = np.where(np.isfinite(delta), share, 0.0)
    return np.where(done, 1.0, share)


def pruning_progress(obs: Observation) -> float:
    """Share of the remaining way to s* covered this round, in [0, 1]; 1 once s* is reached."""
    return float(pruning_progresses(np.array([obs.sparsity_before]), np.array([obs.sparsity_after]),
                                    np.array([obs.s_star]))[0])


def reward_arrays(observations: "ObservationBatch | Sequence[Observation]", weights: RewardWeights = DEFAULT_WEIGHTS,
                  context: RoundContext | None = None) -> dict[str, np.ndarray]:
    """Every factor of every device's reward, as float64 arrays aligned with ``observations``
    (keys :data:`FACTORS`); a failed device (any outcome but OK) gets all zeros.

    The one implementation of the reward: :func:`reward_terms`, :func:`round_reward_terms` and the
    server loop all call it. Without a ``context`` the loss drop is used unnormalised and the
    importance factor is neutral (one observation alone has no scale for ‖B·A‖_F).
    """
    batch = ObservationBatch.of(observations)
    w = weights
    n = len(batch)
    # loss drop, normalised by the round's largest
    drop = relative_loss_drops(batch.loss_before, batch.loss_after)
    scale = context.max_loss_drop if context is not None else float("nan")
    if math.isfinite(scale) and scale > 0:
        norm_drop = drop / scale
    elif math.isfinite(scale):
        norm_drop = np.zeros(n)
    else:
        norm_drop = drop
    f_loss = np.where(np.isfinite(drop), (1.0 - w.loss) + w.loss * np.minimum(1.0, norm_drop), 1.0)
    # pruning progress
    f_prune = (1.0 - w.prune) + w.prune * pruning_progresses(batch.sparsity_before, batch.sparsity_after, batch.s_star)
    # update importance
    mean_norm = context.mean_update_norm if context is not None else float("nan")
    norm = batch.update_norm
    if math.isfinite(mean_norm):
        valid = np.isfinite(norm) & (norm + mean_norm > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            iota = norm / (norm + mean_norm)
        f_imp = np.where(valid, (1.0 - w.importance) + w.importance * iota, 1.0)
    else:
        f_imp = np.ones(n)
    # capacity prior
    f_rank = np.minimum(1.0, batch.r / w.rank_ref) ** w.rank
    # relative speed
    t_i = batch.completion_s
    t_bar = context.time_references_s(batch, w) if context is not None else batch.round_mean_completion_s
    valid = np.isfinite(t_i) & np.isfinite(t_bar) & (t_bar > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(t_i > 0, t_bar / np.where(t_i > 0, t_i, 1.0), np.inf)
    f_time = np.where(valid, np.minimum(w.time_cap, ratio) ** w.time_exponent, 1.0)
    ok = batch.ok
    out = {name: np.where(ok, f, 0.0) for name, f in zip(FACTORS[:-1], (f_loss, f_prune, f_imp, f_rank, f_time))}
    out["total"] = out["loss"] * out["prune"] * out["importance"] * out["rank"] * out["time"]
    return out


def reward_terms(obs: Observation, weights: RewardWeights = DEFAULT_WEIGHTS, context: RoundContext | None = None) -> RewardTerms:
    """The factors of one device's reward (:func:`reward_arrays` for one observation)."""
    terms = reward_arrays([obs], weights, context)
    return RewardTerms(*(float(terms[name][0]) for name in FACTORS))


def reward(obs: Observation, weights: RewardWeights = DEFAULT_WEIGHTS, context: RoundContext | None = None) -> float:
    """One device's reward (see the module docstring); 0 for a failed device."""
    return reward_terms(obs, weights, context).total


def round_reward_arrays(observations: "ObservationBatch | Sequence[Observation]",
                        weights: RewardWeights = DEFAULT_WEIGHTS) -> dict[str, np.ndarray]:
    """Every device's reward factors for one round, normalised within the round (arrays, :data:`FACTORS`)."""
    batch = ObservationBatch.of(observations)
    return reward_arrays(batch, weights, RoundContext.from_observations(batch))


def round_reward_terms(observations: Iterable[Observation], weights: RewardWeights = DEFAULT_WEIGHTS) -> dict[str, RewardTerms]:
    """The reward factors of every device of one round, normalised within the round."""
    batch = ObservationBatch.of(list(observations) if not isinstance(observations, ObservationBatch) else observations)
    terms = round_reward_arrays(batch, weights)
    columns = [terms[name].tolist() for name in FACTORS]
    return {d: RewardTerms(*values) for d, values in zip(batch.device_ids, zip(*columns))}


def round_rewards(observations: Iterable[Observation], weights: RewardWeights = DEFAULT_WEIGHTS) -> dict[str, float]:
    """Every device's reward for one round: ``{device_id: R_i}`` (0 for failed devices)."""
    return {k: t.total for k, t in round_reward_terms(observations, weights).items()}
