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

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from simfed.experiments.tables import DeviceRoundRow, EventRow, RoundRow, arrow_schema, columns, to_arrow

# The tables' columns are the fields of their record classes (simfed.experiments.tables).
EVENT_COLUMNS = columns(EventRow)
ROUND_COLUMNS = columns(RoundRow)
DEVICE_ROUND_COLUMNS = columns(DeviceRoundRow)

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


def _remove(path: str | Path) -> None:
    """Delete a temporary file if it is there."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


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
        _remove(tmp)
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


def records(rows: Iterable, cls: type) -> list:
    """Rows as records of table class ``cls``: records pass through; a dict fills what it lacks with NaN
    (numbers), "" (strings) or False/0 (flags, counts) — for hand-made run directories (tests, importers)."""
    from dataclasses import fields

    blank = {"float": math.nan, "int": 0, "str": "", "bool": False}
    out = []
    for row in rows:
        if isinstance(row, cls):
            out.append(row)
        else:
            unknown = set(row) - {f.name for f in fields(cls)}
            if unknown:
                raise ValueError(f"{cls.__name__}: unknown column(s) {sorted(unknown)}")
            values = {}
            for f in fields(cls):
                v = row.get(f.name, blank[f.type])
                if f.type != "float" and isinstance(v, float) and math.isnan(v):
                    v = blank[f.type]  # a count, flag or label left unknown
                values[f.name] = v
            out.append(cls(**values))
    return out


class _AtomicParquet:
    """A Parquet file written row group by row group into a temporary file, moved into place on success."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.path, self.schema = Path(path), schema

    def __enter__(self) -> "_AtomicParquet":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.fchmod(fd, FILE_MODE)
        os.close(fd)
        self.writer = pq.ParquetWriter(self.tmp, self.schema)
        return self

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            self.writer.write_table(table)

    def close(self, ok: bool = True) -> None:
        """Finish the file: moved into place when ``ok``, discarded otherwise."""
        self.__exit__(None if ok else RuntimeError, None, None)

    def __exit__(self, exc_type, exc, tb) -> None:
        self.writer.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            _remove(self.tmp)


def atomic_write_table(path: str | Path, df: "pd.DataFrame | pa.Table") -> None:
    """Write a DataFrame (or an Arrow table) as Parquet (pyarrow) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, FILE_MODE)
    os.close(fd)
    try:
        if isinstance(df, pa.Table):
            pq.write_table(df, tmp)
        else:
            df.to_parquet(tmp, index=False, engine="pyarrow")
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
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

    def journal_rounds(self) -> Iterator[tuple]:
        """The finished rounds' records, in order, one at a time: ``(PlanBatch, ServerReply, RoundRow, device-round
        table)`` (an Arrow table with the columns of :class:`~simfed.experiments.tables.DeviceRoundRow`)."""
        import pickle

        path = self.file(JOURNAL)
        if not path.exists():
            return
        with path.open("rb") as fh:
            while head := fh.read(8):
                yield pickle.loads(fh.read(int.from_bytes(head, "little")))

    def write_tables(self, events: Iterable, rounds: Iterable, device_rounds: Iterable, summary: dict) -> None:
        """Write given rows (records of :mod:`simfed.experiments.tables`, or dicts naming some of their
        columns) as a complete run directory: hand-made runs for tests and analyses."""
        atomic_write_table(self.file(EVENTS), to_arrow(records(events, EventRow), EventRow))
        atomic_write_table(self.file(ROUNDS), to_arrow(records(rounds, RoundRow), RoundRow))
        atomic_write_table(self.file(DEVICE_ROUNDS), to_arrow(records(device_rounds, DeviceRoundRow), DeviceRoundRow))
        atomic_write_json(self.file(SUMMARY), summary)

    def event_writer(self) -> "_AtomicParquet":
        """``events.parquet``, written round by round as the engine logs (open it before the run; it takes its
        place when closed without error). A writer left by a killed process is discarded on resume."""
        for stale in self.path.glob(f".{EVENTS}.*.tmp"):
            stale.unlink()
        return _AtomicParquet(self.file(EVENTS), arrow_schema(EventRow)).__enter__()

    def write_results(self, summary: dict) -> None:
        """Write the round tables (streamed from the journal, one row group per round), then the summary (the
        completion marker), then drop the checkpoint and the journal. The events are already written
        (:meth:`event_writer`)."""
        with _AtomicParquet(self.file(ROUNDS), arrow_schema(RoundRow)) as rounds, \
                _AtomicParquet(self.file(DEVICE_ROUNDS), arrow_schema(DeviceRoundRow)) as devices:
            for _plans, _reply, round_row, device_table in self.journal_rounds():
                rounds.write(to_arrow([round_row], RoundRow))
                devices.write(device_table)
        atomic_write_json(self.file(SUMMARY), summary)
        for name in (CHECKPOINT, JOURNAL):
            if self.file(name).exists():
                self.file(name).unlink()

    def write_wall(self, info: dict) -> None:
        atomic_write_json(self.file(WALL), info)

    def read_summary(self) -> dict:
        return json.loads(self.file(SUMMARY).read_text())
