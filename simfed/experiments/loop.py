"""The server loop: where the three layers meet, and nowhere else (DESIGN §1, FedSpine's round loop).

:class:`ServerLoop` is the timing engine's one :class:`~simfed.timing.engine.RoundDriver`, for full runs
(with a :class:`Learner`: real training) and timing-only runs (without one) alike. Each round:

1. ``plans``: the method (:class:`~simfed.decisions.methods.Method`) turns its policy's arms into each
   participant's :class:`~simfed.records.Plan` from the nominal sparsity the server tracks per device (its
   pruning schedule, capped at s*), ``local_iters`` and ``tau``; a device that has not yet downloaded the base
   model downloads it with its first payload (when that is timed);
2. the engine simulates the devices' phases until the round closes and calls
3. ``round_closed`` with every device's :class:`~simfed.records.DeviceTiming`: the devices whose outcome is
   OK get their downlinks from the method and train for real (the learner), unhealthy updates (non-finite, exploding: :class:`HealthCheck`) are
   rejected, the rest are aggregated and the global model is evaluated every ``eval_every`` rounds; the
   loop answers with the server's own work (FLOPs of aggregating and evaluating, :class:`ServerCosts`)
   and the rejected devices;
4. the engine times the server's phases and calls ``round_done``: the server builds the round's
   observations (an :class:`~simfed.records.ObservationBatch`: columns, one entry per device), the method
   computes the rewards and its policy learns, and the loop builds the round's row and its device-round
   table.

Everything per device is kept as arrays (plans as a :class:`~simfed.records.PlanBatch`, the devices'
sparsities and base-model flags in :class:`LoopState`, the device-round rows as one Arrow table per
round), so a round of 10^6 devices costs a few seconds, not a Python loop over records.

A device whose work is discarded (late, offline, straggler, OOM, failed) keeps its previous sparsity:
the server never accepted its update. When the last round is done, :meth:`ServerLoop.finish` prunes every
device still below s* to s* (a deployment step, untimed) and runs the final evaluation, so every method
is compared at the same sparsity.

The loop never reads a trace or a clock; device types are passed in only to label rows.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

import pyarrow as pa

from simfed.errors import SimfedWarning
from simfed.decisions.methods.base import PRUNE_MODES, Method
from simfed.decisions.reward import DEFAULT_WEIGHTS, RewardWeights
from simfed.records import (OK_CODE, OUTCOME_CODE, OUTCOMES, DeviceReport, DeviceTiming, ObservationBatch, Outcome, Plan,
                            PlanBatch)
from simfed.experiments.tables import DeviceRoundRow, RoundRow, RunTotals, table_of
from simfed.timing.round import RoundTiming, ServerReply



class Learner(Protocol):
    """What the loop needs from the accuracy layer (real training; no notion of time)."""

    aggregator: Any  # the global adapter and how updates merge into it (the method's aggregator, built)

    def kept(self, device_id: str) -> Any:
        """The device's current structure (its kept KV groups and channels)."""

    def train(self, plans: list[Plan], downlinks: Mapping[str, Any]) -> dict[str, DeviceReport]:
        """Run the plans' local prune-and-tune from their downlinks; a report per device."""

    def reference_norm(self, device_id: str) -> float:
        """‖W‖_F summed over the adapted linears of the device's current model (the health check's scale)."""

    def reject(self, device_id: str) -> None:
        """The server rejected the device's update: undo its local round."""

    def aggregate(self, reports: list[DeviceReport]) -> None:
        """Merge the accepted updates into the global adapter."""

    def evaluate(self) -> dict[str, float]:
        """Global adapter on every device's pruned model and held-out data: ``accuracy``, ``loss``."""

    def oneshot_prune(self, device_ids: list[str], s_star: float, criterion: str) -> None:
        """Prune every device to s* before the first round by ``criterion`` (prune-then-tune)."""

    def finalize(self, device_id: str, s_star: float) -> None:
        """Prune one device to s* after the last round."""


