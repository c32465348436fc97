"""The on-disk trace format: one directory of columnar tables (CSV or Parquet) plus ``meta.json``.

A population of device traces (:class:`~simfed.timing.traces.Population`) is stored as

- ``meta.json``     format name and version, the unit of every quantity, default periods, provenance;
- ``devices.csv``   ``device_id, device_type, ram, latency`` (+ optional per-device period columns, access
  point, and trace-library references ``<kind>_series, <kind>_offset, <kind>_scale``);
- ``compute.csv``   ``device_id, t, rate``  effective training throughput;
- ``downlink.csv``  ``device_id, t, rate``  downlink bandwidth;
- ``uplink.csv``    ``device_id, t, rate``  uplink bandwidth;
- ``availability.csv`` (optional) ``device_id, start, end`` online intervals;
- ``aps.csv`` (optional) ``ap, downlink, uplink, duplex`` shared access points;
- ``library/series.csv`` + ``library/<kind>.csv`` (optional) ``kind, series_id, period`` and
  ``series_id, t, rate``: base series that devices replay with their own offset and scale
  (:class:`~simfed.timing.traces.SeriesRef`), stored once however many devices use them.

Every table may instead be a Parquet file with the same stem (``devices.parquet``, ...), chosen per
file by its extension; both formats go through the same validation and error messages (a CSV fault
names its line, a Parquet fault its row). :func:`convert_directory` rewrites a directory in the other
format (the CLI's ``simfed traces convert``).

Column names carry no unit: units are declared once in ``meta.json`` and converted on load, so a
user can drop in a trace measured in GFLOP/s, Mbit/s, GB and ms without rewriting it.
:func:`write_population` and :class:`TraceWriter` always write base units (FLOP/s, bytes/s, bytes,
seconds); CSV with round-trip float formatting, Parquet as binary doubles, so write → read gives back
identical series. :class:`TraceWriter` writes a population chunk by chunk (generators for 10^6
devices stream through it). ``traces/SCHEMA.md`` in the repository is the user-facing description
of this format.

Validation fails on the first problem with one :class:`~simfed.timing.traces.TraceError` naming
the file, the device, the field and the line. Reading is vectorised with pandas/numpy (grouping
by device with one stable sort): 10,000-device populations load in about a second, a million
phones on a trace library in about half a minute (``benchmarks/bench_scale.py``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from simfed.timing.traces import (
    DUPLEX_MODES,
    AccessPoint,
    Availability,
    DeviceTrace,
    Population,
    Series,
    SeriesRef,
    TraceError,
)

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "UNITS", "TABLE_FORMATS", "write_population", "read_population",
           "TraceWriter", "convert", "convert_directory", "table_format", "zero_rate_series", "warn_zero_rates"]

FORMAT_NAME = "simfed-traces"
FORMAT_VERSION = 1
TABLE_FORMATS = {"csv": ".csv", "parquet": ".parquet"}  # format name -> file extension
PARQUET_COMPRESSION = "zstd"

# Unit tables: the factor that turns one declared unit into the base unit.
# Decimal prefixes are powers of 1000 (network and FLOP conventions); the binary KiB/MiB/GiB forms
# are also accepted because FLASH's "KB/s" and most RAM sizes are binary.
_TIME = {"s": 1.0, "ms": 1e-3, "min": 60.0, "h": 3600.0}
_FLOPS = {"FLOP/s": 1.0, "kFLOP/s": 1e3, "MFLOP/s": 1e6, "GFLOP/s": 1e9, "TFLOP/s": 1e12}
_BANDWIDTH = {
    "bytes/s": 1.0, "B/s": 1.0, "KB/s": 1e3, "MB/s": 1e6, "GB/s": 1e9,
    "KiB/s": 1024.0, "MiB/s": 1024.0**2, "GiB/s": 1024.0**3,
    "bit/s": 1 / 8, "kbit/s": 1e3 / 8, "Mbit/s": 1e6 / 8, "Gbit/s": 1e9 / 8,
}  # fmt: skip
_BYTES = {"bytes": 1.0, "B": 1.0, "KB": 1e3, "MB": 1e6, "GB": 1e9, "KiB": 1024.0, "MiB": 1024.0**2, "GiB": 1024.0**3}

# quantity -> (unit table, base unit)
UNITS: dict[str, tuple[dict[str, float], str]] = {
    "time": (_TIME, "s"),
    "compute": (_FLOPS, "FLOP/s"),
    "downlink": (_BANDWIDTH, "bytes/s"),
    "uplink": (_BANDWIDTH, "bytes/s"),
    "ram": (_BYTES, "bytes"),
    "latency": (_TIME, "s"),
}
BASE_UNITS = {q: base for q, (_, base) in UNITS.items()}

# rate series: quantity -> (file name, DeviceTrace attribute)
_KINDS = ("compute", "downlink", "uplink")
_SERIES_FILES = {"compute": "compute.csv", "downlink": "downlink.csv", "uplink": "uplink.csv"}
_SERIES_ATTR = {"compute": "compute_flops", "downlink": "down_bps", "uplink": "up_bps"}
_DEVICE_COLUMNS = ["device_id", "device_type", "ram", "latency"]
_PERIOD_KINDS = ["compute", "downlink", "uplink", "availability"]
LIBRARY_DIR = "library"
# columns that hold names: always text ("007" is not 7; "NA" is a valid device id)
_TEXT_COLUMNS = {"device_id", "device_type", "ap", "duplex", "kind", "series_id"} | {f"{k}_series" for k in _KINDS}


def convert(value, quantity: str, unit: str, *, where: str = "meta.json"):
    """Convert ``value`` (scalar or array) from ``unit`` to the base unit of ``quantity``."""
    table, _ = UNITS[quantity]
    if unit not in table:
        raise TraceError(f"{where}: unknown unit {unit!r} for {quantity} (known: {', '.join(table)})")
    return value * table[unit]


def _table_path(root: Path, stem: str) -> Path | None:
    """``root/stem.csv`` or ``root/stem.parquet``, whichever exists (None if neither).

    Raises:
        TraceError: both exist (which one holds the data would be a guess).
    """
    found = [root / f"{stem}{ext}" for ext in TABLE_FORMATS.values() if (root / f"{stem}{ext}").is_file()]
    if len(found) > 1:
        raise TraceError(f"{root / stem}: both {found[0].name} and {found[1].name} exist; keep one")
    return found[0] if found else None


def table_format(directory: str | os.PathLike) -> str:
    """``"csv"`` or ``"parquet"``: the format of a trace directory's ``devices`` table.

    Raises:
        TraceError: the directory has no (or two) devices tables.
    """
    root = Path(directory)
    path = _table_path(root, "devices")
    if path is None:
        raise TraceError(f"{root / 'devices.csv'}: missing (nor devices.parquet)")
    return "parquet" if path.suffix == ".parquet" else "csv"


# --------------------------------------------------------------------------------------------------
# writing


def write_population(population: Population, directory: str | os.PathLike, *, format: str = "csv") -> Path:
    """Write ``population`` to ``directory`` atomically (a sibling temp dir, then a rename).

    ``format`` is ``"csv"`` or ``"parquet"`` (every table in that format). An existing trace
    directory (one with ``meta.json``) is replaced; any other non-empty directory is refused rather
    than clobbered. Library references (:class:`~simfed.timing.traces.SeriesRef`) are written as
    references, their base series once in ``library/``, with ``population.library``'s other series.

    Raises:
        TraceError: no devices, a duplicate device id, two different series under one library name,
            an unknown format, or a target that is not a trace directory.
    """
    with TraceWriter(directory, format=format, meta=population.meta, access_points=population.access_points,
                     library=population.library) as writer:
        writer.add(population.devices)
    return writer.path


def _swap_in(tmp: Path, target: Path) -> None:
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rmdir(old)
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def _common_or_none(values) -> float | None:
    if len(values) == 0:
        return None
    first = float(values[0])
    return first if all(v == first for v in values) else None


def _all_zero(series: "Series | SeriesRef") -> bool:
    """The rate is 0 over the whole period (a positive total settles it without looking at the values)."""
    if series.total_per_period > 0:
        return False
    base = series.base if type(series) is SeriesRef else series
    return not bool((base.values > 0).any())


class _Stream:
    """One table written batch by batch (a CSV or Parquet writer, opened with the first batch's schema)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer = None

    def write(self, table: pa.Table) -> None:
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.suffix == ".parquet":
                self._writer = pq.ParquetWriter(str(self.path), table.schema, compression=PARQUET_COMPRESSION)
            else:
                self._writer = pa_csv.CSVWriter(str(self.path), table.schema,
                                                write_options=pa_csv.WriteOptions(quoting_style="needed"))
        self._writer.write_table(table)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _rows(key: str, ids: Sequence[str], a: str, av: np.ndarray, b: str, bv: np.ndarray) -> pa.Table:
    return pa.table({key: pa.array(ids, pa.string()), a: pa.array(av, pa.float64()), b: pa.array(bv, pa.float64())})


class TraceWriter:
    """Write a trace directory chunk by chunk, so that memory does not grow with the population's series.

    ``add`` appends devices (any number per call; a generator passes ~10^4 at a time): their series
    rows, availability rows and library rows go straight to the files; only the ``devices`` table
    (about 100 bytes a device) is kept until :meth:`close`, which decides the period columns (a period
    shared by every device goes to ``meta.json``, as :func:`write_population` always did), writes
    ``devices``, ``aps``, the library index and ``meta.json``, and swaps the directory in atomically.
    Used as a context manager, an exception discards everything written. ``library`` (kind ->
    {series_id: Series}) is written whether used or not; the bases of the devices' references are
    added as they appear. The output is byte for byte what one ``add`` of all devices writes.

    Raises:
        TraceError: an unknown ``format``, a target that is not a trace directory; on ``add`` two different
            series under one library name; on ``close`` no devices or a duplicate device id.
    """

    def __init__(self, directory: str | os.PathLike, *, format: str = "csv", meta: dict | None = None,
                 access_points: dict | None = None, library: dict | None = None) -> None:
        if format not in TABLE_FORMATS:
            raise TraceError(f"unknown trace table format {format!r} (known: {', '.join(TABLE_FORMATS)})")
        target = Path(directory)
        if target.exists() and any(target.iterdir()) and not (target / "meta.json").is_file():
            raise TraceError(f"{target}: exists and is not a trace directory (no meta.json); not overwriting")
        target.parent.mkdir(parents=True, exist_ok=True)
        self.path = target
        self.format = format
        self._ext = TABLE_FORMATS[format]
        self._meta = dict(meta or {})
        self._aps = dict(access_points or {})
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        os.chmod(self._tmp, 0o755)  # mkdtemp makes it private; a trace directory is an ordinary, readable one
        self._streams: dict[str, _Stream] = {}
        self._ids: list[list[str]] = []
        self._types: list[list[str]] = []
        self._ram: list[np.ndarray] = []
        self._latency: list[np.ndarray] = []
        self._ap: list[list[str]] = []
        self._period: dict[str, list[np.ndarray]] = {k: [] for k in _PERIOD_KINDS}
        self._sid: dict[str, list[list]] = {k: [] for k in _KINDS}
        self._offset: dict[str, list[np.ndarray]] = {k: [] for k in _KINDS}
        self._scale: dict[str, list[np.ndarray]] = {k: [] for k in _KINDS}
        self._has_ref = dict.fromkeys(_KINDS, False)
        self._has_lib_ref = dict.fromkeys(_KINDS, False)
        self._library: dict[str, dict[str, Series]] = {k: {} for k in _KINDS}
        self._avail_started = False
        self._n = 0
        self.zero_rates: dict[str, list[tuple[str, float]]] = {}  # kind -> [(device_id, period)] of all-zero series
        self._open = True
        try:
            for kind, items in (library or {}).items():
                if kind not in _KINDS:
                    raise TraceError(f"population library: unknown series kind {kind!r} (known: {', '.join(_KINDS)})")
                for sid, s in items.items():
                    self._library_series(kind, sid, s)
        except BaseException:
            self.abort()
            raise

    def __enter__(self) -> "TraceWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif self._open:
            self.close()

    def _stream(self, name: str) -> _Stream:
        s = self._streams.get(name)
        if s is None:
            s = self._streams[name] = _Stream(self._tmp / f"{name}{self._ext}")
        return s

    def _library_series(self, kind: str, sid: str, series: Series) -> None:
        if not isinstance(sid, str) or not sid:
            raise TraceError(f"library {kind}: a series needs a non-empty text name, got {sid!r}")
        if type(series) is not Series:
            raise TraceError(f"library {kind} series {sid!r}: must be a Series, got {type(series).__name__}")
        known = self._library[kind].get(sid)
        if known is None:
            self._library[kind][sid] = series
            n = series.times_s.size
            self._stream(f"{LIBRARY_DIR}/{kind}").write(_rows("series_id", [sid] * n, "t", series.times_s, "rate", series.values))
        elif known is not series and not (known.period_s == series.period_s
                                          and np.array_equal(known.times_s, series.times_s)
                                          and np.array_equal(known.values, series.values)):
            raise TraceError(f"library {kind}: two different series are named {sid!r}")

    def add(self, devices: Iterable[DeviceTrace]) -> None:
        """Append ``devices`` (written in this order, after those of earlier calls)."""
        if not self._open:
            raise RuntimeError("TraceWriter.add after close")
        devs = list(devices)
        if not devs:
            return
        m = len(devs)
        ids = [d.device_id for d in devs]
        self._ids.append(ids)
        self._types.append([d.device_type for d in devs])
        self._ram.append(np.array([float(d.ram_bytes) for d in devs], dtype=float))
        self._latency.append(np.array([float(d.latency_s) for d in devs], dtype=float))
        self._ap.append([d.ap for d in devs])
        for kind in _KINDS:
            self._add_series(kind, ids, [getattr(d, _SERIES_ATTR[kind]) for d in devs], m)
        self._add_availability(ids, [d.availability for d in devs])
        self._n += m

    def _add_series(self, kind: str, ids: list[str], series: list, m: int) -> None:
        period = np.full(m, np.nan)
        sid: list = [None] * m
        offset = np.zeros(m)
        scale = np.ones(m)
        own_pos: list[int] = []
        own: list[Series] = []
        zero = []
        for j, s in enumerate(series):
            if type(s) is SeriesRef:
                self._has_ref[kind] = True
                offset[j], scale[j] = s.offset_s, s.scale
                if s.series_id is None:
                    own_pos.append(j)
                    own.append(s.base)
                    period[j] = s.base.period_s
                else:
                    self._has_lib_ref[kind] = True
                    sid[j] = s.series_id
                    self._library_series(kind, s.series_id, s.base)
            else:
                own_pos.append(j)
                own.append(s)
                period[j] = s.period_s
            if _all_zero(s):
                zero.append((ids[j], s.period_s))
        if zero:
            self.zero_rates.setdefault(kind, []).extend(zero)
        self._period[kind].append(period)
        self._sid[kind].append(sid)
        self._offset[kind].append(offset)
        self._scale[kind].append(scale)
        if own:
            lens = [s.times_s.size for s in own]
            rep = np.repeat(np.array([ids[j] for j in own_pos], dtype=object), lens)
            self._stream(kind).write(_rows("device_id", rep, "t", np.concatenate([s.times_s for s in own]),
                                           "rate", np.concatenate([s.values for s in own])))

    def _add_availability(self, ids: list[str], avail: list[Availability]) -> None:
        always = [a.is_always for a in avail]
        self._period["availability"].append(np.array([np.nan if a.is_always else a.period_s for a in avail]))
        if not self._avail_started:
            if all(always):
                return
            self._avail_started = True  # every earlier device was always online: their [0, inf) rows first
            earlier = [i for chunk in self._ids[:-1] for i in chunk]
            if earlier:
                self._stream("availability").write(_rows("device_id", earlier, "start", np.zeros(len(earlier)),
                                                         "end", np.full(len(earlier), math.inf)))
        rows_id, rows_s, rows_e = [], [], []
        for did, a in zip(ids, avail):
            if a.is_always:
                rows_id.append(did), rows_s.append(0.0), rows_e.append(math.inf)
            else:
                rows_id += [did] * len(a.starts)
                rows_s += a.starts
                rows_e += a.ends
        self._stream("availability").write(_rows("device_id", rows_id, "start", np.array(rows_s, dtype=float),
                                                 "end", np.array(rows_e, dtype=float)))

    def warn_zero_rates(self, source: str, show: int = 10) -> None:
        """One warning per series kind with all-zero devices among those added (as :func:`warn_zero_rates`)."""
        for kind, found in self.zero_rates.items():
            _warn_zero(kind, source, found, show)

    def close(self) -> Path:
        """Write the devices table, ``aps``, the library index and ``meta.json``; swap the directory in."""
        if not self._open:
            return self.path
        try:
            self._finish()
            for s in self._streams.values():
                s.close()
            _swap_in(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._open = False
        return self.path

    def abort(self) -> None:
        """Discard everything written (the target directory is left as it was)."""
        for s in self._streams.values():
            try:
                s.close()
            except Exception:  # noqa: BLE001 - a half-written file is removed below anyway
                pass
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._open = False

    def _finish(self) -> None:
        if self._n == 0:
            raise TraceError(f"{self.path}: refusing to write a population with no devices")
        ids = [i for chunk in self._ids for i in chunk]
        dup = pd.Index(ids).duplicated()
        if dup.any():
            raise TraceError(f"population: duplicate device_id {ids[int(np.argmax(dup))]!r}")
        devices = pd.DataFrame({
            "device_id": ids,
            "device_type": [t for chunk in self._types for t in chunk],
            "ram": np.concatenate(self._ram),
            "latency": np.concatenate(self._latency),
        })  # fmt: skip
        aps = [a for chunk in self._ap for a in chunk]
        if any(aps):
            devices["ap"] = aps
        periods: dict[str, float | None] = {}
        for kind in _KINDS:
            per = np.concatenate(self._period[kind])
            own = per[~np.isnan(per)]
            periods[kind] = _common_or_none(own)
            if periods[kind] is None and own.size:
                devices[f"{kind}_period"] = per
        if self._avail_started:
            # always-online devices are written as [0, inf) and need no period
            per = np.concatenate(self._period["availability"])
            periods["availability"] = _common_or_none(per[~np.isnan(per)])
            if periods["availability"] is None:
                devices["availability_period"] = per
        for kind in _KINDS:
            if self._has_lib_ref[kind]:
                devices[f"{kind}_series"] = [s for chunk in self._sid[kind] for s in chunk]
            if self._has_ref[kind]:
                devices[f"{kind}_offset"] = np.concatenate(self._offset[kind])
                devices[f"{kind}_scale"] = np.concatenate(self._scale[kind])
        _write_table(devices, self._tmp / f"devices{self._ext}")
        index = [(kind, sid, s.period_s) for kind in _KINDS for sid, s in self._library[kind].items()]
        if index:
            _write_table(pd.DataFrame({"kind": [r[0] for r in index], "series_id": [r[1] for r in index],
                                       "period": [r[2] for r in index]}),
                         self._tmp / LIBRARY_DIR / f"series{self._ext}")
        if self._aps:
            aps_ = [self._aps[name] for name in sorted(self._aps)]
            _write_table(pd.DataFrame({"ap": [a.name for a in aps_], "downlink": [a.downlink_bps for a in aps_],
                                       "uplink": [a.uplink_bps for a in aps_], "duplex": [a.duplex for a in aps_]}),
                         self._tmp / f"aps{self._ext}")
        meta = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "n_devices": self._n,
            "units": dict(BASE_UNITS),
            "periods": {k: periods.get(k) for k in _PERIOD_KINDS},
            "provenance": _jsonable(self._meta),
        }
        (self._tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n")


def _write_table(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if path.suffix == ".parquet":
        pq.write_table(table, str(path), compression=PARQUET_COMPRESSION)
    else:
        # Arrow's writer prints the shortest decimal that round-trips each double (write -> read is
        # exact) and is several times faster than DataFrame.to_csv; NaN becomes an empty field.
        pa_csv.write_csv(table, str(path), pa_csv.WriteOptions(quoting_style="needed"))


def _jsonable(obj: Any) -> Any:
    """Provenance must survive JSON: numpy scalars become Python numbers, tuples lists."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def convert_directory(source: str | os.PathLike, target: str | os.PathLike, *, format: str | None = None) -> Path:
    """Rewrite trace directory ``source`` at ``target`` in ``format`` (default: the one ``source`` is not in).

    The source is read and validated in full (:func:`read_population`), so the target holds base
    units and drops columns the format does not define; series values are exactly those read.

    Raises:
        TraceError: anything :func:`read_population` or :func:`write_population` raises.
    """
    fmt = format or ("parquet" if table_format(source) == "csv" else "csv")
    if fmt not in TABLE_FORMATS:
        raise TraceError(f"unknown trace table format {fmt!r} (known: {', '.join(TABLE_FORMATS)})")
    return write_population(read_population(source), target, format=fmt)


# --------------------------------------------------------------------------------------------------
# reading


def read_population(directory: str | os.PathLike) -> Population:
    """Read and validate a trace directory (CSV or Parquet tables); all quantities converted to base units.

    Raises:
        TraceError: the first problem found, naming the file, the device (or library series), the field
            and the line (CSV) or row (Parquet).
    """
    root = Path(directory)
    if not root.is_dir():
        raise TraceError(f"{root}: not a trace directory (does not exist or is not a directory)")
    meta = _read_meta(root)
    units = meta["units"]
    tconv = convert(1.0, "time", units["time"], where="meta.json: units.time")
    devices, dev_src = _read_devices(root)
    ids = devices["device_id"].tolist()
    index = pd.Index(ids)
    library = _read_library(root, meta, units, tconv)

    series: dict[str, list] = {}
    for kind in _KINDS:
        factor = convert(1.0, kind, units[kind], where=f"meta.json: units.{kind}")
        sids, offset, scale = _references(devices, dev_src, kind, library.get(kind, {}), tconv)
        needed = np.ones(len(ids), dtype=bool) if sids is None else np.array([s is None for s in sids], dtype=bool)
        periods = _periods_for(kind, devices, meta, tconv)
        if sids is not None:
            bad = ~needed & ~np.isnan(periods) & (f"{kind}_period" in devices.columns)
            if bad.any():
                r = int(np.argmax(bad))
                raise TraceError(f"{dev_src.name}: device {ids[r]!r}, field '{kind}_period': the device replays library "
                                 f"series {sids[r]!r}, whose period (library/series) applies; leave it blank ({dev_src.at(r)})")
        path = _table_path(root, kind)
        if path is None:
            if needed.any():
                raise TraceError(f"{root / _SERIES_FILES[kind]}: missing")
            own: list = [None] * len(ids)
        else:
            src = _Src(path, path.name, f"{dev_src.name}")
            own = _read_series(src, index, needed, periods, factor, tconv, sids, kind)
        if sids is None and offset is None:
            series[kind] = own
            continue
        series[kind] = _with_references(own, sids, offset, scale, library.get(kind, {}))

    avail_path = _table_path(root, "availability")
    if avail_path is not None:
        periods = _periods_for("availability", devices, meta, tconv)
        availability = _read_availability(_Src(avail_path, avail_path.name, dev_src.name), index, periods, tconv)
    else:
        availability = [Availability.always()] * len(ids)

    access_points = _read_access_points(root, devices, dev_src, units)
    ram = devices["ram"].to_numpy(float) * convert(1.0, "ram", units["ram"], where="meta.json: units.ram")
    lat = devices["latency"].to_numpy(float) * convert(1.0, "latency", units["latency"], where="meta.json: units.latency")
    types = devices["device_type"].tolist()
    aps = devices["ap"].tolist()
    traces = tuple(
        DeviceTrace(
            device_id=ids[i],
            device_type=types[i],
            compute_flops=series["compute"][i],
            down_bps=series["downlink"][i],
            up_bps=series["uplink"][i],
            latency_s=float(lat[i]),
            ram_bytes=float(ram[i]),
            availability=availability[i],
            ap=aps[i],
        )
        for i in range(len(ids))
    )
    population = Population(traces, dict(meta.get("provenance") or {}), access_points, library)
    warn_zero_rates(population, root, files=True)
    return population


# --------------------------------------------------------------------------------------------------
# zero-rate series


_ZERO_CONSEQUENCE = {
    "compute": "its training can never finish",
    "downlink": "its download can never finish",
    "uplink": "its upload can never finish",
}


def zero_rate_series(population: Population) -> dict[str, list[DeviceTrace]]:
    """Series kind (``compute``, ``downlink``, ``uplink``) -> the devices whose rate is 0 over the whole period.

    Such a device is legal (its work simply never finishes) but almost always a mistake in the
    trace: a round that waits for it can never close.
    """
    out: dict[str, list[DeviceTrace]] = {}
    for kind, attr in _SERIES_ATTR.items():
        zero = [d for d in population.devices if _all_zero(getattr(d, attr))]
        if zero:
            out[kind] = zero
    return out


def warn_zero_rates(population: Population, source: str | os.PathLike, *, files: bool = False, show: int = 10) -> None:
    """Issue one :class:`~simfed.errors.SimfedWarning` per series kind that has zero-rate devices.

    The message names ``source`` (with ``files``, the series file inside that trace directory: the
    devices' own series file, or ``library/<kind>`` for devices replaying a library series),
    the series, up to ``show`` device ids and the period, e.g. ``traces/downlink.csv: device 'd0'
    has a zero downlink rate over the whole period (10 s): its download can never finish``.
    """
    for kind, devs in zero_rate_series(population).items():
        attr = _SERIES_ATTR[kind]
        if not files:
            groups = {str(source): devs}
        else:
            root = Path(source)
            groups = {}
            for d in devs:
                s = getattr(d, attr)
                lib = type(s) is SeriesRef and s.series_id is not None
                path = (_table_path(root / LIBRARY_DIR, kind) if lib else _table_path(root, kind)) or root / _SERIES_FILES[kind]
                groups.setdefault(str(path), []).append(d)
        for where, group in groups.items():
            _warn_zero(kind, where, [(d.device_id, getattr(d, attr).period_s) for d in group], show)


def _warn_zero(kind: str, where: str, found: list[tuple[str, float]], show: int = 10) -> None:
    from simfed.errors import SimfedWarning

    names = ", ".join(repr(i) for i, _ in found[:show]) + (f" and {len(found) - show} more" if len(found) > show else "")
    periods = sorted({p for _, p in found})
    period = f"{periods[0]:g} s" if len(periods) == 1 else f"{periods[0]:g}-{periods[-1]:g} s"
    who = f"device {names} has" if len(found) == 1 else f"devices {names} have"
    warnings.warn(f"{where}: {who} a zero {kind} rate over the whole period ({period}): {_ZERO_CONSEQUENCE[kind]}",
                  SimfedWarning, stacklevel=4)


def _read_meta(root: Path) -> dict:
    path = root / "meta.json"
    if not path.is_file():
        raise TraceError(f"{path}: missing (every trace directory needs meta.json)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise TraceError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise TraceError(f"{path}: must hold a JSON object")
    if meta.get("format") != FORMAT_NAME:
        raise TraceError(f"{path}: key 'format' must be {FORMAT_NAME!r}, got {meta.get('format')!r}")
    if meta.get("version") != FORMAT_VERSION:
        raise TraceError(f"{path}: unsupported format version {meta.get('version')!r} (this simfed reads {FORMAT_VERSION})")
    units = meta.get("units")
    if not isinstance(units, dict):
        raise TraceError(f"{path}: key 'units' must be an object mapping quantity to unit")
    for q in UNITS:
        if q not in units:
            raise TraceError(f"{path}: units.{q} is missing (declare e.g. {BASE_UNITS[q]!r})")
        convert(1.0, q, units[q], where=f"{path}: units.{q}")
    unknown = set(units) - set(UNITS)
    if unknown:
        raise TraceError(f"{path}: units has unknown quantity {sorted(unknown)[0]!r} (known: {', '.join(UNITS)})")
    periods = meta.get("periods", {})
    if not isinstance(periods, dict):
        raise TraceError(f"{path}: key 'periods' must be an object")
    return meta


@dataclass(frozen=True)
class _Src:
    """A table being read, for error messages: its path, its name as shown, and the table its keys must be in."""

    path: Path
    name: str  # "downlink.csv", "library/downlink.parquet"
    keys_in: str = "devices.csv"  # where the row keys are declared
    key: str = "device_id"  # the column naming the row's owner
    who: str = "device"

    def at(self, r: int) -> str:
        """Where data row ``r`` (0-based) is: its line in a CSV file (header = line 1), its row in a Parquet file."""
        return f"row {r + 1}" if self.path.suffix == ".parquet" else f"line {r + 2}"


def _read_table(path: Path, columns: list[str]) -> pd.DataFrame:
    if not path.is_file():
        raise TraceError(f"{path}: missing")
    if path.suffix == ".parquet":
        try:
            table = pq.read_table(str(path))
        except (pa.ArrowException, OSError) as exc:
            raise TraceError(f"{path}: cannot read as Parquet ({exc})") from None
        for i, name in enumerate(table.column_names):
            if name in _TEXT_COLUMNS and table.schema.field(i).type != pa.string():
                try:
                    table = table.set_column(i, name, pc.cast(table.column(i), pa.string()))
                except pa.ArrowException as exc:
                    raise TraceError(f"{path.name}: column {name!r} cannot be read as text ({exc})") from None
        frame = table.to_pandas()
    else:
        # Arrow's reader is several times faster than pandas' on million-row series files. Identifiers
        # stay strings ("007" is not 7); only an empty field is missing ("NA" is a valid device id).
        options = pa_csv.ConvertOptions(
            column_types={c: pa.string() for c in _TEXT_COLUMNS},
            null_values=[""],
            strings_can_be_null=True,
        )
        try:
            frame = pa_csv.read_csv(str(path), convert_options=options).to_pandas()
        except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
            raise TraceError(f"{path}: cannot parse as CSV ({exc})") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise TraceError(f"{path}: missing column {missing[0]!r} (has: {', '.join(map(str, frame.columns))})")
    return frame


def _numeric(frame: pd.DataFrame, col: str, src: _Src) -> np.ndarray:
    """A column as floats; 'inf' is allowed, text and blanks are errors."""
    values = pd.to_numeric(frame[col], errors="coerce").to_numpy(float)
    bad = np.isnan(values)
    if bad.any():
        r = int(np.argmax(bad))
        did = frame[src.key].iloc[r] if src.key in frame.columns else "?"
        cell = frame[col].iloc[r]
        cell = cell.item() if isinstance(cell, np.generic) else cell  # show nan, not np.float64(nan)
        raise TraceError(f"{src.name}: {src.who} {did!r}, field {col!r}: not a number ({cell!r}) at {src.at(r)}")
    return values


def _read_devices(root: Path) -> tuple[pd.DataFrame, _Src]:
    path = _table_path(root, "devices") or root / "devices.csv"
    src = _Src(path, path.name)
    frame = _read_table(path, _DEVICE_COLUMNS)
    if len(frame) == 0:
        raise TraceError(f"{path.name}: no devices")
    ids = frame["device_id"]
    if ids.isna().any():
        r = int(np.argmax(ids.isna().to_numpy()))
        raise TraceError(f"{path.name}: field 'device_id' is empty at {src.at(r)}")
    dup = ids.duplicated()
    if dup.any():
        r = int(np.argmax(dup.to_numpy()))
        raise TraceError(f"{path.name}: device {ids.iloc[r]!r} appears twice ({src.at(r)})")
    frame["device_type"] = frame["device_type"].fillna("")
    frame["ap"] = frame["ap"].fillna("") if "ap" in frame.columns else ""  # blank: a private link
    for col in ("ram", "latency"):
        v = _numeric(frame, col, src)
        bad = ~np.isfinite(v) | (v < 0)
        if bad.any():
            r = int(np.argmax(bad))
            raise TraceError(
                f"{path.name}: device {ids.iloc[r]!r}, field {col!r}: must be finite and >= 0, "
                f"got {float(v[r])!r} ({src.at(r)})"
            )
        frame[col] = v
    for kind in _PERIOD_KINDS:
        col = f"{kind}_period"
        if col in frame.columns:  # blank = not given for this device
            v = pd.to_numeric(frame[col], errors="coerce").to_numpy(float)
            bad = np.isnan(v) & frame[col].notna().to_numpy() | (v <= 0)
            if bad.any():
                r = int(np.argmax(bad))
                raise TraceError(
                    f"{path.name}: device {ids.iloc[r]!r}, field {col!r}: must be a positive number or blank, "
                    f"got {frame[col].iloc[r]!r} ({src.at(r)})"
                )
            frame[col] = v
    return frame, src


def _optional_number(frame: pd.DataFrame, col: str, src: _Src, blank: float, ok, need: str) -> np.ndarray:
    """A column of numbers where blank means ``blank``; ``ok(values)`` marks the valid ones."""
    raw = frame[col]
    v = pd.to_numeric(raw, errors="coerce").to_numpy(float, copy=True)
    given = raw.notna().to_numpy()
    with np.errstate(invalid="ignore"):
        bad = given & (np.isnan(v) | ~ok(v))
    if bad.any():
        r = int(np.argmax(bad))
        raise TraceError(f"{src.name}: device {frame[src.key].iloc[r]!r}, field {col!r}: must be {need} or blank, "
                         f"got {raw.iloc[r]!r} ({src.at(r)})")
    v[~given] = blank
    return v


def _references(devices: pd.DataFrame, src: _Src, kind: str, library: dict[str, Series], tconv: float):
    """The ``<kind>_series``, ``<kind>_offset`` (s) and ``<kind>_scale`` columns of devices.csv (None: no column)."""
    col, ocol, scol = f"{kind}_series", f"{kind}_offset", f"{kind}_scale"
    sids = None
    if col in devices.columns:
        raw = devices[col]
        given = raw.notna().to_numpy()
        sids = [s if g else None for s, g in zip(raw.tolist(), given)]
        if given.any():
            known = pd.Series(raw.to_numpy()[given]).isin(list(library)).to_numpy()
            if not known.all():
                r = int(np.flatnonzero(given)[int(np.argmax(~known))])
                have = f"library/series has no {kind} series of that name" if library else \
                    f"the directory has no {kind} library (library/series.csv)"
                raise TraceError(f"{src.name}: device {devices['device_id'].iloc[r]!r}, field {col!r}: library series "
                                 f"{raw.iloc[r]!r} is unknown: {have} ({src.at(r)})")
    offset = _optional_number(devices, ocol, src, 0.0, lambda v: np.isfinite(v) & (v >= 0), "a finite time >= 0") * tconv \
        if ocol in devices.columns else None
    scale = _optional_number(devices, scol, src, 1.0, lambda v: np.isfinite(v) & (v > 0), "a finite number > 0") \
        if scol in devices.columns else None
    return sids, offset, scale


def _with_references(own: list, sids: list | None, offset: np.ndarray | None, scale: np.ndarray | None,
                     library: dict[str, Series]) -> list:
    """Each device's series: its library series or its own rows, through its (validated) offset and scale."""
    from simfed.timing.packed import PackedSeries

    n = len(own)
    off = offset if offset is not None else np.zeros(n)
    sc = scale if scale is not None else np.ones(n)
    bases = [library[sid] if sid is not None else s for s, sid in zip(own, sids or [None] * n)]
    shifted = np.array([sid is not None for sid in (sids or [None] * n)], dtype=bool) | (off != 0.0) | (sc != 1.0)
    pos = np.flatnonzero(shifted)
    if pos.size == 0:
        return bases
    # c0 = base.cumulative(offset) for every reference at once (the packed replay equals the scalar one)
    packed = PackedSeries.from_series([bases[p] for p in pos.tolist()])
    c0 = packed._base_cumulative(packed.base, off[pos]).tolist()
    out = list(bases)
    for q, p in enumerate(pos.tolist()):
        sid = sids[p] if sids is not None else None
        out[p] = SeriesRef._trusted(bases[p], float(off[p]), float(sc[p]), sid, c0[q])
    return out


def _read_library(root: Path, meta: dict, units: dict, tconv: float) -> dict[str, dict[str, Series]]:
    """``library/series`` (``kind, series_id, period``) and ``library/<kind>`` (``series_id, t, rate``); {} if absent."""
    lib = root / LIBRARY_DIR
    if not lib.is_dir():
        return {}
    index_path = _table_path(lib, "series")
    if index_path is None:
        stray = [p for p in (_table_path(lib, k) for k in _KINDS) if p is not None]
        if stray:
            raise TraceError(f"{lib / 'series.csv'}: missing (the index of the library series in {LIBRARY_DIR}/{stray[0].name})")
        return {}
    src = _Src(index_path, f"{LIBRARY_DIR}/{index_path.name}", key="series_id", who="series")
    frame = _read_table(index_path, ["kind", "series_id", "period"])
    kinds = frame["kind"].fillna("").to_numpy(object)
    bad = ~np.isin(kinds, _KINDS)
    if bad.any():
        r = int(np.argmax(bad))
        raise TraceError(f"{src.name}: field 'kind' must be one of {', '.join(_KINDS)}, got {frame['kind'].iloc[r]!r} ({src.at(r)})")
    sids = frame["series_id"]
    if sids.isna().any():
        r = int(np.argmax(sids.isna().to_numpy()))
        raise TraceError(f"{src.name}: field 'series_id' is empty at {src.at(r)}")
    dup = pd.DataFrame({"k": kinds, "s": sids.to_numpy(object)}).duplicated().to_numpy()
    if dup.any():
        r = int(np.argmax(dup))
        raise TraceError(f"{src.name}: {kinds[r]} series {sids.iloc[r]!r} appears twice ({src.at(r)})")
    raw = frame["period"]
    period = pd.to_numeric(raw, errors="coerce").to_numpy(float)
    with np.errstate(invalid="ignore"):
        bad = raw.notna().to_numpy() & (np.isnan(period) | ~(period > 0) | ~np.isfinite(period))
    if bad.any():
        r = int(np.argmax(bad))
        raise TraceError(f"{src.name}: series {sids.iloc[r]!r}, field 'period': must be a positive finite number or blank, "
                         f"got {raw.iloc[r]!r} ({src.at(r)})")
    out: dict[str, dict[str, Series]] = {}
    for kind in _KINDS:
        mine = kinds == kind
        path = _table_path(lib, kind)
        if not mine.any():
            if path is not None:  # rows of series the index does not list
                _read_series(_Src(path, f"{LIBRARY_DIR}/{path.name}", src.name, "series_id", "series"),
                             pd.Index([]), np.zeros(0, bool), np.zeros(0), 1.0, tconv, None, kind)
            continue
        if path is None:
            raise TraceError(f"{lib / (kind + '.csv')}: missing (library/series lists {kind} series)")
        names = sids.to_numpy(object)[mine].tolist()
        per = period[mine] * tconv
        default = (meta.get("periods") or {}).get(kind)
        if default is not None and np.isnan(per).any():
            per[np.isnan(per)] = float(default) * tconv
        factor = convert(1.0, kind, units[kind], where=f"meta.json: units.{kind}")
        series = _read_series(_Src(path, f"{LIBRARY_DIR}/{path.name}", src.name, "series_id", "series"),
                              pd.Index(names), np.ones(len(names), bool), per, factor, tconv, None, kind)
        out[kind] = dict(zip(names, series))
    return out


def _read_access_points(root: Path, devices: pd.DataFrame, dev_src: _Src, units: dict) -> dict[str, AccessPoint]:
    """``aps.csv`` (``ap, downlink, uplink, duplex``; capacities in the directory's downlink/uplink units),
    required when a device names an access point. ``duplex`` is ``full`` or ``half`` (then ``uplink`` may be
    blank: one capacity, ``downlink``, serves both directions)."""
    path = _table_path(root, "aps") or root / "aps.csv"
    used = sorted(set(devices["ap"].tolist()) - {""})
    if not path.is_file():
        if used:
            raise TraceError(f"{dev_src.path}: device {devices['device_id'][devices['ap'] == used[0]].iloc[0]!r} "
                             f"is on access point {used[0]!r} but {path.name} is missing")
        return {}
    src = _Src(path, path.name)
    frame = _read_table(path, ["ap", "downlink", "uplink", "duplex"])
    down_f = convert(1.0, "downlink", units["downlink"], where="meta.json: units.downlink")
    up_f = convert(1.0, "uplink", units["uplink"], where="meta.json: units.uplink")
    out: dict[str, AccessPoint] = {}
    for r, row in enumerate(frame.itertuples(index=False)):
        line = f"{path.name}: {src.at(r)}"
        name = row.ap if isinstance(row.ap, str) else ""
        if not name:
            raise TraceError(f"{line}: field 'ap' is empty")
        if name in out:
            raise TraceError(f"{line}: access point {name!r} appears twice")
        duplex = row.duplex if isinstance(row.duplex, str) else ""
        if duplex not in DUPLEX_MODES:
            raise TraceError(f"{line}: access point {name!r}, field 'duplex' must be one of {', '.join(DUPLEX_MODES)}, got {row.duplex!r}")
        down = pd.to_numeric(pd.Series([row.downlink]), errors="coerce").iloc[0]
        up = pd.to_numeric(pd.Series([row.uplink]), errors="coerce").iloc[0]
        if duplex == "half" and not np.isfinite(up):
            up = down  # one shared capacity: the uplink column may be blank
        for field_, v in (("downlink", down), ("uplink", up)):
            if not (np.isfinite(v) and v > 0):
                raise TraceError(f"{line}: access point {name!r}, field {field_!r} must be a positive finite rate, got "
                                 f"{getattr(row, field_)!r}")
        out[name] = AccessPoint(name, float(down) * down_f, float(up) * up_f, duplex)
    unknown = [a for a in used if a not in out]
    if unknown:
        did = devices["device_id"][devices["ap"] == unknown[0]].iloc[0]
        raise TraceError(f"{dev_src.path}: device {did!r} names access point {unknown[0]!r}, "
                         f"which {path.name} does not declare (declared: {', '.join(sorted(out)) or 'none'})")
    return out


def _periods_for(kind: str, devices: pd.DataFrame, meta: dict, tconv: float) -> np.ndarray:
    """Per-device period in seconds: the devices.csv column wins over meta.json ``periods``.

    NaN means "not given": the series default (last time + median step) or, for availability, a
    device given only as always online.
    """
    col = f"{kind}_period"
    if col in devices.columns:
        return devices[col].to_numpy(float) * tconv
    value = (meta.get("periods") or {}).get(kind)
    if value is None:
        return np.full(len(devices), np.nan)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TraceError(f"meta.json: periods.{kind} must be a number or null, got {value!r}") from None
    if not (value > 0):
        raise TraceError(f"meta.json: periods.{kind} must be > 0, got {value!r}")
    return np.full(len(devices), value * tconv)


def _group(frame: pd.DataFrame, index: pd.Index, src: _Src, what: str, needed: np.ndarray | None = None,
           sids: list | None = None, kind: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Map rows to owner positions, reject unknown owners and owners without rows.

    With ``needed``, only those owners must have rows and the others must have none (a device that
    replays library series ``sids[d]``). Returns the stable row order grouped by owner and each
    owner's [start, end) in that order (empty for owners without rows).
    """
    ids = frame[src.key]
    if ids.isna().any():
        r = int(np.argmax(ids.isna().to_numpy()))
        raise TraceError(f"{src.name}: field {src.key!r} is empty at {src.at(r)}")
    codes = index.get_indexer(ids)
    unknown = codes < 0
    if unknown.any():
        r = int(np.argmax(unknown))
        raise TraceError(f"{src.name}: {src.who} {ids.iloc[r]!r} ({src.at(r)}) is not in {src.keys_in}")
    counts = np.bincount(codes, minlength=len(index))
    missing = counts == 0 if needed is None else (counts == 0) & needed
    if missing.any():
        d = int(np.argmax(missing))
        raise TraceError(f"{src.name}: {src.who} {index[d]!r} from {src.keys_in} has no {what} rows (empty series)")
    if needed is not None:
        stray = ~needed[codes]
        if stray.any():
            r = int(np.argmax(stray))
            sid = sids[codes[r]] if sids is not None else None
            raise TraceError(f"{src.name}: device {ids.iloc[r]!r} ({src.at(r)}) replays library series {sid!r} "
                             f"({src.keys_in} field '{kind}_series') and also has rows here; keep one")
    order = np.argsort(codes, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return order, bounds


def _read_series(src: _Src, index: pd.Index, needed: np.ndarray, periods: np.ndarray, factor: float, tconv: float,
                 sids: list | None, kind: str) -> list[Series | None]:
    """The own rows of the owners in ``index`` (devices, or library series); None where ``needed`` is False."""
    path = src.path
    frame = _read_table(path, [src.key, "t", "rate"])
    if len(frame) == 0:
        if needed.any():
            raise TraceError(f"{src.name}: no rows (every device needs a series)")
        return [None] * len(index)
    t = _numeric(frame, "t", src) * tconv
    rate = _numeric(frame, "rate", src)
    ids = frame[src.key]
    bad = ~np.isfinite(rate) | (rate < 0)
    if bad.any():
        r = int(np.argmax(bad))
        raise TraceError(
            f"{src.name}: {src.who} {ids.iloc[r]!r}, field 'rate': negative or non-finite value "
            f"{float(rate[r])!r} at {src.at(r)}"
        )
    if not np.isfinite(t).all():
        r = int(np.argmax(~np.isfinite(t)))
        raise TraceError(f"{src.name}: {src.who} {ids.iloc[r]!r}, field 't': non-finite time at {src.at(r)}")
    order, bounds = _group(frame, index, src, "rate", needed, sids, kind)
    t_sorted = t[order]
    has = bounds[1:] > bounds[:-1]  # owners with rows (all needed ones; no others)
    present = np.flatnonzero(has)
    starts = bounds[:-1][present]
    first_bad = t_sorted[starts] != 0.0
    if first_bad.any():
        r = int(order[starts[int(np.argmax(first_bad))]])
        raise TraceError(
            f"{src.name}: {src.who} {ids.iloc[r]!r}, field 't': first time must be 0, got {float(t[r])!r} ({src.at(r)})"
        )
    same_dev = np.ones(len(order), dtype=bool)
    same_dev[starts] = False
    step_bad = same_dev[1:] & (np.diff(t_sorted) <= 0) if len(order) > 1 else np.zeros(0, bool)
    if step_bad.any():
        k = int(np.argmax(step_bad)) + 1
        r = int(order[k])
        raise TraceError(
            f"{src.name}: {src.who} {ids.iloc[r]!r}, field 't': times not strictly increasing at {src.at(r)} "
            f"({float(t_sorted[k - 1])!r} then {float(t_sorted[k])!r})"
        )
    r_sorted = rate[order] * factor
    ends = bounds[1:][present] - 1  # each present owner's last row (in sorted order)
    last_t = t_sorted[ends]
    per = periods[present].copy()
    for q in np.flatnonzero(np.isnan(per)):  # the same default as Series.make: last time + median step
        d = present[q]
        tt = t_sorted[bounds[d] : bounds[d + 1]]
        per[q] = float(tt[-1] + (np.median(np.diff(tt)) if tt.size > 1 else 1.0))
    bad = ~np.isfinite(per) | ~(per > last_t)
    if bad.any():
        q = int(np.argmax(bad))
        raise TraceError(
            f"{src.name}: {src.who} {index[present[q]]!r}, field 'period': {float(per[q])!r} s must be finite and "
            f"after the last time {float(last_t[q])!r} s"
        )
    # segment durations for all owners at once: next time within the owner, or its period
    next_t = np.empty_like(t_sorted)
    next_t[:-1] = t_sorted[1:]
    next_t[ends] = per
    amounts = r_sorted * (next_t - t_sorted)
    # rows were validated above for the whole file at once; skip Series.make's per-series checks
    out: list[Series | None] = [None] * len(index)
    lo, hi = bounds[:-1], bounds[1:]
    for q, d in enumerate(present.tolist()):
        a, b = lo[d], hi[d]
        out[d] = Series._build(t_sorted[a:b], r_sorted[a:b], float(per[q]), amounts[a:b])
    return out


def _read_availability(src: _Src, index: pd.Index, periods: np.ndarray, tconv: float) -> list[Availability]:
    path = src.path
    frame = _read_table(path, ["device_id", "start", "end"])
    start = _numeric(frame, "start", src) * tconv
    end = _numeric(frame, "end", src) * tconv
    order, bounds = _group(frame, index, src, "availability")
    ids = frame["device_id"]
    bad = ~np.isfinite(start) | (start < 0) | (end <= start)
    if bad.any():
        r = int(np.argmax(bad))
        raise TraceError(
            f"{src.name}: device {ids.iloc[r]!r}, field 'start'/'end': bad interval [{float(start[r])!r}, {float(end[r])!r}) "
            f"at {src.at(r)} (need 0 <= start < end)"
        )
    s_sorted, e_sorted = start[order], end[order]
    same_dev = np.ones(len(order), dtype=bool)
    same_dev[bounds[:-1]] = False
    overlap = same_dev[1:] & (s_sorted[1:] < e_sorted[:-1]) if len(order) > 1 else np.zeros(0, bool)
    if overlap.any():
        k = int(np.argmax(overlap)) + 1
        r = int(order[k])
        raise TraceError(
            f"{src.name}: device {ids.iloc[r]!r}, field 'start': intervals not sorted or overlapping at {src.at(r)} "
            f"(starts at {float(s_sorted[k])!r} before the previous interval ends at {float(e_sorted[k - 1])!r})"
        )
    names = index.tolist()
    out = []
    always = Availability.always()
    s_list, e_list = s_sorted.tolist(), e_sorted.tolist()
    for d in range(len(names)):
        a, b = int(bounds[d]), int(bounds[d + 1])
        if math.isinf(e_list[b - 1]):
            if b - a == 1 and s_list[a] == 0.0:
                out.append(always)
                continue
            raise TraceError(f"{src.name}: device {names[d]!r}, field 'end': 'inf' is only allowed as the single interval [0, inf) (always online)")
        p = float(periods[d])
        if math.isnan(p):
            raise TraceError(
                f"{src.name}: device {names[d]!r}, field 'period': availability needs a period "
                "(meta.json periods.availability or devices.csv availability_period)"
            )
        if not (math.isfinite(p) and e_list[b - 1] <= p):
            raise TraceError(f"{src.name}: device {names[d]!r}, field 'end': interval ends at {e_list[b - 1]!r} s, after the period {p!r} s")
        # sorted, disjoint and inside [0, period] were checked above for all devices at once
        out.append(Availability(tuple(s_list[a:b]), tuple(e_list[a:b]), p))
    return out
