"""A policy on the timing layer alone: the server loop without a learner, as a table per device-round.

:func:`run_timing_study` runs ``rounds`` timing-only rounds of a policy on a population with a cost
model (the :class:`~simfed.experiments.loop.ServerLoop` without training: observations carry completion
times and sparsities, losses and norms are NaN) and returns one row per device-round. It shows, on real
traces and the real cost model, what S-UCB learns (DESIGN §3: stragglers should get larger pruning ratios
and/or smaller ranks; waiting time should fall).

Which model the time layer costs is a parameter (:func:`study_cost`). The study's default is the
``smollm2-135m`` preset's shape with a batch of 8 sequences of 128 tokens (the scale of the paper's
RoBERTa runs on the Jetsons: a ~125-135 M-parameter model, batch 8-32; reference notes §6.2): a
round then takes about a minute and both compute (frozen weights, shrinking with sparsity) and
communication (LoRA factors, growing with rank) matter. With the ``tiny`` preset's shape a round is
under a second, 80 % of the straggler's time is the transfer of a few hundred kB, and the round is
set by whichever device drew the worst 60-s Wi-Fi slot, so no arm choice moves the waiting time
(docs/decisions.md, "Timing-layer study", has the measurements). The server's own phases are not
timed here (the study is about the devices' rounds).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from simfed.decisions.policies import Policy
from simfed.decisions.reward import DEFAULT_WEIGHTS, RewardWeights

#: The cost model the timing study uses by default (see the module docstring).
STUDY_PRESET = "smollm2-135m"
STUDY_BATCH_SIZE = 8
STUDY_SEQ_LEN = 128
#: S-UCB's parameters in the timing study: less exploration than the bandit-study defaults, because
#: in a synchronous round of many devices the slowest one sets the round, so any device's
#: exploration of a slow arm is paid by all (docs/decisions.md).
STUDY_SUCB_PARAMS: dict[str, Any] = {"exploration": 0.05, "nu": 0.1}


def study_cost(preset: str = STUDY_PRESET, batch_size: int = STUDY_BATCH_SIZE, seq_len: int = STUDY_SEQ_LEN):
    """The analytical cost model (:class:`simfed.timing.cost.CostModel`) of a model preset (any timing preset,
    :mod:`simfed.timing.presets`), with its default LoRA targets."""
    from simfed.timing.presets import timing_cost

    return timing_cost(preset, batch_size, seq_len)


def run_timing_study(population, cost, policy: Policy, *, rounds: int, s_star: float, local_iters: int, tau: int,
                     weights: RewardWeights = DEFAULT_WEIGHTS) -> pd.DataFrame:
    """Run ``rounds`` timing-only rounds of ``policy`` on ``population`` with ``cost``; one row per device-round
    (the columns of ``device_rounds.parquet``, docs/experiments.md)."""
    from simfed.experiments.loop import ServerLoop
    from simfed.timing.engine import Engine, EngineConfig

    types = {d.device_id: d.device_type for d in population.devices}
    loop = ServerLoop(policy=policy, s_star=s_star, local_iters=local_iters, tau=tau, rounds=rounds,
                      reward_weights=weights, device_types=types, keep_rows=True)
    Engine(population, cost, EngineConfig(log_events=False), loop).run(rounds)
    return loop.table()


def waiting_by_round(table: pd.DataFrame) -> pd.Series:
    """Mean waiting time (round end − device end, over the devices that finished OK) per round."""
    return table.groupby("round")["wait_s"].mean()


def summary_by_type(table: pd.DataFrame, rounds: Sequence[int]) -> pd.DataFrame:
    """Mean chosen p and r per device type over the given rounds."""
    sub = table[table["round"].isin(list(rounds))]
    return sub.groupby("device_type")[["p", "r", "completion_s"]].mean()