@dataclass(frozen=True)
class ServerCosts:
    """FLOPs of the server's own work (DESIGN §4 "Server-side time"); each part is off when None / 0.

    ``aggregate(plans, merged_before)``: merging the accepted updates of ``plans`` (a
    :class:`~simfed.records.PlanBatch`; the aggregator's own count; ``merged_before`` says whether a global
    update exists already). ``evaluate(sparsity)``: one evaluation of the global model over the devices at
    their nominal sparsities (a float64 array, one entry per device). ``oneshot_flops``: the
    one-shot pruning before the first round. ``base_download``: devices download the base model (at their
    structure) with their first payload.
    """

    aggregate: Callable[[PlanBatch, bool], float] | None = None
    evaluate: Callable[[np.ndarray], float] | None = None
    oneshot_flops: float = 0.0
    base_download: bool = False


@dataclass(frozen=True)
class ModelLimits:
    """What the server knows of the model's shapes (from :mod:`simfed.structure`; identity without a model).

    ``measured(s)``: the share of prunable parameters a nominal sparsity ``s`` really removes (the structure
    rule keeps whole groups and channels, at least one of each). ``max_rank(s)``: the largest useful LoRA rank
    at nominal sparsity ``s``, the smallest min(d_out, d_in) of the adapted linears kept there: a larger rank
    adds parameters (and payload) but no capacity, so a plan's rank is capped there, with one warning.
    """

    measured: Callable[[float], float] = float
    max_rank: Callable[[float], int] | None = None


@dataclass(frozen=True)
class HealthCheck:
    """When a device's training counts as failed (DESIGN §4; issue #11).

    A device fails its round when its local loss (before or after) or its update norm is not finite,
    or when its update norm ‖s·B·A‖_F (summed over the adapted linears) exceeds ``max_update_ratio``
    times ‖W‖_F of the frozen weights it adapts: an update larger than the weights it modifies is a
    divergence, not a tuning step (LoRA updates are typically a few percent of ‖W‖). The check is
    against the base weights, not the global adapter, because the global adapter is zero in round 0.
    """

    max_update_ratio: float = 1.0

    def __post_init__(self) -> None:
        if not (self.max_update_ratio > 0):
            raise ValueError(f"HealthCheck.max_update_ratio must be > 0, got {self.max_update_ratio!r}")

    def verdict(self, report: DeviceReport, reference_norm: float) -> str:
        """Why ``report`` is unhealthy, or "" when it is fine."""
        for name in ("loss_before", "loss_after", "update_norm"):
            v = getattr(report, name)
            if not math.isfinite(v):
                return f"{name}={v} (non-finite)"
        if report.update_norm > self.max_update_ratio * reference_norm:
            return (f"update_norm={report.update_norm:.4g} > {self.max_update_ratio:g} x ||W||={reference_norm:.4g} "
                    "(exploding update)")
        return ""


