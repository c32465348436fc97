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
4. the engine times the server's phases and calls ``round_done``: the server builds one
   :class:`~simfed.records.Observation` per device, the method computes the rewards and its policy learns,
   and the loop appends one per-round row and one row per device-round.

A device whose work is discarded (late, offline, straggler, OOM, failed) keeps its previous sparsity:
the server never accepted its update. When the last round is done, :meth:`ServerLoop.finish` prunes every
device still below s* to s* (a deployment step, untimed) and runs the final evaluation, so every method
is compared at the same sparsity.

The loop never reads a trace or a clock; device types are passed in only to label rows.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from simfed.errors import SimfedWarning
from simfed.decisions.methods.base import PRUNE_MODES, Method
from simfed.decisions.reward import DEFAULT_WEIGHTS, RewardWeights
from simfed.records import Arm, DeviceReport, DeviceTiming, Observation, Outcome, Plan
from simfed.experiments.tables import DeviceRoundRow, RoundRow, RunTotals
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

    ``aggregate(plans, merged_before)``: merging the accepted updates of ``plans`` (the aggregator's own
    count; ``merged_before`` says whether a global update exists already). ``evaluate(sparsity)``: one
    evaluation of the global model over the devices at their nominal sparsities. ``oneshot_flops``: the
    one-shot pruning before the first round. ``base_download``: devices download the base model (at their
    structure) with their first payload.
    """

    aggregate: Callable[[Sequence[Plan], bool], float] | None = None
    evaluate: Callable[[Mapping[str, float]], float] | None = None
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


@dataclass
class LoopState:
    """Everything a resumed run needs from the loop (pickled into the checkpoint).

    The loop keeps no table: each finished round's plans, server reply and rows go to the run's journal
    (:meth:`last_round`), and :class:`~simfed.experiments.tables.RunTotals` folds them into the headline
    numbers. Rounds read back from a journal on resume are held in ``replay`` until the engine has
    re-simulated them.
    """

    sparsity: dict[str, float] = field(default_factory=dict)
    has_base: set = field(default_factory=set)  # devices that completed a download (they hold the base model)
    rounds_done: int = 0  # rounds finished; the engine numbers rounds from 0, so these are 0..rounds_done-1
    merged: int = 0  # rounds whose accepted updates were aggregated
    totals: RunTotals | None = None
    last: tuple | None = None  # (plans, reply, round row, device rows) of the last finished round
    replay: dict[int, tuple] = field(default_factory=dict)  # round -> its journal record, while resuming

    def last_round(self) -> tuple:
        """What the last finished round added (the record a checkpoint journal appends)."""
        return self.last

    def add_round(self, plans: list[Plan], reply: ServerReply, round_row: RoundRow, device_rows: list[DeviceRoundRow]) -> None:
        """One finished round read back from a journal (re-simulated, then checked, on resume)."""
        r = round_row.round
        if r != self.rounds_done:
            raise RuntimeError(f"resume: the journal holds round {r} where round {self.rounds_done} was expected")
        self.replay[r] = (plans, reply, round_row, device_rows)
        self.rounds_done = r + 1


def _nan() -> float:
    return float("nan")


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
            state = LoopState(sparsity={d: self._start_sparsity for d in sorted(self.device_types)},
                              totals=RunTotals(self.s_star, target_accuracy))
        self.state = state
        self.keep_rows = keep_rows  # also keep every row in memory (round_rows, device_rows)
        self.round_rows: list[RoundRow] = []
        self.device_rows: list[DeviceRoundRow] = []
        self._current: dict[str, Plan] = {}
        self._reports: dict[str, DeviceReport] = {}
        self._metrics: dict[str, float] = {}
        self._evaluated = False

    # ---------------------------------------------------------------- RoundDriver
    def setup_flops(self) -> float:
        """One-shot pruning happens on the server before the first round (prune-then-tune)."""
        if self.prune_mode != "oneshot":
            return 0.0
        if self._fresh and self.learner is not None:
            if not self.state.sparsity:
                raise ValueError("ServerLoop: one-shot pruning with a learner needs device_types (the devices to prune)")
            self.method.oneshot(self.learner, sorted(self.state.sparsity), self.s_star)
        self._fresh = False
        return float(self.costs.oneshot_flops)

    def _sparsity(self, device_id: str) -> float:
        return self.state.sparsity.get(device_id, self._start_sparsity)

    def _last_round(self, round: int) -> bool:
        return self.rounds is not None and round == self.rounds - 1

    def plans(self, round: int, now_s: float, device_ids: list[str]) -> list[Plan]:
        if round < self.state.rounds_done:  # replaying a finished round
            recorded = {p.device_id: p for p in self.state.replay[round][0]}
            if sorted(recorded) != sorted(device_ids):
                raise RuntimeError(f"resume: the engine selected other devices in round {round} than the checkpoint")
            plans = [recorded[d] for d in device_ids]
        else:
            if self.on_round_start is not None:
                self.on_round_start(now_s)
            sparsity = {d: self._sparsity(d) for d in device_ids}
            planned = self.method.plans(round, device_ids, sparsity, s_star=self.s_star, local_iters=self.local_iters,
                                        tau=self.tau)
            base, has_base = self.costs.base_download, self.state.has_base
            plans = []
            for p in planned:
                arm, first = self._cap_rank(p.arm, p.sparsity_after), base and p.device_id not in has_base
                plans.append(p if (arm is p.arm and first == p.base_download) else replace(p, arm=arm, base_download=first))
        self._current = {p.device_id: p for p in plans}
        return plans

    def _cap_rank(self, arm: Arm, sparsity: float) -> Arm:
        """The arm with its rank capped at the largest useful rank of the round's smallest structure."""
        if self.limits.max_rank is None:
            return arm
        cap = int(self.limits.max_rank(sparsity))
        if arm.r <= cap:
            return arm
        if (arm.r, cap) not in self._rank_warned:
            self._rank_warned.add((arm.r, cap))
            warnings.warn(f"LoRA rank {arm.r} exceeds min(d_out, d_in) = {cap} of the smallest adapted linear kept at "
                          f"sparsity {sparsity:g}: rank {cap} is trained, sent and costed there (policy.rank / policy.r_max)",
                          SimfedWarning, stacklevel=3)
        return Arm(arm.p, cap)

    def round_closed(self, round: int, timings: Sequence[DeviceTiming], close_s: float) -> ServerReply:
        """Train the devices that finished, reject unhealthy updates, aggregate, evaluate; the server's work."""
        if round < self.state.rounds_done:
            return self.state.replay[round][1]
        plans = self._current
        ok = sorted((t.device_id for t in timings if t.outcome is Outcome.OK))
        self._reports = {}
        failed: dict[str, str] = {}
        if self.learner is not None and ok:
            aggregator = self.learner.aggregator
            downlinks = {d: self.method.downlink(aggregator, plans[d], self.learner.kept(d)) for d in ok}
            reports = self.learner.train([plans[d] for d in ok], downlinks)
            for d in ok:
                why = self.health.verdict(reports[d], self.learner.reference_norm(d))
                if why:
                    failed[d] = why
                    self.learner.reject(d)
            self._reports = {d: reports[d] for d in ok}
            accepted = [reports[d] for d in ok if d not in failed]
            if accepted:
                self.learner.aggregate(accepted)
            else:
                warnings.warn(f"round {round}: every finished device's update was rejected ({len(failed)} failed "
                              f"training, first {ok[0]!r}: {failed[ok[0]]}); the global adapter is unchanged",
                              SimfedWarning, stacklevel=2)
        accepted_ids = [d for d in ok if d not in failed]
        for t in timings:
            if not math.isnan(t.download_end_s):
                self.state.has_base.add(t.device_id)
        for d in accepted_ids:  # the server accepted these devices' pruning
            self.state.sparsity[d] = plans[d].sparsity_after
        aggregate = 0.0
        if accepted_ids and self.costs.aggregate is not None:
            aggregate = float(self.costs.aggregate([plans[d] for d in accepted_ids], self.state.merged > 0))
        if accepted_ids:
            self.state.merged += 1
        self._evaluated = (round + 1) % self.eval_every == 0 or self._last_round(round)
        self._metrics = self.learner.evaluate() if (self._evaluated and self.learner is not None) else {}
        evaluate = 0.0
        if self._evaluated and self.costs.evaluate is not None:
            evaluate = float(self.costs.evaluate({d: self._sparsity(d) for d in sorted(self.state.sparsity)}))
        self._reply = ServerReply(aggregate_flops=aggregate, evaluate_flops=evaluate, failed=failed)
        return self._reply

    def round_done(self, round: int, timings: Sequence[DeviceTiming], timing: RoundTiming) -> bool:
        """Rewards, the policy's update and the round's rows; True while rounds remain."""
        if round < self.state.rounds_done:
            self._check_replay(round, timing)
            return True
        plans, reports = self._current, self._reports
        ok = [t for t in timings if t.outcome is Outcome.OK]
        mean_t = float(np.mean([t.completion_s for t in ok])) if ok else _nan()
        observations = []
        for t in timings:
            plan = plans[t.device_id]
            rep = reports.get(t.device_id)
            accepted = t.outcome is Outcome.OK
            observations.append(Observation(
                round=round, device_id=t.device_id, arm=plan.arm, outcome=t.outcome,
                completion_s=t.completion_s if accepted else _nan(),
                round_mean_completion_s=mean_t,
                # a discarded round leaves the device where it was, as far as the server knows
                sparsity_before=plan.sparsity_before,
                sparsity_after=plan.sparsity_after if accepted else plan.sparsity_before, s_star=self.s_star,
                loss_before=rep.loss_before if rep else _nan(), loss_after=rep.loss_after if rep else _nan(),
                update_norm=rep.update_norm if rep else _nan(),
            ))
        rewards = self.method.rewards(observations)
        self.method.learn(round, observations, rewards)
        round_row, device_rows = self._rows(round, timings, timing, plans, reports, rewards)
        self.state.totals.add(round_row, device_rows)
        self.state.last = ([plans[d] for d in sorted(plans)], self._reply, round_row, device_rows)
        if self.keep_rows:
            self.round_rows.append(round_row)
            self.device_rows.extend(device_rows)
        self.state.rounds_done = round + 1
        if self.on_round_end is not None:
            self.on_round_end(self)
        return not self._last_round(round)

    # ---------------------------------------------------------------- rows
    def _rows(self, round: int, timings: Sequence[DeviceTiming], rt: RoundTiming, plans: Mapping[str, Plan],
              reports: Mapping[str, DeviceReport], rewards: Mapping[str, float]) -> tuple[RoundRow, list[DeviceRoundRow]]:
        close = rt.close_s
        ok = [t for t in timings if t.outcome is Outcome.OK]
        completions = [t.completion_s for t in ok]
        failed = self._reply.failed
        types = self.device_types
        device_rows = []
        for t in sorted(timings, key=lambda t: t.device_id):
            plan = plans[t.device_id]
            rep = reports.get(t.device_id)
            device_rows.append(DeviceRoundRow(
                round=round, device_id=t.device_id, device_type=types.get(t.device_id, ""),
                outcome=t.outcome.value, failure=failed.get(t.device_id, ""), p=plan.arm.p, r=plan.arm.r,
                sparsity_before=plan.sparsity_before, sparsity_after=plan.sparsity_after,
                measured_sparsity_after=rep.sparsity_after if rep else self.limits.measured(plan.sparsity_after),
                base_download=plan.base_download, start_s=t.start_s, ready_s=t.ready_s,
                download_end_s=t.download_end_s, compute_end_s=t.compute_end_s, upload_end_s=t.upload_end_s,
                end_s=t.end_s, completion_s=t.completion_s,
                wait_s=close - t.end_s if t.outcome is Outcome.OK else _nan(),
                compute_flops=t.compute_flops, down_bytes=t.down_bytes, up_bytes=t.up_bytes,
                memory_bytes=t.memory_bytes,
                loss_before=rep.loss_before if rep else _nan(), loss_after=rep.loss_after if rep else _nan(),
                update_norm=rep.update_norm if rep else _nan(), n_samples=rep.n_samples if rep else 0,
                reward=rewards.get(t.device_id, 0.0),
            ))
        sp = np.array([self._sparsity(d) for d in sorted(set(self.state.sparsity) | set(plans))], dtype=float)
        arms = [plans[t.device_id].arm for t in timings]
        losses = [reports[t.device_id].loss_after for t in ok if t.device_id in reports]
        metrics = self._metrics

        def mean(values) -> float:
            return float(np.mean(values)) if len(values) else _nan()

        round_row = RoundRow(
            round=round, start_s=rt.start_s, close_s=rt.close_s, end_s=rt.end_s, duration_s=rt.duration_s,
            aggregate_s=rt.aggregate_end_s - rt.close_s, evaluate_s=rt.end_s - rt.aggregate_end_s,
            n_selected=rt.n_selected, n_ok=rt.n_ok, n_late=rt.n_late, n_straggler=rt.n_straggler,
            n_offline=rt.n_offline, n_unavailable=rt.n_unavailable, n_oom=rt.n_oom, n_failed=rt.n_failed,
            mean_wait_s=mean([close - t.end_s for t in ok]),
            max_completion_s=float(np.max(completions)) if completions else _nan(),
            mean_completion_s=mean(completions), mean_sparsity=mean(sp),
            min_sparsity=float(sp.min()) if sp.size else _nan(),
            mean_measured_sparsity=mean([self.limits.measured(x) for x in sp]),
            mean_rank=mean([a.r for a in arms]), mean_p=mean([a.p for a in arms]),
            mean_reward=mean(list(rewards.values())), train_loss=mean(losses),
            accuracy=float(metrics.get("accuracy", _nan())), eval_loss=float(metrics.get("loss", _nan())),
            evaluated=bool(self._evaluated and self.learner is not None),
        )
        return round_row, device_rows

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
            self.device_rows.extend(record[3])

    # ---------------------------------------------------------------- end of run
    def finish(self) -> dict[str, float]:
        """Prune every device below s* to s*, then the final evaluation (nan in timing mode)."""
        if self.prune_mode != "none":
            for dev in sorted(self.state.sparsity):
                if self.state.sparsity[dev] < self.s_star:
                    if self.learner is not None:
                        self.learner.finalize(dev, self.s_star)
                    self.state.sparsity[dev] = self.s_star
        metrics = self.learner.evaluate() if self.learner is not None else {}
        return {"accuracy": float(metrics.get("accuracy", _nan())), "loss": float(metrics.get("loss", _nan()))}

    def table(self):
        """The device-round rows as a DataFrame (``keep_rows``: timing studies, tests)."""
        from simfed.experiments.tables import DeviceRoundRow, to_arrow

        return to_arrow(self.device_rows, DeviceRoundRow).to_pandas()
