"""The run directory: what one simulated run leaves behind, written atomically.

Layout (the schema of every table is documented in ``docs/experiments.md``)::

    RUN_DIR/
      config.toml            the resolved configuration (absolute paths, every default)
      events.parquet         the event log: one row per simulated event
      rounds.parquet         one row per round
      device_rounds.parquet  one row per (round, selected device)
      summary.json           headline numbers; its presence marks the run complete
      checkpoint.pkl         state after the last finished round (removed once the run completes)
      journal.bin            the finished rounds' plans and rows, appended round by round (idem)
      wall.json              wall-clock facts (not part of the deterministic results)

Every file is written to a temporary file in the same directory and moved into place with
``os.replace``, so a killed run never leaves a half-written table: a reader sees the old file or the
new one.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

EVENT_COLUMNS = ["time_s", "round", "device_id", "kind", "detail"]

ROUND_COLUMNS = [
    "round", "start_s", "close_s", "end_s", "duration_s", "aggregate_s", "evaluate_s",
    "n_selected", "n_ok", "n_late", "n_straggler", "n_offline", "n_unavailable", "n_oom", "n_failed",
    "mean_wait_s", "max_completion_s", "mean_completion_s",
    "mean_sparsity", "min_sparsity", "mean_measured_sparsity", "mean_rank", "mean_p", "mean_reward",
    "train_loss", "accuracy", "eval_loss", "evaluated",
]

DEVICE_ROUND_COLUMNS = [
    "round", "device_id", "device_type", "outcome", "failure", "p", "r",
    "sparsity_before", "sparsity_after", "measured_sparsity_after", "base_download",
    "start_s", "ready_s", "download_end_s", "compute_end_s", "upload_end_s", "end_s",
    "completion_s", "wait_s", "compute_flops", "down_bytes", "up_bytes", "memory_bytes",
    "loss_before", "loss_after", "update_norm", "n_samples", "reward",
]

CONFIG = "config.toml"
EVENTS = "events.parquet"
ROUNDS = "rounds.parquet"
DEVICE_ROUNDS = "device_rounds.parquet"
SUMMARY = "summary.json"
CHECKPOINT = "checkpoint.pkl"
JOURNAL = "journal.bin"
WALL = "wall.json"


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; results should get the permissions an ordinary write would give them
FILE_MODE = 0o666 & ~_current_umask()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(value: Any) -> Any:
    """NaN and infinities become null: JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(json_safe(obj), indent=2, sort_keys=True) + "\n")


def table(rows: Iterable[dict], columns: list[str]) -> pd.DataFrame:
    """A DataFrame with exactly ``columns`` in that order (an empty run still has the schema)."""
    df = pd.DataFrame(list(rows))
    for col in columns:
        if col not in df.columns:
            df[col] = pd.Series(dtype="float64")
    return df[columns + [c for c in df.columns if c not in columns]]


def atomic_write_table(path: str | Path, df: pd.DataFrame) -> None:
    """Write a DataFrame as Parquet (pyarrow) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, FILE_MODE)
    os.close(fd)
    try:
        df.to_parquet(tmp, index=False, engine="pyarrow")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class RunDir:
    """One run directory: paths, the completion marker, the checkpoint and the final tables."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    def is_complete(self) -> bool:
        """A run is complete once its summary is written (the summary is always written last)."""
        return self.file(SUMMARY).exists()

    def has_checkpoint(self) -> bool:
        return self.file(CHECKPOINT).exists()

    def recorded_config(self) -> str | None:
        p = self.file(CONFIG)
        return p.read_text() if p.exists() else None

    def write_config(self, toml_text: str) -> None:
        atomic_write_text(self.file(CONFIG), toml_text)

    def save_checkpoint(self, data: bytes) -> None:
        """Replace the checkpoint with ``data`` (pickled by the runner) in one atomic step."""
        atomic_write_bytes(self.file(CHECKPOINT), data)

    def load_checkpoint(self) -> bytes:
        return self.file(CHECKPOINT).read_bytes()

    def append_journal(self, record: bytes) -> int:
        """Append one length-prefixed record, flushed to disk; returns the journal's new length.

        The journal keeps a checkpoint's size independent of the run's length: per-round rows are
        appended once instead of being re-pickled into every checkpoint.
        """
        with self.file(JOURNAL).open("ab") as fh:
            fh.write(len(record).to_bytes(8, "little") + record)
            fh.flush()
            os.fsync(fh.fileno())
            return fh.tell()

    def read_journal(self, length: int) -> list[bytes]:
        """The records in the first ``length`` bytes (a record appended after the last checkpoint
        was saved is dropped, and the file truncated to ``length``)."""
        path = self.file(JOURNAL)
        with path.open("r+b") as fh:
            data = fh.read(length)
            if len(data) != length:
                raise ValueError(f"{path}: journal is {len(data)} bytes, the checkpoint expects {length}")
            fh.truncate(length)
        records, pos = [], 0
        while pos < length:
            n = int.from_bytes(data[pos:pos + 8], "little")
            records.append(data[pos + 8:pos + 8 + n])
            pos += 8 + n
        return records

    def clear(self) -> None:
        """Remove what an earlier run left here (only the files a run writes)."""
        for name in (SUMMARY, CHECKPOINT, JOURNAL, EVENTS, ROUNDS, DEVICE_ROUNDS, CONFIG, WALL, "error.txt"):
            if self.file(name).exists():
                self.file(name).unlink()

    def write_results(self, events: list[dict], rounds: list[dict], device_rounds: list[dict], summary: dict) -> None:
        """Write the three tables, then the summary (the completion marker), then drop the checkpoint."""
        atomic_write_table(self.file(EVENTS), table(events, EVENT_COLUMNS))
        atomic_write_table(self.file(ROUNDS), table(rounds, ROUND_COLUMNS))
        atomic_write_table(self.file(DEVICE_ROUNDS), table(device_rounds, DEVICE_ROUND_COLUMNS))
        atomic_write_json(self.file(SUMMARY), summary)
        for name in (CHECKPOINT, JOURNAL):
            if self.file(name).exists():
                self.file(name).unlink()

    def write_wall(self, info: dict) -> None:
        atomic_write_json(self.file(WALL), info)

    def read_summary(self) -> dict:
        return json.loads(self.file(SUMMARY).read_text())