class LoopState:
    """Everything a resumed run needs from the loop (:meth:`state_dict` goes into the checkpoint).

    Per device (arrays over :attr:`ids`, the devices in the order the loop first saw them: the population's
    ids sorted, then any other id it was given): the nominal sparsity the server tracks and whether the
    device holds the base model. The loop keeps no table: each finished round's plans, server reply and rows
    go to the run's journal (:meth:`last_round`), and :class:`~simfed.experiments.tables.RunTotals` folds
    them into the headline numbers. Rounds read back from a journal on resume are held in ``replay`` until
    the engine has re-simulated them.
    """

    def __init__(self, ids: Sequence[str] = (), *, start_sparsity: float = 0.0, sparsity: np.ndarray | None = None,
                 has_base: np.ndarray | None = None, rounds_done: int = 0, merged: int = 0,
                 totals: RunTotals | None = None) -> None:
        self.ids: list[str] = list(ids)
        self.index: dict[str, int] = {d: i for i, d in enumerate(self.ids)}
        if len(self.index) != len(self.ids):
            raise ValueError("LoopState: duplicate device ids")
        n = len(self.ids)
        self.start_sparsity = float(start_sparsity)
        self.sparsity = np.full(n, self.start_sparsity) if sparsity is None else np.asarray(sparsity, dtype=np.float64)
        self.has_base = np.zeros(n, dtype=bool) if has_base is None else np.asarray(has_base, dtype=bool)
        if self.sparsity.shape != (n,) or self.has_base.shape != (n,):
            raise ValueError(f"LoopState: sparsity {self.sparsity.shape} / has_base {self.has_base.shape} for {n} devices")
        self.ids_sorted = all(a < b for a, b in zip(self.ids, self.ids[1:]))
        self.rounds_done = int(rounds_done)  # rounds finished; the engine numbers rounds from 0
        self.merged = int(merged)  # rounds whose accepted updates were aggregated
        self.totals = totals
        self.last: tuple | None = None  # (plans, reply, round row, device-round table) of the last finished round
        self.replay: dict[int, tuple] = {}  # round -> its journal record, while resuming

    def positions(self, device_ids: Sequence[str]) -> np.ndarray:
        """The devices' rows in the state's arrays (int64); an id not seen before gets a new row."""
        index = self.index
        pos = np.fromiter((index.get(d, -1) for d in device_ids), dtype=np.int64, count=len(device_ids))
        missing = np.flatnonzero(pos < 0)
        if missing.size:
            for i in missing.tolist():
                d = device_ids[i]
                if d not in index:
                    if self.ids and d < self.ids[-1]:
                        self.ids_sorted = False
                    index[d] = len(self.ids)
                    self.ids.append(d)
                pos[i] = index[d]
            grow = len(self.ids) - len(self.sparsity)
            self.sparsity = np.concatenate([self.sparsity, np.full(grow, self.start_sparsity)])
            self.has_base = np.concatenate([self.has_base, np.zeros(grow, dtype=bool)])
        return pos

    def sorted_order(self, pos: np.ndarray) -> np.ndarray:
        """The order that sorts the devices at ``pos`` by id."""
        if self.ids_sorted:
            return np.argsort(pos, kind="stable")
        ids = self.ids
        return np.array(sorted(range(len(pos)), key=lambda k: ids[pos[k]]), dtype=np.int64)

    def state_dict(self) -> dict[str, Any]:
        """The state as plain data (arrays, numbers, the totals)."""
        return {"ids": self.ids, "start_sparsity": self.start_sparsity, "sparsity": self.sparsity,
                "has_base": self.has_base, "rounds_done": self.rounds_done, "merged": self.merged, "totals": self.totals}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> "LoopState":
        """The state :meth:`state_dict` returned, before the journal's rounds are added back (``rounds_done`` 0)."""
        return cls(state["ids"], start_sparsity=state["start_sparsity"], sparsity=state["sparsity"],
                   has_base=state["has_base"], merged=state["merged"], totals=state["totals"])

    def last_round(self) -> tuple:
        """What the last finished round added (the record a checkpoint journal appends)."""
        return self.last

    def add_round(self, plans: PlanBatch, reply: ServerReply, round_row: RoundRow, device_table: pa.Table) -> None:
        """One finished round read back from a journal (re-simulated, then checked, on resume)."""
        r = round_row.round
        if r != self.rounds_done:
            raise RuntimeError(f"resume: the journal holds round {r} where round {self.rounds_done} was expected")
        self.replay[r] = (plans, reply, round_row, device_table)
        self.rounds_done = r + 1


_NAN = float("nan")
#: The timing columns the loop reads, per device (``outcome``: int8 codes into OUTCOMES).
_TIMING_COLUMNS = ("outcome", "start_s", "ready_s", "download_end_s", "compute_end_s", "upload_end_s", "end_s",
                   "compute_flops", "down_bytes", "up_bytes", "memory_bytes")
_REPORT_COLUMNS = ("loss_before", "loss_after", "update_norm", "n_samples", "sparsity_after", "rank_after")
_OUTCOME_TEXT = pa.array([o.value for o in OUTCOMES], type=pa.string())


