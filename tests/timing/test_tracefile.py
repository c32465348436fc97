"""The on-disk trace format: exact round trip, unit conversion, and one clear error per fault."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simfed.timing.tracefile import read_population, write_population
from simfed.timing.traces import Availability, DeviceTrace, Population, Series, TraceError


def small_population() -> Population:
    rng = np.random.default_rng(0)
    devs = []
    for i in range(4):
        t = np.arange(5) * 60.0
        devs.append(
            DeviceTrace(
                device_id=f"dev{i}",
                device_type="tx2" if i % 2 else "agx",
                compute_flops=Series.make(t, rng.uniform(1e11, 1e12, 5), 300.0),
                down_bps=Series.make(t, rng.uniform(1e5, 1e7, 5) / 3, 300.0),
                up_bps=Series.make(t[:3], [1e6, 0.0, 2e6], 180.0),
                latency_s=0.02 * (i + 1),
                ram_bytes=8 * 1024**3,
                availability=Availability.make([0, 100], [50, 250], 400.0) if i == 1 else Availability.always(),
            )
        )
    return Population(tuple(devs), {"generator": "test", "seed": 0})


@pytest.fixture
def trace_dir(tmp_path: Path) -> Path:
    return write_population(small_population(), tmp_path / "pop")


def test_round_trip_is_exact(trace_dir: Path):
    pop, back = small_population(), read_population(trace_dir)
    assert [d.device_id for d in back.devices] == [d.device_id for d in pop.devices]
    for a, b in zip(pop.devices, back.devices):
        assert a.device_type == b.device_type and a.latency_s == b.latency_s and a.ram_bytes == b.ram_bytes
        for attr in ("compute_flops", "down_bps", "up_bps"):
            sa, sb = getattr(a, attr), getattr(b, attr)
            np.testing.assert_array_equal(sa.times_s, sb.times_s)
            np.testing.assert_array_equal(sa.values, sb.values)
            assert sa.period_s == sb.period_s and sa._cum == sb._cum
        assert (a.availability.starts, a.availability.ends, a.availability.period_s) == (
            b.availability.starts,
            b.availability.ends,
            b.availability.period_s,
        )
    assert back.meta == {"generator": "test", "seed": 0}


def test_rewrite_replaces_atomically_and_refuses_foreign_dirs(tmp_path: Path, trace_dir: Path):
    write_population(small_population(), trace_dir)  # replacing an existing trace directory is fine
    assert read_population(trace_dir).devices[0].device_id == "dev0"
    assert not [p for p in trace_dir.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(TraceError, match="not a trace directory"):
        write_population(small_population(), foreign)
    assert (foreign / "keep.txt").read_text() == "x"


def test_declared_units_are_converted(trace_dir: Path):
    meta = json.loads((trace_dir / "meta.json").read_text())
    meta["units"].update(compute="GFLOP/s", downlink="Mbit/s", uplink="KiB/s", ram="GB", latency="ms", time="min")
    meta["periods"].update(compute=5, downlink=5, uplink=3, availability=400 / 60)
    (trace_dir / "meta.json").write_text(json.dumps(meta))
    for name in ("compute.csv", "downlink.csv", "uplink.csv"):
        df = pd.read_csv(trace_dir / name).astype({"t": float})
        df["t"] = df["t"] / 60
        df["rate"] = 2.0
        df.to_csv(trace_dir / name, index=False)
    av = pd.read_csv(trace_dir / "availability.csv").astype({"start": float, "end": float})
    av.loc[np.isfinite(av["end"]), ["start", "end"]] /= 60
    av.to_csv(trace_dir / "availability.csv", index=False)
    dv = pd.read_csv(trace_dir / "devices.csv")
    dv["ram"], dv["latency"] = 8, 20
    dv.to_csv(trace_dir / "devices.csv", index=False)
    d = read_population(trace_dir).devices[1]
    assert d.compute_flops.rate_at(0) == 2e9
    assert d.down_bps.rate_at(0) == 2e6 / 8
    assert d.up_bps.rate_at(0) == 2048.0
    assert d.compute_flops.period_s == 300.0 and d.up_bps.times_s[1] == 60.0
    assert d.ram_bytes == 8e9 and d.latency_s == pytest.approx(0.02)
    assert d.availability.period_s == pytest.approx(400.0) and d.availability.ends[1] == pytest.approx(250.0)


# --- one test per fault: each names the file, the device and the field --------------------------


def _edit_csv(path: Path, fn) -> None:
    df = pd.read_csv(path, dtype={"device_id": str}, keep_default_na=False)
    df = fn(df)
    df.to_csv(path, index=False)


def _set(df: pd.DataFrame, row: int, col: str, value) -> pd.DataFrame:
    df[col] = df[col].astype(object)
    df.loc[row, col] = value
    return df


@pytest.mark.parametrize(
    "fname, edit, pattern",
    [
        ("compute.csv", lambda df: _set(df, 2, "rate", -5.0), r"compute\.csv: device 'dev0', field 'rate': negative"),
        ("downlink.csv", lambda df: _set(df, 7, "rate", "NaN"), r"downlink\.csv: device 'dev1', field 'rate': not a number.*line 9"),
        ("uplink.csv", lambda df: _set(df, 1, "t", 500.0), r"uplink\.csv: device 'dev0', field 't': times not strictly increasing"),
        ("compute.csv", lambda df: _set(df, 5, "t", 3.0), r"compute\.csv: device 'dev1', field 't': first time must be 0"),
        ("compute.csv", lambda df: df[df.device_id != "dev2"], r"compute\.csv: device 'dev2' from devices\.csv has no rate rows"),
        ("uplink.csv", lambda df: _set(df, 0, "device_id", "ghost"), r"uplink\.csv: device 'ghost' \(line 2\) is not in devices\.csv"),
        ("compute.csv", lambda df: df.drop(columns=["rate"]), r"compute\.csv: missing column 'rate'"),
        ("devices.csv", lambda df: df.drop(columns=["ram"]), r"devices\.csv: missing column 'ram'"),
        ("devices.csv", lambda df: _set(df, 3, "latency", -1.0), r"devices\.csv: device 'dev3', field 'latency'"),
        ("devices.csv", lambda df: _set(df, 2, "device_id", "dev1"), r"devices\.csv: device 'dev1' appears twice"),
        ("availability.csv", lambda df: _set(df, 1, "end", 0.0), r"availability\.csv: device 'dev1'.*bad interval \[0\.0, 0\.0\)"),
        ("availability.csv", lambda df: _set(df, 2, "start", 20.0), r"availability\.csv: device 'dev1', field 'start': intervals not sorted or overlapping"),
        ("availability.csv", lambda df: _set(df, 2, "end", 999.0), r"availability\.csv: device 'dev1', field 'end'.*after the period"),
        ("availability.csv", lambda df: df[df.device_id != "dev3"], r"availability\.csv: device 'dev3' from devices\.csv has no availability rows"),
    ],
)
def test_each_fault_gives_one_clear_error(trace_dir: Path, fname, edit, pattern):
    _edit_csv(trace_dir / fname, edit)
    with pytest.raises(TraceError, match=pattern):
        read_population(trace_dir)


def test_empty_series_file(trace_dir: Path):
    (trace_dir / "downlink.csv").write_text("device_id,t,rate\n")
    with pytest.raises(TraceError, match=r"downlink\.csv: no rows"):
        read_population(trace_dir)


@pytest.mark.parametrize(
    "key, value, pattern",
    [
        ("units", {"compute": "furlongs/s"}, r"units\.compute.*unknown unit 'furlongs/s'"),
        ("units", {"downlink": "Mbps"}, r"units\.downlink.*unknown unit 'Mbps'"),
        ("version", 99, r"unsupported format version 99"),
        ("periods", {"compute": 120.0}, r"compute\.csv: device 'dev0', field 'period'.*after the last time 240\.0"),
    ],
)
def test_meta_faults(trace_dir: Path, key, value, pattern):
    meta = json.loads((trace_dir / "meta.json").read_text())
    if isinstance(value, dict):
        meta[key].update(value)
    else:
        meta[key] = value
    (trace_dir / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(TraceError, match=pattern):
        read_population(trace_dir)


def test_missing_files(trace_dir: Path):
    (trace_dir / "uplink.csv").unlink()
    with pytest.raises(TraceError, match=r"uplink\.csv: missing"):
        read_population(trace_dir)
    (trace_dir / "meta.json").unlink()
    with pytest.raises(TraceError, match=r"meta\.json: missing"):
        read_population(trace_dir)


def test_per_device_periods_and_always_available_without_file(tmp_path: Path):
    t = [0.0, 10.0]
    devs = tuple(
        DeviceTrace(f"d{i}", "x", Series.make(t, [1.0, 2.0], 20.0 + i), Series.constant(5.0), Series.constant(5.0), 0.0, 1.0)
        for i in range(3)
    )
    out = write_population(Population(devs), tmp_path / "p")
    assert not (out / "availability.csv").exists()
    mixed = devs[:2] + (
        DeviceTrace("a", "x", devs[0].compute_flops, devs[0].down_bps, devs[0].up_bps, 0.0, 1.0, Availability.make([1], [2], 3.0)),
        DeviceTrace("b", "x", devs[0].compute_flops, devs[0].down_bps, devs[0].up_bps, 0.0, 1.0, Availability.make([1], [2], 5.0)),
    )
    back_mixed = read_population(write_population(Population(mixed), tmp_path / "mixed"))
    assert [d.availability.period_s for d in back_mixed.devices] == [math.inf, math.inf, 3.0, 5.0]
    assert "compute_period" in pd.read_csv(out / "devices.csv").columns
    back = read_population(out)
    assert [d.compute_flops.period_s for d in back.devices] == [20.0, 21.0, 22.0]
    assert all(d.availability.is_always for d in back.devices)
    assert back.devices[2].compute_flops.finish_time(0.0, 32.0) == 21.0 and math.isfinite(back.devices[0].up_bps.mean())
