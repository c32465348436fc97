"""The server loop: where the three layers meet, and nowhere else (DESIGN §1, FedSpine's round loop).

:class:`ServerLoop` is the timing engine's ``RoundDriver``. Each round:

1. ``plans``: the policy picks each participant's arm (p, r); the server turns it into a
   :class:`~simfed.records.Plan` from the nominal sparsity it tracks per device
   (:func:`~simfed.structure.next_sparsity`, capped at s*), ``local_iters`` and ``tau``;
2. the engine simulates the round's timeline (it never sees training) and calls
3. ``round_done`` with every device's :class:`~simfed.records.DeviceTiming`: the devices whose
   outcome is OK train for real (the :class:`Learner`; skipped in timing mode), their updates are
   aggregated, the global model is evaluated every ``eval_every`` rounds, the server builds one
   :class:`~simfed.records.Observation` per device, computes the rewards and updates the policy,
   and appends one per-round row and one row per device-round.

A device whose work is discarded (late, offline, straggler, OOM) keeps its previous sparsity and
state: the server never saw its update. When the last round is done, :meth:`ServerLoop.finish`
prunes every device still below s* to s* (offline, taking no simulated time: it is a deployment
step) and runs the final evaluation, so every method is compared at the same sparsity.

The loop never reads a trace or a clock; device types are passed in only to label rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from simfed.decisions.reward import RewardWeights, round_reward_terms
from simfed.records import Arm, DeviceReport, DeviceTiming, Observation, Outcome, Plan
from simfed.structure import next_sparsity

PRUNE_MODES = ("iterative", "oneshot", "none")


class Learner(Protocol):
    """What the loop needs from the accuracy layer (real training; no notion of time)."""

    def train(self, plans: list[Plan]) -> dict[str, DeviceReport]:
        """Run the plans' local prune-and-tune from the current global adapter; a report per device."""

    def aggregate(self, reports: list[DeviceReport]) -> None:
        """Merge the accepted updates into the global adapter."""

    def evaluate(self) -> dict[str, float]:
        """Global adapter on every device's pruned model and held-out data: ``accuracy``, ``loss``."""

    def oneshot_prune(self, device_ids: list[str], s_star: float) -> None:
        """Prune-then-tune: prune every device to s* before the first round."""

    def finalize(self, device_id: str, s_star: float) -> None:
        """Prune one device to s* after the last round."""


@dataclass
class LoopState:
    """Everything a resumed run needs from the loop (pickled into the checkpoint)."""

    sparsity: dict[str, float]
    rounds_done: int = 0  # rounds finished; the engine numbers rounds from 0, so these are 0..rounds_done-1
    plans: dict[int, list[Plan]] = field(default_factory=dict)
    round_rows: list[dict] = field(default_factory=list)
    device_rows: list[dict] = field(default_factory=list)

    def last_round(self) -> tuple[list[Plan], dict, list[dict]]:
        """The plans and rows the last finished round added (what a checkpoint journal appends)."""
        r = self.rounds_done - 1
        rows = []
        for row in reversed(self.device_rows):
            if row["round"] != r:
                break
            rows.append(row)
        return self.plans[r], self.round_rows[-1], rows[::-1]

    def add_round(self, plans: list[Plan], round_row: dict, device_rows: list[dict]) -> None:
        """Append one finished round read back from a journal."""
        r = round_row["round"]
        if r != self.rounds_done:
            raise RuntimeError(f"resume: the journal holds round {r} where round {self.rounds_done} was expected")
        self.plans[r] = plans
        self.round_rows.append(round_row)
        self.device_rows.extend(device_rows)
        self.rounds_done = r + 1


def _nan() -> float:
    return float("nan")