class ServerLoop:
    """The round driver: method → plans → (engine) → training → aggregation → evaluation → rewards.

    ``method`` (a built :class:`~simfed.decisions.methods.Method`) or, for timing studies and tests, a bare
    ``policy`` (wrapped in the base method: iterative pruning) is required; with the defaults it is a
    timing-only loop that never prunes (s* = 0).
    For rounds already done by an interrupted process (``state``), the loop hands the engine the
    recorded plans and replies, checks that the engine reproduces the recorded timeline, and does
    nothing else (no training, no policy call), so a resumed run continues exactly where it stopped.
    """

    def __init__(
        self,
        *,
        method: Any = None,
        policy: Any = None,
        s_star: float = 0.0,
        local_iters: int = 1,
        tau: int = 1,
        rounds: int | None = None,
        eval_every: int = 1,
        reward_weights: RewardWeights = DEFAULT_WEIGHTS,
        learner: Learner | None = None,
        device_types: Mapping[str, str] | None = None,
        server_costs: ServerCosts = ServerCosts(),
        health: HealthCheck = HealthCheck(),
        limits: ModelLimits = ModelLimits(),
        on_round_end: Callable[["ServerLoop"], None] | None = None,
        on_round_start: Callable[[float], None] | None = None,
        state: LoopState | None = None,
        target_accuracy: float = 0.0,
        keep_rows: bool = False,
    ) -> None:
        if (method is None) == (policy is None):
            raise ValueError("ServerLoop: give a method, or a policy (wrapped in the base method), not both")
        if method is None:
            method = Method.with_policy(policy, reward_weights=reward_weights)
        prune_mode = method.prune_mode
        if prune_mode not in PRUNE_MODES:
            raise ValueError(f"prune mode must be one of {PRUNE_MODES}, got {prune_mode!r}")
        if not (0.0 <= s_star < 1.0):
            raise ValueError(f"s_star must be in [0, 1), got {s_star!r}")
        if local_iters < 1 or tau < 1 or eval_every < 1:
            raise ValueError(f"local_iters, tau and eval_every must be >= 1, got {local_iters}, {tau}, {eval_every}")
        self.method = method
        self.prune_mode = prune_mode
        self.s_star = s_star if prune_mode != "none" else 0.0
        self.local_iters = local_iters
        self.tau = tau
        self.rounds = rounds
        self.eval_every = eval_every
        self.learner = learner
        self.device_types = dict(device_types or {})
        self.costs = server_costs
        self.health = health
        self.limits = limits
        self._rank_warned: set[tuple[int, int]] = set()
        self.on_round_end = on_round_end
        self.on_round_start = on_round_start  # called with the round's start time before the policy decides
        self._fresh = state is None
        self._start_sparsity = method.start_sparsity(self.s_star)
        if state is None:
            state = LoopState(sorted(self.device_types), start_sparsity=self._start_sparsity,
                              totals=RunTotals(self.s_star, target_accuracy))
        self.state = state
        self.keep_rows = keep_rows  # also keep every round's rows in memory (round_rows, device_tables)
        self.round_rows: list[RoundRow] = []
        self.device_tables: list[pa.Table] = []
        self._type_names = sorted(set(self.device_types.values()) | {""})
        self._type_code = np.zeros(0, dtype=np.int64)
        self._current: PlanBatch | None = None
        self._pos = np.empty(0, dtype=np.int64)
        self._reports: dict[str, DeviceReport] = {}
        self._metrics: dict[str, float] = {}
        self._evaluated = False

    # ---------------------------------------------------------------- RoundDriver
    def setup_flops(self) -> float:
        """One-shot pruning happens on the server before the first round (prune-then-tune)."""
        if self.prune_mode != "oneshot":
            return 0.0
        if self._fresh and self.learner is not None:
            if not self.state.ids:
                raise ValueError("ServerLoop: one-shot pruning with a learner needs device_types (the devices to prune)")
            self.method.oneshot(self.learner, sorted(self.state.ids), self.s_star)
        self._fresh = False
        return float(self.costs.oneshot_flops)

    def _last_round(self, round: int) -> bool:
        return self.rounds is not None and round == self.rounds - 1

    def plans(self, round: int, now_s: float, device_ids: list[str]) -> PlanBatch:
        pos = self.state.positions(device_ids)
        if round < self.state.rounds_done:  # replaying a finished round
            plans = self._recorded_plans(round, device_ids)
        else:
            if self.on_round_start is not None:
                self.on_round_start(now_s)
            planned = self.method.plans(round, device_ids, self.state.sparsity[pos].copy(), s_star=self.s_star,
                                        local_iters=self.local_iters, tau=self.tau)
            planned = PlanBatch.of(planned, round=round)
            if planned.round != round or planned.device_ids != list(device_ids):
                raise ValueError(f"method {type(self.method).__name__}.plans: the plans of round {round} must be for the "
                                 "selected devices, in their order")
            r = self._cap_ranks(planned.r, planned.sparsity_after)
            base = (~self.state.has_base[pos]) if self.costs.base_download else np.zeros(len(pos), dtype=bool)
            if r is planned.r and not base.any() and not planned.base_download.any():
                plans = planned
            else:
                plans = planned.with_columns(r=r, base_download=base)
        self._current, self._pos = plans, pos
        return plans

    def _recorded_plans(self, round: int, device_ids: list[str]) -> PlanBatch:
        recorded: PlanBatch = self.state.replay[round][0]
        if recorded.device_ids == list(device_ids):
            return recorded
        where = {d: i for i, d in enumerate(recorded.device_ids)}
        if sorted(where) != sorted(device_ids):
            raise RuntimeError(f"resume: the engine selected other devices in round {round} than the checkpoint")
        return recorded.take(np.array([where[d] for d in device_ids], dtype=np.int64))

    def _cap_ranks(self, r: np.ndarray, sparsity: np.ndarray) -> np.ndarray:
        """The ranks capped at the largest useful rank of each device's structure (``r`` itself when none is)."""
        if self.limits.max_rank is None or not len(r):
            return r
        levels, inverse = np.unique(sparsity, return_inverse=True)
        caps = np.array([int(self.limits.max_rank(float(s))) for s in levels.tolist()], dtype=np.int64)[inverse.reshape(-1)]
        over = r > caps
        if not over.any():
            return r
        for rank, cap, s in sorted({(int(a), int(b), float(c)) for a, b, c in zip(r[over], caps[over], sparsity[over])}):
            if (rank, cap) not in self._rank_warned:
                self._rank_warned.add((rank, cap))
                warnings.warn(f"LoRA rank {rank} exceeds min(d_out, d_in) = {cap} of the smallest adapted linear kept at "
                              f"sparsity {s:g}: rank {cap} is trained, sent and costed there (policy.rank / policy.r_max)",
                              SimfedWarning, stacklevel=4)
        return np.minimum(r, caps)

    def _timing_columns(self, timings: Sequence[DeviceTiming]) -> dict[str, np.ndarray]:
        """The round's timing columns aligned with the plans (the engine's columns when it gave them)."""
        plans = self._current
        cols = getattr(timings, "columns", None)
        if cols is not None and len(cols.positions) == len(plans):
            ids_all = timings.device_ids
            if [ids_all[i] for i in cols.positions.tolist()] == plans.device_ids:
                return {name: getattr(cols, name) for name in _TIMING_COLUMNS}
        by_id = {t.device_id: t for t in timings}
        if len(by_id) != len(timings) or set(by_id) != set(plans.device_ids):
            raise ValueError("ServerLoop: the round's timings are not for the devices it planned")
        rows = [by_id[d] for d in plans.device_ids]
        out = {"outcome": np.array([OUTCOME_CODE[Outcome(t.outcome)] for t in rows], dtype=np.int8)}
        for name in _TIMING_COLUMNS[1:]:
            out[name] = np.array([getattr(t, name) for t in rows], dtype=np.float64)
        return out

    def round_closed(self, round: int, timings: Sequence[DeviceTiming], close_s: float) -> ServerReply:
        """Train the devices that finished, reject unhealthy updates, aggregate, evaluate; the server's work."""
        if round < self.state.rounds_done:
            return self.state.replay[round][1]
        plans, pos = self._current, self._pos
        cols = self._timing_columns(timings)
        ok = cols["outcome"] == OK_CODE
        ids = plans.device_ids
        self._reports = {}
        failed: dict[str, str] = {}
        if self.learner is not None and ok.any():
            at = {d: k for k, d in enumerate(ids)}
            ok_ids = sorted(ids[k] for k in np.flatnonzero(ok).tolist())
            aggregator = self.learner.aggregator
            rows = plans.rows()
            downlinks = {d: self.method.downlink(aggregator, rows[at[d]], self.learner.kept(d)) for d in ok_ids}
            reports = self.learner.train([rows[at[d]] for d in ok_ids], downlinks)
            for d in ok_ids:
                why = self.health.verdict(reports[d], self.learner.reference_norm(d))
                if why:
                    failed[d] = why
                    self.learner.reject(d)
            self._reports = {d: reports[d] for d in ok_ids}
            accepted_reports = [reports[d] for d in ok_ids if d not in failed]
            if accepted_reports:
                self.learner.aggregate(accepted_reports)
            else:
                warnings.warn(f"round {round}: every finished device's update was rejected ({len(failed)} failed "
                              f"training, first {ok_ids[0]!r}: {failed[ok_ids[0]]}); the global adapter is unchanged",
                              SimfedWarning, stacklevel=2)
        accepted = ok.copy()
        if failed:
            accepted &= np.array([d not in failed for d in ids], dtype=bool)
        state = self.state
        state.has_base[pos[~np.isnan(cols["download_end_s"])]] = True
        state.sparsity[pos[accepted]] = plans.sparsity_after[accepted]  # the server accepted these devices' pruning
        aggregate = 0.0
        if accepted.any():
            if self.costs.aggregate is not None:
                aggregate = float(self.costs.aggregate(plans.take(accepted), state.merged > 0))
            state.merged += 1
        self._evaluated = (round + 1) % self.eval_every == 0 or self._last_round(round)
        self._metrics = self.learner.evaluate() if (self._evaluated and self.learner is not None) else {}
        evaluate = 0.0
        if self._evaluated and self.costs.evaluate is not None:
            evaluate = float(self.costs.evaluate(state.sparsity.copy()))
        self._reply = ServerReply(aggregate_flops=aggregate, evaluate_flops=evaluate, failed=failed)
        return self._reply

    def _report_columns(self) -> dict[str, np.ndarray]:
        """The devices' reports as columns aligned with the plans (NaN / 0 where a device did not report)."""
        n = len(self._current)
        out = {name: np.full(n, _NAN) for name in _REPORT_COLUMNS}
        out["n_samples"] = np.zeros(n, dtype=np.int64)
        if self._reports:
            at = {d: k for k, d in enumerate(self._current.device_ids)}
            for d, rep in self._reports.items():
                k = at[d]
                for name in _REPORT_COLUMNS:
                    value = getattr(rep, name)
                    out[name][k] = rep.arm.r if value is None else value  # rank_after None: unchanged
        return out

    def round_done(self, round: int, timings: Sequence[DeviceTiming], timing: RoundTiming) -> bool:
        """Rewards, the policy's update and the round's rows; True while rounds remain."""
        if round < self.state.rounds_done:
            self._check_replay(round, timing)
            return True
        plans = self._current
        cols = self._timing_columns(timings)  # outcomes now include the rejected updates (FAILED)
        reports = self._report_columns()
        ok = cols["outcome"] == OK_CODE
        completion = cols["end_s"] - cols["start_s"]
        observations = ObservationBatch(
            round, plans.device_ids, plans.p, plans.r, cols["outcome"],
            completion_s=np.where(ok, completion, _NAN),
            round_mean_completion_s=float(np.mean(completion[ok])) if ok.any() else _NAN,
            # a discarded round leaves the device where it was, as far as the server knows
            sparsity_before=plans.sparsity_before,
            sparsity_after=np.where(ok, plans.sparsity_after, plans.sparsity_before), s_star=self.s_star,
            loss_before=reports["loss_before"], loss_after=reports["loss_after"], update_norm=reports["update_norm"],
            rank_after=reports["rank_after"],
        )
        rewards = self._reward_array(self.method.rewards(observations), observations)
        self.method.learn(round, observations, rewards)
        round_row, device_table = self._rows(round, cols, reports, timing, np.nan_to_num(rewards, nan=0.0))
        self.state.totals.add(round_row, device_table)
        self.state.last = (plans, self._reply, round_row, device_table)
        if self.keep_rows:
            self.round_rows.append(round_row)
            self.device_tables.append(device_table)
        self.state.rounds_done = round + 1
        if self.on_round_end is not None:
            self.on_round_end(self)
        return not self._last_round(round)

    @staticmethod
    def _reward_array(rewards: Any, observations: ObservationBatch) -> np.ndarray:
        """A method's rewards as a float64 array aligned with the observations (a mapping: missing → NaN)."""
        if isinstance(rewards, Mapping):
            return np.fromiter((float(rewards.get(d, _NAN)) for d in observations.device_ids), dtype=np.float64,
                               count=len(observations))
        out = np.asarray(rewards, dtype=np.float64)
        if out.shape != (len(observations),):
            raise ValueError(f"method rewards: shape {out.shape}, expected ({len(observations)},) like the observations")
        return out

    # ---------------------------------------------------------------- rows
    def _types_at(self, pos: np.ndarray) -> pa.Array:
        n = len(self.state.ids)
        if len(self._type_code) < n:
            names = {t: i for i, t in enumerate(self._type_names)}
            extra = self.state.ids[len(self._type_code):]
            self._type_code = np.concatenate([self._type_code, np.fromiter(
                (names[self.device_types.get(d, "")] for d in extra), dtype=np.int64, count=len(extra))])
        return pa.array(self._type_names, type=pa.string()).take(pa.array(self._type_code[pos]))

    def _measured(self, sparsity: np.ndarray) -> np.ndarray:
        """``limits.measured`` elementwise (once per distinct value)."""
        if not len(sparsity):
            return np.empty(0)
        levels, inverse = np.unique(sparsity, return_inverse=True)
        return np.array([self.limits.measured(float(s)) for s in levels.tolist()], dtype=float)[inverse.reshape(-1)]

    def _rows(self, round: int, cols: Mapping[str, np.ndarray], reports: Mapping[str, np.ndarray], rt: RoundTiming,
              rewards: np.ndarray) -> tuple[RoundRow, pa.Table]:
        plans, pos = self._current, self._pos
        close = rt.close_s
        ok = cols["outcome"] == OK_CODE
        completion = cols["end_s"] - cols["start_s"]
        wait = np.where(ok, close - cols["end_s"], _NAN)
        reported = ~np.isnan(reports["sparsity_after"])
        measured = np.where(reported, reports["sparsity_after"], self._measured(plans.sparsity_after))
        failed = self._reply.failed
        failure = [failed.get(d, "") for d in plans.device_ids] if failed else [""] * len(plans)
        order = self.state.sorted_order(pos)
        columns = {
            "round": np.full(len(plans), round, dtype=np.int64),
            "device_id": pa.array(plans.device_ids, type=pa.string()).take(pa.array(order)),
            "device_type": self._types_at(pos[order]),
            "outcome": _OUTCOME_TEXT.take(pa.array(cols["outcome"][order].astype(np.int64))),
            "failure": pa.array(failure, type=pa.string()).take(pa.array(order)),
            "p": plans.p, "r": plans.r, "sparsity_before": plans.sparsity_before, "sparsity_after": plans.sparsity_after,
            "measured_sparsity_after": measured, "base_download": plans.base_download,
            **{name: cols[name] for name in ("start_s", "ready_s", "download_end_s", "compute_end_s", "upload_end_s",
                                            "end_s")},
            "completion_s": completion, "wait_s": wait,
            **{name: cols[name] for name in ("compute_flops", "down_bytes", "up_bytes", "memory_bytes")},
            "loss_before": reports["loss_before"], "loss_after": reports["loss_after"],
            "update_norm": reports["update_norm"], "n_samples": reports["n_samples"],
            "rank_after": np.where(np.isnan(reports["rank_after"]), plans.r, reports["rank_after"]).astype(np.int64),
            "reward": rewards,
        }
        for name, values in columns.items():
            if isinstance(values, np.ndarray) and name != "round":
                columns[name] = values[order]
        device_table = table_of(columns, DeviceRoundRow)

        sp = self.state.sparsity
        losses = reports["loss_after"][ok & reported]
        metrics = self._metrics

        def mean(values: np.ndarray) -> float:
            return float(np.mean(values)) if len(values) else _NAN

        round_row = RoundRow(
            round=round, start_s=rt.start_s, close_s=rt.close_s, end_s=rt.end_s, duration_s=rt.duration_s,
            aggregate_s=rt.aggregate_end_s - rt.close_s, evaluate_s=rt.end_s - rt.aggregate_end_s,
            n_selected=rt.n_selected, n_ok=rt.n_ok, n_late=rt.n_late, n_straggler=rt.n_straggler,
            n_offline=rt.n_offline, n_unavailable=rt.n_unavailable, n_oom=rt.n_oom, n_failed=rt.n_failed,
            mean_wait_s=mean(close - cols["end_s"][ok]),
            max_completion_s=float(np.max(completion[ok])) if ok.any() else _NAN,
            mean_completion_s=mean(completion[ok]), mean_sparsity=mean(self._by_id(sp)),
            min_sparsity=float(sp.min()) if sp.size else _NAN,
            mean_measured_sparsity=mean(self._measured(self._by_id(sp))),
            mean_rank=mean(plans.r), mean_p=mean(plans.p),
            mean_reward=mean(rewards), train_loss=mean(losses),
            accuracy=float(metrics.get("accuracy", _NAN)), eval_loss=float(metrics.get("loss", _NAN)),
            evaluated=bool(self._evaluated and self.learner is not None),
        )
        return round_row, device_table

    def _by_id(self, values: np.ndarray) -> np.ndarray:
        """Per-device state values in device-id order (the order means are taken in)."""
        if self.state.ids_sorted:
            return values
        return values[self.state.sorted_order(np.arange(len(values)))]

    def _check_replay(self, round: int, rt: RoundTiming) -> None:
        """A resumed run re-simulates finished rounds; the engine must reproduce the recorded times."""
        record = self.state.replay.pop(round)
        row = record[2]
        if not (math.isclose(row.start_s, rt.start_s, rel_tol=0, abs_tol=1e-9)
                and math.isclose(row.end_s, rt.end_s, rel_tol=0, abs_tol=1e-9)):
            raise RuntimeError(
                f"resume: round {round} re-simulated to [{rt.start_s}, {rt.end_s}] but the checkpoint recorded "
                f"[{row.start_s}, {row.end_s}]; the traces or the engine changed since the checkpoint"
            )
        if self.keep_rows:
            self.round_rows.append(row)
            self.device_tables.append(record[3])

    # ---------------------------------------------------------------- end of run
    def finish(self) -> dict[str, float]:
        """Prune every device below s* to s*, then the final evaluation (nan in timing mode)."""
        if self.prune_mode != "none":
            below = np.flatnonzero(self.state.sparsity < self.s_star)
            if self.learner is not None:
                for dev in sorted(self.state.ids[i] for i in below.tolist()):
                    self.learner.finalize(dev, self.s_star)
            self.state.sparsity[below] = self.s_star
        metrics = self.learner.evaluate() if self.learner is not None else {}
        return {"accuracy": float(metrics.get("accuracy", _NAN)), "loss": float(metrics.get("loss", _NAN))}

    def table(self):
        """The device-round rows as a DataFrame (``keep_rows``: timing studies, tests)."""
        from simfed.experiments.tables import arrow_schema

        if not self.device_tables:
            return pa.Table.from_pylist([], schema=arrow_schema(DeviceRoundRow)).to_pandas()
        return pa.concat_tables(self.device_tables).to_pandas()
