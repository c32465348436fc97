"""The on-disk trace format: one directory of columnar CSV files plus ``meta.json``.

A population of device traces (:class:`~simfed.timing.traces.Population`) is stored as

- ``meta.json``     format name and version, the unit of every quantity, default periods, provenance;
- ``devices.csv``   ``device_id, device_type, ram, latency`` (+ optional per-device period columns);
- ``compute.csv``   ``device_id, t, rate``  effective training throughput;
- ``downlink.csv``  ``device_id, t, rate``  downlink bandwidth;
- ``uplink.csv``    ``device_id, t, rate``  uplink bandwidth;
- ``availability.csv`` (optional) ``device_id, start, end`` online intervals.

Column names carry no unit: units are declared once in ``meta.json`` and converted on load, so a
user can drop in a trace measured in GFLOP/s, Mbit/s, GB and ms without rewriting it.
:func:`write_population` always writes base units (FLOP/s, bytes/s, bytes, seconds) with
round-trip float formatting, so write → read gives back identical series. ``traces/SCHEMA.md`` in
the repository is the user-facing description of this format.

Validation fails on the first problem with one :class:`~simfed.timing.traces.TraceError` naming
the file, the device, the field and the line. Reading is vectorised with pandas/numpy (grouping
by device with one stable sort), so 10,000-device populations load in about a second.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv

from simfed.timing.traces import DUPLEX_MODES, AccessPoint, Availability, DeviceTrace, Population, Series, TraceError

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "UNITS", "write_population", "read_population", "convert",
           "zero_rate_series", "warn_zero_rates"]

FORMAT_NAME = "simfed-traces"
FORMAT_VERSION = 1

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
_SERIES_FILES = {"compute": "compute.csv", "downlink": "downlink.csv", "uplink": "uplink.csv"}
_SERIES_ATTR = {"compute": "compute_flops", "downlink": "down_bps", "uplink": "up_bps"}
_DEVICE_COLUMNS = ["device_id", "device_type", "ram", "latency"]
_PERIOD_KINDS = ["compute", "downlink", "uplink", "availability"]


def convert(value, quantity: str, unit: str, *, where: str = "meta.json"):
    """Convert ``value`` (scalar or array) from ``unit`` to the base unit of ``quantity``."""
    table, _ = UNITS[quantity]
    if unit not in table:
        raise TraceError(f"{where}: unknown unit {unit!r} for {quantity} (known: {', '.join(table)})")
    return value * table[unit]


# --------------------------------------------------------------------------------------------------
# writing


def write_population(population: Population, directory: str | os.PathLike) -> Path:
    """Write ``population`` to ``directory`` atomically (a sibling temp dir, then a rename).

    An existing trace directory (one with ``meta.json``) is replaced; any other non-empty
    directory is refused rather than clobbered.
    """
    target = Path(directory)
    if len(population) == 0:
        raise TraceError(f"{target}: refusing to write a population with no devices")
    if target.exists() and any(target.iterdir()) and not (target / "meta.json").is_file():
        raise TraceError(f"{target}: exists and is not a trace directory (no meta.json); not overwriting")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a trace directory is an ordinary, readable one
        _write_files(population, tmp)
        _swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _swap_in(tmp: Path, target: Path) -> None:
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rmdir(old)
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def _common_or_none(values: list[float]) -> float | None:
    first = values[0]
    return first if all(v == first for v in values) else None


def _write_files(pop: Population, out: Path) -> None:
    devs = pop.devices
    ids = [d.device_id for d in devs]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise TraceError(f"population: duplicate device_id {dup!r}")
    devices = pd.DataFrame(
        {
            "device_id": ids,
            "device_type": [d.device_type for d in devs],
            "ram": [float(d.ram_bytes) for d in devs],
            "latency": [float(d.latency_s) for d in devs],
        }
    )
    if any(d.ap for d in devs):
        devices["ap"] = [d.ap for d in devs]
    periods: dict[str, float | None] = {}
    for kind in ("compute", "downlink", "uplink"):
        per = [getattr(d, _SERIES_ATTR[kind]).period_s for d in devs]
        periods[kind] = _common_or_none(per)
        if periods[kind] is None:
            devices[f"{kind}_period"] = per
    any_avail = not all(d.availability.is_always for d in devs)
    if any_avail:
        # always-online devices are written as [0, inf) and need no period
        per = [d.availability.period_s for d in devs]
        periods["availability"] = _common_or_none([p for p in per if math.isfinite(p)])
        if periods["availability"] is None:
            devices["availability_period"] = [p if math.isfinite(p) else np.nan for p in per]
    _write_csv(devices, out / "devices.csv")
    for kind, fname in _SERIES_FILES.items():
        series = [getattr(d, _SERIES_ATTR[kind]) for d in devs]
        lens = [s.times_s.size for s in series]
        frame = pd.DataFrame(
            {
                "device_id": np.repeat(np.array(ids, dtype=object), lens),
                "t": np.concatenate([s.times_s for s in series]),
                "rate": np.concatenate([s.values for s in series]),
            }
        )
        _write_csv(frame, out / fname)
    if any_avail:
        rows_id, rows_s, rows_e = [], [], []
        for d in devs:
            a = d.availability
            if a.is_always:
                rows_id.append(d.device_id), rows_s.append(0.0), rows_e.append(math.inf)
            else:
                rows_id += [d.device_id] * len(a.starts)
                rows_s += list(a.starts)
                rows_e += list(a.ends)
        _write_csv(pd.DataFrame({"device_id": rows_id, "start": rows_s, "end": rows_e}), out / "availability.csv")
    if pop.access_points:
        aps = [pop.access_points[name] for name in sorted(pop.access_points)]
        _write_csv(pd.DataFrame({"ap": [a.name for a in aps], "downlink": [a.downlink_bps for a in aps],
                                 "uplink": [a.uplink_bps for a in aps], "duplex": [a.duplex for a in aps]}),
                   out / "aps.csv")
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "n_devices": len(devs),
        "units": dict(BASE_UNITS),
        "periods": {k: periods.get(k) for k in _PERIOD_KINDS},
        "provenance": _jsonable(pop.meta),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n")


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    # Arrow's writer prints the shortest decimal that round-trips each double (write -> read is
    # exact) and is several times faster than DataFrame.to_csv; NaN becomes an empty field.
    options = pa_csv.WriteOptions(quoting_style="needed")
    pa_csv.write_csv(pa.Table.from_pandas(frame, preserve_index=False), str(path), options)


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


# --------------------------------------------------------------------------------------------------
# reading


def read_population(directory: str | os.PathLike) -> Population:
    """Read and validate a trace directory; all quantities converted to base units."""
    root = Path(directory)
    if not root.is_dir():
        raise TraceError(f"{root}: not a trace directory (does not exist or is not a directory)")
    meta = _read_meta(root)
    units = meta["units"]
    tconv = convert(1.0, "time", units["time"], where="meta.json: units.time")
    devices = _read_devices(root)
    ids = devices["device_id"].tolist()
    index = pd.Index(ids)

    series: dict[str, list[Series]] = {}
    for kind, fname in _SERIES_FILES.items():
        periods = _periods_for(kind, devices, meta, tconv)
        factor = convert(1.0, kind, units[kind], where=f"meta.json: units.{kind}")
        series[kind] = _read_series(root / fname, index, periods, factor, tconv)

    avail_path = root / "availability.csv"
    if avail_path.is_file():
        periods = _periods_for("availability", devices, meta, tconv)
        availability = _read_availability(avail_path, index, periods, tconv)
    else:
        availability = [Availability.always()] * len(ids)

    access_points = _read_access_points(root, devices, units)
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
    population = Population(traces, dict(meta.get("provenance") or {}), access_points)
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
        zero = [d for d in population.devices if not (getattr(d, attr).values > 0).any()]
        if zero:
            out[kind] = zero
    return out


def warn_zero_rates(population: Population, source: str | os.PathLike, *, files: bool = False, show: int = 10) -> None:
    """Issue one :class:`~simfed.errors.SimfedWarning` per series kind that has zero-rate devices.

    The message names ``source`` (with ``files``, the series file inside that trace directory),
    the series, up to ``show`` device ids and the period, e.g. ``traces/downlink.csv: device 'd0'
    has a zero downlink rate over the whole period (10 s): its download can never finish``.
    """
    from simfed.errors import SimfedWarning

    for kind, devs in zero_rate_series(population).items():
        where = Path(source) / _SERIES_FILES[kind] if files else source
        names = ", ".join(repr(d.device_id) for d in devs[:show]) + (f" and {len(devs) - show} more" if len(devs) > show else "")
        periods = sorted({getattr(d, _SERIES_ATTR[kind]).period_s for d in devs})
        period = f"{periods[0]:g} s" if len(periods) == 1 else f"{periods[0]:g}-{periods[-1]:g} s"
        who = f"device {names} has" if len(devs) == 1 else f"devices {names} have"
        warnings.warn(f"{where}: {who} a zero {kind} rate over the whole period ({period}): {_ZERO_CONSEQUENCE[kind]}",
                      SimfedWarning, stacklevel=3)


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


def _read_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    if not path.is_file():
        raise TraceError(f"{path}: missing")
    # Arrow's reader is several times faster than pandas' on million-row series files. Identifiers
    # stay strings ("007" is not 7); only an empty field is missing ("NA" is a valid device id).
    options = pa_csv.ConvertOptions(
        column_types={"device_id": pa.string(), "device_type": pa.string(), "ap": pa.string(), "duplex": pa.string()},
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


def _numeric(frame: pd.DataFrame, col: str, path: Path) -> np.ndarray:
    """A column as floats; 'inf' is allowed, text and blanks are errors."""
    values = pd.to_numeric(frame[col], errors="coerce").to_numpy(float)
    bad = np.isnan(values)
    if bad.any():
        r = int(np.argmax(bad))
        did = frame["device_id"].iloc[r] if "device_id" in frame.columns else "?"
        cell = frame[col].iloc[r]
        cell = cell.item() if isinstance(cell, np.generic) else cell  # show nan, not np.float64(nan)
        raise TraceError(f"{path.name}: device {did!r}, field {col!r}: not a number ({cell!r}) at line {r + 2}")
    return values


def _read_devices(root: Path) -> pd.DataFrame:
    path = root / "devices.csv"
    frame = _read_csv(path, _DEVICE_COLUMNS)
    if len(frame) == 0:
        raise TraceError(f"{path.name}: no devices")
    ids = frame["device_id"]
    if ids.isna().any():
        r = int(np.argmax(ids.isna().to_numpy()))
        raise TraceError(f"{path.name}: field 'device_id' is empty at line {r + 2}")
    dup = ids.duplicated()
    if dup.any():
        r = int(np.argmax(dup.to_numpy()))
        raise TraceError(f"{path.name}: device {ids.iloc[r]!r} appears twice (line {r + 2})")
    frame["device_type"] = frame["device_type"].fillna("")
    frame["ap"] = frame["ap"].fillna("") if "ap" in frame.columns else ""  # blank: a private link
    for col in ("ram", "latency"):
        v = _numeric(frame, col, path)
        bad = ~np.isfinite(v) | (v < 0)
        if bad.any():
            r = int(np.argmax(bad))
            raise TraceError(
                f"{path.name}: device {ids.iloc[r]!r}, field {col!r}: must be finite and >= 0, "
                f"got {float(v[r])!r} (line {r + 2})"
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
                    f"got {frame[col].iloc[r]!r} (line {r + 2})"
                )
            frame[col] = v
    return frame


def _read_access_points(root: Path, devices: pd.DataFrame, units: dict) -> dict[str, AccessPoint]:
    """``aps.csv`` (``ap, downlink, uplink, duplex``; capacities in the directory's downlink/uplink units),
    required when a device names an access point. ``duplex`` is ``full`` or ``half`` (then ``uplink`` may be
    blank: one capacity, ``downlink``, serves both directions)."""
    path = root / "aps.csv"
    used = sorted(set(devices["ap"].tolist()) - {""})
    if not path.is_file():
        if used:
            raise TraceError(f"{root / 'devices.csv'}: device {devices['device_id'][devices['ap'] == used[0]].iloc[0]!r} "
                             f"is on access point {used[0]!r} but {path.name} is missing")
        return {}
    frame = _read_csv(path, ["ap", "downlink", "uplink", "duplex"])
    down_f = convert(1.0, "downlink", units["downlink"], where="meta.json: units.downlink")
    up_f = convert(1.0, "uplink", units["uplink"], where="meta.json: units.uplink")
    out: dict[str, AccessPoint] = {}
    for r, row in enumerate(frame.itertuples(index=False)):
        line = f"{path.name}: line {r + 2}"
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
        raise TraceError(f"{root / 'devices.csv'}: device {did!r} names access point {unknown[0]!r}, "
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


def _group(frame: pd.DataFrame, index: pd.Index, path: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Map rows to device positions, reject unknown devices and devices without rows.

    Returns the stable row order grouped by device and each device's [start, end) in that order.
    """
    ids = frame["device_id"]
    if ids.isna().any():
        r = int(np.argmax(ids.isna().to_numpy()))
        raise TraceError(f"{path.name}: field 'device_id' is empty at line {r + 2}")
    codes = index.get_indexer(ids)
    unknown = codes < 0
    if unknown.any():
        r = int(np.argmax(unknown))
        raise TraceError(f"{path.name}: device {ids.iloc[r]!r} (line {r + 2}) is not in devices.csv")
    counts = np.bincount(codes, minlength=len(index))
    if (counts == 0).any():
        d = int(np.argmax(counts == 0))
        raise TraceError(f"{path.name}: device {index.tolist()[d]!r} from devices.csv has no {what} rows (empty series)")
    order = np.argsort(codes, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return order, bounds


def _read_series(path: Path, index: pd.Index, periods: np.ndarray, factor: float, tconv: float) -> list[Series]:
    frame = _read_csv(path, ["device_id", "t", "rate"])
    if len(frame) == 0:
        raise TraceError(f"{path.name}: no rows (every device needs a series)")
    t = _numeric(frame, "t", path) * tconv
    rate = _numeric(frame, "rate", path)
    ids = frame["device_id"]
    bad = ~np.isfinite(rate) | (rate < 0)
    if bad.any():
        r = int(np.argmax(bad))
        raise TraceError(
            f"{path.name}: device {ids.iloc[r]!r}, field 'rate': negative or non-finite value "
            f"{float(rate[r])!r} at line {r + 2}"
        )
    if not np.isfinite(t).all():
        r = int(np.argmax(~np.isfinite(t)))
        raise TraceError(f"{path.name}: device {ids.iloc[r]!r}, field 't': non-finite time at line {r + 2}")
    order, bounds = _group(frame, index, path, "rate")
    t_sorted = t[order]
    starts = bounds[:-1]
    first_bad = t_sorted[starts] != 0.0
    if first_bad.any():
        d = int(np.argmax(first_bad))
        r = int(order[starts[d]])
        raise TraceError(
            f"{path.name}: device {ids.iloc[r]!r}, field 't': first time must be 0, got {float(t[r])!r} (line {r + 2})"
        )
    same_dev = np.ones(len(order), dtype=bool)
    same_dev[starts] = False
    step_bad = same_dev[1:] & (np.diff(t_sorted) <= 0) if len(order) > 1 else np.zeros(0, bool)
    if step_bad.any():
        k = int(np.argmax(step_bad)) + 1
        r = int(order[k])
        raise TraceError(
            f"{path.name}: device {ids.iloc[r]!r}, field 't': times not strictly increasing at line {r + 2} "
            f"({float(t_sorted[k - 1])!r} then {float(t_sorted[k])!r})"
        )
    r_sorted = rate[order] * factor
    names = index.tolist()
    ends = bounds[1:] - 1  # each device's last row (in sorted order)
    last_t = t_sorted[ends]
    periods = periods.copy()
    for d in np.flatnonzero(np.isnan(periods)):  # the same default as Series.make: last time + median step
        tt = t_sorted[bounds[d] : bounds[d + 1]]
        periods[d] = float(tt[-1] + (np.median(np.diff(tt)) if tt.size > 1 else 1.0))
    bad = ~np.isfinite(periods) | ~(periods > last_t)
    if bad.any():
        d = int(np.argmax(bad))
        raise TraceError(
            f"{path.name}: device {names[d]!r}, field 'period': {float(periods[d])!r} s must be finite and "
            f"after the last time {float(last_t[d])!r} s"
        )
    # segment durations for all devices at once: next time within the device, or its period
    next_t = np.empty_like(t_sorted)
    next_t[:-1] = t_sorted[1:]
    next_t[ends] = periods
    amounts = r_sorted * (next_t - t_sorted)
    # rows were validated above for the whole file at once; skip Series.make's per-series checks
    return [
        Series._build(t_sorted[a:b], r_sorted[a:b], float(periods[d]), amounts[a:b])
        for d, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))
    ]


