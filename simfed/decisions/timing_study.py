"""A minimal timing-only server loop for studying a policy on the timing layer alone.

:class:`PolicyTimingDriver` is a :class:`simfed.timing.engine.RoundDriver`: each round it asks a
policy for every device's arm, turns arms into plans (sparsity bookkeeping by
:func:`simfed.structure.next_sparsity`; a device's sparsity advances only when its round ends OK),
and after the round builds the :class:`~simfed.records.Observation` a server sees (its completion
time, the round's mean, sparsities; losses and norms are NaN because nothing trains), computes the
rewards (:func:`simfed.decisions.reward.round_rewards`) and updates the policy. It records one row per
device-round. The full server loop (with training) lives elsewhere; this one exists so that the
decisions layer can show, on real traces and the real cost model, what S-UCB learns (DESIGN §3:
stragglers should get larger pruning ratios and/or smaller ranks; waiting time should fall).

Which model the time layer costs is a parameter (:func:`study_cost`). The study's default is the
``smollm2-135m`` preset's shape with a batch of 8 sequences of 128 tokens (the scale of the paper's
RoBERTa runs on the Jetsons: a ~125-135 M-parameter model, batch 8-32; reference notes §6.2): a
round then takes about a minute and both compute (frozen weights, shrinking with sparsity) and
communication (LoRA factors, growing with rank) matter. With the ``tiny`` preset's shape a round is
under a second, 80 % of the straggler's time is the transfer of a few hundred kB, and the round is
set by whichever device drew the worst 60-s Wi-Fi slot, so no arm choice moves the waiting time
(docs/decisions.md, "Timing-layer study", has the measurements).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from simfed.decisions.policies import Policy
from simfed.decisions.reward import DEFAULT_WEIGHTS, RewardWeights, round_reward_terms
from simfed.records import DeviceTiming, Observation, Outcome, Plan
from simfed.structure import next_sparsity

#: The cost model the timing study uses by default (see the module docstring).
STUDY_PRESET = "smollm2-135m"
STUDY_BATCH_SIZE = 8
STUDY_SEQ_LEN = 128
#: S-UCB's parameters in the timing study: less exploration than the bandit-study defaults, because
#: in a synchronous round of many devices the slowest one sets the round, so any device's
#: exploration of a slow arm is paid by all (docs/decisions.md).
STUDY_SUCB_PARAMS: dict[str, Any] = {"exploration": 0.05, "nu": 0.1}


def study_cost(preset: str = STUDY_PRESET, batch_size: int = STUDY_BATCH_SIZE, seq_len: int = STUDY_SEQ_LEN):
    """The analytical cost model (:class:`simfed.timing.cost.CostModel`) of a model preset's shape."""
    from simfed.accuracy.presets import preset as get_preset
    from simfed.timing.cost import CostModel

    return CostModel(get_preset(preset).shape(), batch_size=batch_size, seq_len=seq_len)


class PolicyTimingDriver:
    """Round driver: policy → plans → (engine) → observations → rewards → policy."""

    def __init__(self, policy: Policy, *, s_star: float, local_iters: int, tau: int,
                 weights: RewardWeights = DEFAULT_WEIGHTS, device_types: dict[str, str] | None = None) -> None:
        if not (0.0 <= s_star < 1.0):
            raise ValueError(f"PolicyTimingDriver: s_star must be in [0, 1), got {s_star!r}")
        self.policy = policy
        self.s_star = s_star
        self.local_iters = local_iters
        self.tau = tau
        self.weights = weights
        self.device_types = dict(device_types or {})
        self.sparsity: dict[str, float] = {}
        self.rows: list[dict[str, Any]] = []
        self._plans: dict[str, Plan] = {}

    def plans(self, round: int, now_s: float, device_ids: list[str]) -> list[Plan]:
        arms = self.policy.select(round, list(device_ids))
        self._plans = {}
        out = []
        for dev in device_ids:
            arm = arms[dev]
            before = self.sparsity.get(dev, 0.0)
            after = next_sparsity(before, arm.p, self.s_star)
            plan = Plan(round, dev, arm, before, after, self.local_iters, self.tau)
            self._plans[dev] = plan
            out.append(plan)
        return out

    def round_done(self, round: int, timings: list[DeviceTiming], start_s: float, end_s: float) -> bool:
        ok_times = [t.completion_s for t in timings if t.outcome is Outcome.OK]
        mean_t = sum(ok_times) / len(ok_times) if ok_times else math.nan
        observations: list[Observation] = []
        for t in timings:
            plan = self._plans[t.device_id]
            ok = t.outcome is Outcome.OK
            after = plan.sparsity_after if ok else plan.sparsity_before
            observations.append(Observation(
                round=round, device_id=t.device_id, arm=plan.arm, outcome=t.outcome,
                completion_s=t.completion_s if ok else math.nan, round_mean_completion_s=mean_t,
                sparsity_before=plan.sparsity_before, sparsity_after=after, s_star=self.s_star,
            ))
            if ok:
                self.sparsity[t.device_id] = after
        terms = round_reward_terms(observations, self.weights)
        self.policy.update(round, observations, {k: v.total for k, v in terms.items()})
        for obs, t in zip(observations, timings):
            self.rows.append({
                "round": round, "device_id": obs.device_id, "device_type": self.device_types.get(obs.device_id, ""),
                "p": obs.arm.p, "r": obs.arm.r, "outcome": obs.outcome.value, "completion_s": t.completion_s,
                "waiting_s": end_s - t.end_s if obs.ok else math.nan, "round_duration_s": end_s - start_s,
                "sparsity_before": obs.sparsity_before, "sparsity_after": obs.sparsity_after,
                "reward": terms[obs.device_id].total, "time_factor": terms[obs.device_id].time,
            })
        return True

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


def run_timing_study(population, cost, policy: Policy, *, rounds: int, s_star: float, local_iters: int, tau: int,
                     weights: RewardWeights = DEFAULT_WEIGHTS) -> pd.DataFrame:
    """Run ``rounds`` timing-only rounds of ``policy`` on ``population`` with ``cost``; one row per device-round."""
    from simfed.timing.engine import Engine, EngineConfig

    types = {d.device_id: d.device_type for d in population.devices}
    driver = PolicyTimingDriver(policy, s_star=s_star, local_iters=local_iters, tau=tau, weights=weights,
                                device_types=types)
    Engine(population, cost, EngineConfig(log_events=False), driver).run(rounds)
    return driver.table()


def waiting_by_round(table: pd.DataFrame) -> pd.Series:
    """Mean waiting time (round end − device end, over the devices that finished OK) per round."""
    return table.groupby("round")["waiting_s"].mean()


def summary_by_type(table: pd.DataFrame, rounds: Sequence[int]) -> pd.DataFrame:
    """Mean chosen p and r per device type over the given rounds."""
    sub = table[table["round"].isin(list(rounds))]
    return sub.groupby("device_type")[["p", "r", "completion_s"]].mean()