class ServerLoop:
    """The RoundDriver: policy → plans → (engine) → training → aggregation → evaluation → rewards.

    ``replay`` holds the plans of rounds already done by a previous, interrupted process: for those
    rounds the loop hands the engine the same plans, checks that the engine reproduces the recorded
    timeline, and does nothing else (no training, no policy call), so a resumed run continues from
    its checkpoint exactly as if it had never stopped.
    """

    def __init__(
        self,
        *,
        device_types: dict[str, str],
        policy: Any,
        prune_mode: str,
        s_star: float,
        local_iters: int,
        tau: int,
        rounds: int,
        eval_every: int,
        reward_weights: RewardWeights,
        learner: Learner | None = None,
        on_round_end: Any = None,
        on_round_start: Any = None,
        state: LoopState | None = None,
    ) -> None:
        if prune_mode not in PRUNE_MODES:
            raise ValueError(f"prune mode must be one of {PRUNE_MODES}, got {prune_mode!r}")
        self.device_types = device_types
        self.policy = policy
        self.prune_mode = prune_mode
        self.s_star = s_star if prune_mode != "none" else 0.0
        self.local_iters = local_iters
        self.tau = tau
        self.rounds = rounds
        self.eval_every = eval_every
        self.reward_weights = reward_weights
        self.learner = learner
        self.on_round_end = on_round_end
        self.on_round_start = on_round_start  # called with the round's start time before the policy decides
        if state is None:
            start = self.s_star if prune_mode == "oneshot" else 0.0
            state = LoopState(sparsity={d: start for d in device_types})
            if prune_mode == "oneshot" and learner is not None:
                learner.oneshot_prune(sorted(device_types), self.s_star)
        self.state = state
        self._current: dict[str, Plan] = {}

    # ---------------------------------------------------------------- RoundDriver
    def plans(self, round: int, now_s: float, device_ids: list[str]) -> list[Plan]:
        if round < self.state.rounds_done:  # replaying a finished round
            recorded = {p.device_id: p for p in self.state.plans[round]}
            if sorted(recorded) != sorted(device_ids):
                raise RuntimeError(f"resume: the engine selected other devices in round {round} than the checkpoint")
            plans = [recorded[d] for d in device_ids]
        else:
            if self.on_round_start is not None:
                self.on_round_start(now_s)
            arms: dict[str, Arm] = self.policy.select(round, list(device_ids))
            plans = []
            for dev in device_ids:
                arm = arms[dev]
                before = self.state.sparsity[dev]
                if self.prune_mode == "iterative":
                    after = next_sparsity(before, arm.p, self.s_star)
                else:  # one-shot devices are already at s*; "none" never prunes
                    arm = Arm(p=0.0, r=arm.r)
                    after = before
                plans.append(Plan(round=round, device_id=dev, arm=arm, sparsity_before=before,
                                  sparsity_after=after, local_iters=self.local_iters, tau=self.tau))
        self._current = {p.device_id: p for p in plans}
        return plans

    def round_done(self, round: int, timings: list[DeviceTiming], start_s: float, end_s: float) -> bool:
        """Fold one simulated round into training, evaluation and the policy; True while rounds remain."""
        if round < self.state.rounds_done:
            self._check_replay(round, timings, start_s, end_s)
            return True
        plans = self._current
        ok = [t for t in timings if t.outcome is Outcome.OK]
        reports: dict[str, DeviceReport] = {}
        if self.learner is not None and ok:
            reports = self.learner.train([plans[t.device_id] for t in sorted(ok, key=lambda t: t.device_id)])
            self.learner.aggregate([reports[t.device_id] for t in sorted(ok, key=lambda t: t.device_id)])
        for t in ok:  # the server accepted these devices' pruning
            self.state.sparsity[t.device_id] = plans[t.device_id].sparsity_after

        last = round == self.rounds - 1
        evaluated = self.learner is not None and ((round + 1) % self.eval_every == 0 or last)
        metrics = self.learner.evaluate() if evaluated else {}

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
        terms = round_reward_terms(observations, self.reward_weights)
        rewards = {d: tr.total for d, tr in terms.items()}
        self.policy.update(round, observations, rewards)

        self._record(round, timings, start_s, end_s, plans, reports, rewards, metrics, evaluated)
        self.state.plans[round] = [plans[d] for d in sorted(plans)]
        self.state.rounds_done = round + 1
        if self.on_round_end is not None:
            self.on_round_end(self)
        return not last

    # ---------------------------------------------------------------- rows
    def _record(self, round, timings, start_s, end_s, plans, reports, rewards, metrics, evaluated) -> None:
        outcomes = [t.outcome for t in timings]
        ok = [t for t in timings if t.outcome is Outcome.OK]
        waits = [end_s - t.end_s for t in ok]
        completions = [t.completion_s for t in ok]
        for t in sorted(timings, key=lambda t: t.device_id):
            plan = plans[t.device_id]
            rep = reports.get(t.device_id)
            self.state.device_rows.append({
                "round": round, "device_id": t.device_id, "device_type": self.device_types.get(t.device_id, ""),
                "outcome": t.outcome.value, "p": plan.arm.p, "r": plan.arm.r,
                "sparsity_before": plan.sparsity_before, "sparsity_after": plan.sparsity_after,
                "measured_sparsity_after": rep.sparsity_after if rep else _nan(),
                "start_s": t.start_s, "ready_s": t.ready_s, "download_end_s": t.download_end_s,
                "compute_end_s": t.compute_end_s, "upload_end_s": t.upload_end_s, "end_s": t.end_s,
                "completion_s": t.completion_s,
                "wait_s": end_s - t.end_s if t.outcome is Outcome.OK else _nan(),
                "compute_flops": t.compute_flops, "down_bytes": t.down_bytes, "up_bytes": t.up_bytes,
                "memory_bytes": t.memory_bytes,
                "loss_before": rep.loss_before if rep else _nan(), "loss_after": rep.loss_after if rep else _nan(),
                "update_norm": rep.update_norm if rep else _nan(), "n_samples": rep.n_samples if rep else 0,
                "reward": rewards.get(t.device_id, 0.0),
            })
        sp = np.array(list(self.state.sparsity.values()), dtype=float)
        arms = [plans[t.device_id].arm for t in timings]
        losses = [reports[t.device_id].loss_after for t in ok if t.device_id in reports]
        self.state.round_rows.append({
            "round": round, "start_s": start_s, "end_s": end_s, "duration_s": end_s - start_s,
            "n_selected": len(timings), "n_ok": len(ok),
            "n_late": outcomes.count(Outcome.LATE), "n_straggler": outcomes.count(Outcome.STRAGGLER),
            "n_offline": outcomes.count(Outcome.OFFLINE), "n_unavailable": outcomes.count(Outcome.UNAVAILABLE),
            "n_oom": outcomes.count(Outcome.OOM),
            "mean_wait_s": float(np.mean(waits)) if waits else _nan(),
            "max_completion_s": float(np.max(completions)) if completions else _nan(),
            "mean_completion_s": float(np.mean(completions)) if completions else _nan(),
            "mean_sparsity": float(sp.mean()) if sp.size else _nan(),
            "min_sparsity": float(sp.min()) if sp.size else _nan(),
            "mean_rank": float(np.mean([a.r for a in arms])) if arms else _nan(),
            "mean_p": float(np.mean([a.p for a in arms])) if arms else _nan(),
            "mean_reward": float(np.mean(list(rewards.values()))) if rewards else _nan(),
            "train_loss": float(np.mean(losses)) if losses else _nan(),
            "accuracy": float(metrics.get("accuracy", _nan())), "eval_loss": float(metrics.get("loss", _nan())),
            "evaluated": bool(evaluated),
        })

    def _check_replay(self, round: int, timings: list[DeviceTiming], start_s: float, end_s: float) -> None:
        """A resumed run re-simulates finished rounds; the engine must reproduce the recorded times."""
        row = next(r for r in self.state.round_rows if r["round"] == round)
        if not (math.isclose(row["start_s"], start_s, rel_tol=0, abs_tol=1e-9)
                and math.isclose(row["end_s"], end_s, rel_tol=0, abs_tol=1e-9)):
            raise RuntimeError(
                f"resume: round {round} re-simulated to [{start_s}, {end_s}] but the checkpoint recorded "
                f"[{row['start_s']}, {row['end_s']}]; the traces or the engine changed since the checkpoint"
            )

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