def _read_availability(path: Path, index: pd.Index, periods: np.ndarray, tconv: float) -> list[Availability]:
    frame = _read_csv(path, ["device_id", "start", "end"])
    start = _numeric(frame, "start", path) * tconv
    end = _numeric(frame, "end", path) * tconv
    order, bounds = _group(frame, index, path, "availability")
    ids = frame["device_id"]
    bad = ~np.isfinite(start) | (start < 0) | (end <= start)
    if bad.any():
        r = int(np.argmax(bad))
        raise TraceError(
            f"{path.name}: device {ids.iloc[r]!r}, field 'start'/'end': bad interval [{float(start[r])!r}, {float(end[r])!r}) "
            f"at line {r + 2} (need 0 <= start < end)"
        )
    s_sorted, e_sorted = start[order], end[order]
    same_dev = np.ones(len(order), dtype=bool)
    same_dev[bounds[:-1]] = False
    overlap = same_dev[1:] & (s_sorted[1:] < e_sorted[:-1]) if len(order) > 1 else np.zeros(0, bool)
    if overlap.any():
        k = int(np.argmax(overlap)) + 1
        r = int(order[k])
        raise TraceError(
            f"{path.name}: device {ids.iloc[r]!r}, field 'start': intervals not sorted or overlapping at line {r + 2} "
            f"(starts at {float(s_sorted[k])!r} before the previous interval ends at {float(e_sorted[k - 1])!r})"
        )
    names = index.tolist()
    out = []
    for d in range(len(names)):
        a, b = bounds[d], bounds[d + 1]
        where = f"{path.name}: device {names[d]!r}"
        s, e = s_sorted[a:b], e_sorted[a:b]
        if np.isinf(e[-1]):
            if b - a == 1 and s[0] == 0.0:
                out.append(Availability.always())
                continue
            raise TraceError(f"{where}, field 'end': 'inf' is only allowed as the single interval [0, inf) (always online)")
        p = float(periods[d])
        if np.isnan(p):
            raise TraceError(
                f"{where}, field 'period': availability needs a period "
                "(meta.json periods.availability or devices.csv availability_period)"
            )
        if not (math.isfinite(p) and e[-1] <= p):
            raise TraceError(f"{where}, field 'end': interval ends at {float(e[-1])!r} s, after the period {float(p)!r} s")
        # sorted, disjoint and inside [0, period] were checked above for all devices at once
        out.append(Availability(tuple(s.tolist()), tuple(e.tolist()), p))
    return out
