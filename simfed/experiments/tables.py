"""The run directory's tables, defined once: one dataclass per table whose fields are its columns.

The server loop builds :class:`RoundRow` and :class:`DeviceRoundRow` records, the run directory writes
them (:mod:`simfed.experiments.outputs`: a column per field, in field order), and ``analysis/`` reads the
columns these classes name. :data:`SCHEMA_VERSION` is written into every run directory's
``summary.json``; it changes whenever a column does. docs/experiments.md §3 documents every column.

:class:`RunTotals` folds the rows into the run's headline numbers as they come, so a run keeps no table
in memory: its rows go to the journal round by round and into the Parquet tables at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: Version of the run-directory tables; 2: server phases, failures, nominal and measured sparsity;
#: 3: ``rank_after`` (the rank a device's update was sent at).
SCHEMA_VERSION = 3


@dataclass
class RoundRow:
    """One round as the server saw it (``rounds.parquet``). Times are simulated seconds."""

    round: int
    start_s: float  # the round began (the previous round's end)
    close_s: float  # the devices' phases closed (all in, quota or deadline)
    end_s: float  # the server's own work after the close is done; the next round starts here
    duration_s: float  # end_s - start_s
    aggregate_s: float  # the server's aggregation phase
    evaluate_s: float  # the server's evaluation phase (0 unless timed)
    n_selected: int
    n_ok: int
    n_late: int
    n_straggler: int
    n_offline: int
    n_unavailable: int
    n_oom: int
    n_failed: int  # finished, but training diverged: the update was rejected
    mean_wait_s: float  # mean of (close_s - device end) over OK devices
    max_completion_s: float
    mean_completion_s: float
    mean_sparsity: float  # nominal sparsity the server tracks, mean over all devices, after the round
    min_sparsity: float
    mean_measured_sparsity: float  # the share of prunable parameters really removed (whole groups and channels)
    mean_rank: float
    mean_p: float
    mean_reward: float
    train_loss: float
    accuracy: float  # NaN unless evaluated
    eval_loss: float
    evaluated: bool


@dataclass
class DeviceRoundRow:
    """One selected device in one round (``device_rounds.parquet``)."""

    round: int
    device_id: str
    device_type: str
    outcome: str  # ok, late, straggler, offline, unavailable, oom, failed
    failure: str  # why a failed update was rejected ("" otherwise)
    p: float
    r: int
    sparsity_before: float  # nominal
    sparsity_after: float  # nominal
    measured_sparsity_after: float  # reported by the device (full mode) or the structure's (timing mode)
    base_download: bool  # its payload included the base model
    start_s: float
    ready_s: float
    download_end_s: float
    compute_end_s: float
    upload_end_s: float
    end_s: float
    completion_s: float
    wait_s: float
    compute_flops: float
    down_bytes: float
    up_bytes: float
    memory_bytes: float
    loss_before: float
    loss_after: float
    update_norm: float
    n_samples: int
    rank_after: int  # the rank of the update the device sent (below r when it self-pruned: HetLoRA); r otherwise
    reward: float


@dataclass
class EventRow:
    """One line of the event log (``events.parquet``)."""

    time_s: float
    round: int
    device_id: str
    kind: str
    detail: str


def columns(cls: type) -> list[str]:
    """The column names of a table class, in order."""
    return [f.name for f in fields(cls)]


_ARROW = {int: pa.int64(), float: pa.float64(), str: pa.string(), bool: pa.bool_(),
          "int": pa.int64(), "float": pa.float64(), "str": pa.string(), "bool": pa.bool_()}


def arrow_schema(cls: type) -> pa.Schema:
    """The Parquet schema of a table class (its field types)."""
    return pa.schema([(f.name, _ARROW[f.type]) for f in fields(cls)])


def to_arrow(rows: Iterable, cls: type) -> pa.Table:
    """Records of a table class as one Arrow table (column by column, the schema even when empty)."""
    rows = list(rows)
    names = columns(cls)
    data = {n: [getattr(r, n) for r in rows] for n in names}
    return pa.table(data, schema=arrow_schema(cls))


def table_of(columns: dict, cls: type) -> pa.Table:
    """One table of class ``cls`` from its columns (arrays or lists, one per field, aligned).

    Raises:
        ValueError: a missing or unknown column, naming it.
    """
    names = [f.name for f in fields(cls)]
    missing, unknown = set(names) - set(columns), set(columns) - set(names)
    if missing or unknown:
        raise ValueError(f"{cls.__name__}: missing column(s) {sorted(missing)}, unknown column(s) {sorted(unknown)}")
    schema = arrow_schema(cls)
    return pa.table([pa.array(columns[n], type=schema.field(n).type) for n in names], schema=schema)


@dataclass
class RunTotals:
    """The run's headline numbers, folded in round by round (no table kept in memory; picklable)."""

    s_star: float
    target_accuracy: float = 0.0
    rounds: int = 0
    end_s: float = 0.0
    duration_sum: float = 0.0
    wait_sum: float = 0.0
    wait_n: int = 0
    time_to_target_s: float | None = None
    rounds_to_target: int | None = None
    time_to_s_star_s: float | None = None
    outcomes: dict = field(default_factory=dict)
    first_failure: tuple | None = None  # (round, device id, why) of the first rejected update

    def add(self, row: RoundRow, device_rows: "pa.Table | Iterable[DeviceRoundRow]") -> None:
        """Fold in one finished round: its row and its device-round rows (a table, or records)."""
        if not isinstance(device_rows, pa.Table):
            device_rows = to_arrow(device_rows, DeviceRoundRow)
        self.rounds += 1
        self.end_s = row.end_s
        self.duration_sum += row.duration_s
        at_s_star = math.isfinite(row.min_sparsity) and row.min_sparsity >= self.s_star - 1e-12
        if at_s_star and self.time_to_s_star_s is None:
            self.time_to_s_star_s = row.end_s
        # the deployable model: accuracy at the target *and* every device at s*
        if (self.target_accuracy > 0 and self.time_to_target_s is None and row.evaluated and at_s_star
                and math.isfinite(row.accuracy) and row.accuracy >= self.target_accuracy):
            self.time_to_target_s, self.rounds_to_target = row.end_s, row.round
        counts = pc.value_counts(device_rows.column("outcome")).to_pylist()
        for item in sorted(counts, key=lambda c: c["values"]):
            self.outcomes[item["values"]] = self.outcomes.get(item["values"], 0) + item["counts"]
        if self.first_failure is None:
            failure = device_rows.column("failure").to_numpy(zero_copy_only=False)
            hit = np.flatnonzero(failure != "")
            if hit.size:
                i = int(hit[0])
                self.first_failure = (int(device_rows.column("round")[i].as_py()), device_rows.column("device_id")[i].as_py(),
                                      str(failure[i]))
        wait = device_rows.column("wait_s").to_numpy()
        wait = wait[np.isfinite(wait)]
        if wait.size:
            self.wait_sum += math.fsum(wait.tolist())
            self.wait_n += int(wait.size)

    @property
    def mean_wait_s(self) -> float | None:
        return self.wait_sum / self.wait_n if self.wait_n else None

    @property
    def mean_round_s(self) -> float | None:
        return self.duration_sum / self.rounds if self.rounds else None
