"""Importers of public trace formats: synthetic FedScale pickles and Mahimahi files built here, real
5Gophers and FLASH files read from the shared raw-trace folder (skipped when it is absent)."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simfed.timing.importers import IMPORTERS, import_traces
from simfed.timing.importers.fedscale import DEFAULT_FLOPS_PER_SAMPLE
from simfed.timing.tracefile import read_population, write_population
from simfed.timing.traces import TraceError

RAW = Path(__file__).resolve().parents[2] / ".." / "shared" / "traces" / "raw"
GOPHERS = RAW / "5gophers-v1.0" / "All-Carriers"
FLASH = RAW / "flash-device-util" / "speed_distri.json"


def _pickle(path: Path, obj) -> Path:
    path.write_bytes(pickle.dumps(obj))
    return path


@pytest.fixture
def capacity(tmp_path: Path) -> Path:
    return _pickle(
        tmp_path / "client_device_capacity",
        {1: {"computation": 162.0, "communication": 5648.109619499134}, 2: {"computation": 50.0, "communication": 1000.0}},
    )


@pytest.fixture
def behave(tmp_path: Path) -> Path:
    return _pickle(
        tmp_path / "client_behave_trace",
        {
            "a": {"duration": 300, "active": [0, 500], "inactive": [100, 700], "finish_time": 1000, "model": "CPH1801"},
            "b": {"duration": 50, "active": [900], "inactive": [1200], "finish_time": 1000, "model": "SM-G960F"},
            "c": {"duration": 0, "active": [], "inactive": [], "finish_time": 1000, "model": "x"},
        },
    )


def test_fedscale_capacity_units(capacity: Path):
    pop = import_traces("fedscale", capacity)
    d = pop.by_id()["1"]
    assert d.compute_flops.rate_at(0) == pytest.approx(DEFAULT_FLOPS_PER_SAMPLE / 0.162)
    assert d.down_bps.rate_at(5.0) == pytest.approx(5648.109619499134 * 1024 / 8)  # FedScale kbit = 1024 bit
    assert d.up_bps.mean() == d.down_bps.mean()
    assert d.availability.is_always
    # FedScale's worked example: 100 samples at 162 ms each take 16.2 s of inference-equivalent work
    assert d.compute_flops.finish_time(0.0, 100 * DEFAULT_FLOPS_PER_SAMPLE) == pytest.approx(16.2)
    pop2 = import_traces("fedscale", capacity, flops_per_sample=1e9)
    assert pop2.by_id()["2"].compute_flops.mean() == pytest.approx(1e9 / 0.05)


def test_fedscale_behave_pairs_and_cycles(capacity: Path, behave: Path):
    with pytest.warns(UserWarning, match="1 of 2 entries dropped"):
        pop = import_traces("fedscale", capacity, behave=behave)
    # FedScale pairs client c with behaviour entry c mod B: client 1 -> "b", client 2 -> "c" (never online: dropped)
    assert [d.device_id for d in pop.devices] == ["1"]
    b = pop.by_id()["1"].availability  # "b" is clipped at finish_time
    assert (b.starts, b.ends, b.period_s) == ((900.0,), (1000.0,), 1000.0)
    assert b.is_online(1950.0) and not b.is_online(1050.0)  # cyclic with finish_time
    assert pop.by_id()["1"].device_type == "SM-G960F"
    with pytest.warns(UserWarning, match="1 of 3 entries dropped: never online"):
        pop_b = import_traces("fedscale-behave", behave, capacity=capacity)
    assert [d.device_id for d in pop_b.devices] == ["a", "b"]  # "c" never online: skipped and counted
    assert pop_b.meta["skipped_never_online"] == 1
    with pytest.raises(TraceError, match="no compute or bandwidth"):
        import_traces("fedscale-behave", behave)
    with pytest.warns(UserWarning, match="never online"):
        const = import_traces("fedscale-behave", behave, flops=2e9, bandwidth_bps=1e6)
    assert const.devices[0].compute_flops.mean() == 2e9 and const.devices[0].down_bps.mean() == 1e6


@pytest.mark.parametrize(
    "obj, pattern",
    [
        ([1, 2], r"expected a non-empty dict"),
        ({7: {"computation": 1.0}}, r"client 7: missing field 'communication'"),
        ({7: {"computation": -1.0, "communication": 5.0}}, r"client 7: field 'computation' must be positive"),
        ({7: {"computation": "fast", "communication": 5.0}}, r"client 7: field 'computation' is not a number"),
    ],
)
def test_fedscale_capacity_errors(tmp_path: Path, obj, pattern):
    path = _pickle(tmp_path / "cap", obj)
    with pytest.raises(TraceError, match=pattern) as info:
        import_traces("fedscale", path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "entry, pattern",
    [
        ({"active": [0, 10], "inactive": [5], "finish_time": 100}, r"2 'active' times but 1 'inactive'"),
        ({"active": [0], "inactive": [5]}, r"missing field 'finish_time'"),
        ({"active": [50, 0], "inactive": [60, 10], "finish_time": 100}, r"not sorted or overlapping"),
        ({"active": [10], "inactive": [5], "finish_time": 100}, r"ends before it starts"),
    ],
)
def test_fedscale_behave_errors(tmp_path: Path, entry, pattern):
    path = _pickle(tmp_path / "beh", {"u1": entry})
    with pytest.raises(TraceError, match=rf"client 'u1': .*{pattern}"):
        import_traces("fedscale-behave", path, flops=1.0, bandwidth_bps=1.0)


def test_pickle_with_code_is_refused(tmp_path: Path):
    class Evil:
        def __reduce__(self):
            return (print, ("should not run",))

    path = _pickle(tmp_path / "evil", {1: Evil()})
    with pytest.raises(TraceError, match="refusing to load builtins.print"):
        import_traces("fedscale", path)


def test_mahimahi_bins(tmp_path: Path):
    # 3 packets in the first second, 1 in the second, none in the third; loop length 2,500 ms
    down = tmp_path / "link.down"
    down.write_text("0\n0\n999\n1500\n2500\n")
    up = tmp_path / "link.up"
    up.write_text("100\n2000\n")
    pop = import_traces("mahimahi", down, uplink=up, flops=1e9)
    d = pop.devices[0]
    assert d.device_id == "link"
    # the last bin is [2, 2.5) s: the period is Mahimahi's loop length, 2,500 ms, exactly
    np.testing.assert_array_equal(d.down_bps.values, [3 * 1500, 1500, 1500 / 0.5])
    assert d.down_bps.period_s == 2.5
    np.testing.assert_array_equal(d.up_bps.values, [1500, 1500])  # loop length 2,000 ms: two bins
    assert d.up_bps.period_s == 2.0
    half = import_traces("mahimahi", down, bin_s=0.5).devices[0]
    np.testing.assert_array_equal(half.down_bps.values[:3], [2 * 3000, 3000, 0])
    assert half.down_bps.total_per_period == d.down_bps.total_per_period == 5 * 1500


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("", r"empty Mahimahi trace"),
        ("0\n12ms\n", r"line 2: '12ms' is not an integer"),
        ("5\n3\n", r"line 2: timestamps go backwards"),
        ("0\n0\n", r"last timestamp must be > 0"),
    ],
)
def test_mahimahi_errors(tmp_path: Path, text, pattern):
    path = tmp_path / "bad.down"
    path.write_text(text)
    with pytest.raises(TraceError, match=pattern) as info:
        import_traces("mahimahi", path)
    assert "bad.down" in str(info.value)


@pytest.mark.skipif(not GOPHERS.exists(), reason="shared 5Gophers traces absent")
def test_5gophers_throughput_runs():
    path = GOPHERS / "01-Throughput" / "data.csv"
    pop = import_traces("throughput-csv", path)
    raw = pd.read_csv(path)
    runs = raw.groupby(["protocol", "carrier", "num_tcp_conn", "server_location", "run_num"])
    assert len(pop) == runs.ngroups == 120
    assert set(pop.types()) == {"sprint", "tmobile", "verizon"}
    first = raw[(raw.carrier == "SPRINT") & (raw.num_tcp_conn == 1) & (raw.server_location == "US-East") & (raw.run_num == 1)]
    d = pop.devices[0]
    np.testing.assert_allclose(d.down_bps.values, first.throughput_mbps.to_numpy() * 1e6 / 8)
    assert d.down_bps.period_s == first.seq_num.max() + 1
    assert d.up_bps.mean() == pytest.approx(0.16 * d.down_bps.mean())
    assert d.latency_s == pytest.approx(0.0607 / 2)
    # per-carrier medians of the imported per-second rates match the dataset's published medians (Mbit/s)
    for carrier, median in {"sprint": 30.4, "verizon": 209.7}.items():
        rates = np.concatenate([x.down_bps.values for x in pop.devices if x.device_type == carrier and "-1-" in x.device_id])
        assert np.median(rates) * 8 / 1e6 == pytest.approx(median, rel=0.02)


@pytest.mark.skipif(not GOPHERS.exists(), reason="shared 5Gophers traces absent")
def test_5gophers_mobility_traces(tmp_path: Path):
    pop = import_traces("throughput-csv", GOPHERS / "03-User-Mobility" / "car-driving-trace-1.csv")
    assert sorted(pop.types()) == ["sprint", "tmobile", "verizon"]
    walk = import_traces("throughput-csv", GOPHERS / "03-User-Mobility" / "walking-trace.csv", latency_s=0.04)
    assert len(walk) == 1 and walk.devices[0].latency_s == 0.04
    raw = pd.read_csv(GOPHERS / "03-User-Mobility" / "walking-trace.csv")
    assert walk.devices[0].down_bps.times_s[0] == 0 and walk.devices[0].down_bps.times_s.size == len(raw)
    back = read_population(write_population(walk, tmp_path / "w"))
    np.testing.assert_array_equal(back.devices[0].down_bps.values, walk.devices[0].down_bps.values)


def test_throughput_csv_errors(tmp_path: Path):
    bad = tmp_path / "t.csv"
    bad.write_text("seq_num,throughput_mbps\n0,5\n1,-3\n")
    with pytest.raises(TraceError, match=r"t\.csv: line 3: field 'throughput_mbps' must be a non-negative"):
        import_traces("throughput-csv", bad)
    bad.write_text("seq_num,speed\n0,5\n")
    with pytest.raises(TraceError, match=r"no '\*throughput_mbps' column"):
        import_traces("throughput-csv", bad)
    bad.write_text("seq_num,throughput_mbps\n0,5\n0,6\n")
    with pytest.raises(TraceError, match=r"line 3: .*'seq_num' not strictly increasing"):
        import_traces("throughput-csv", bad)


@pytest.mark.skipif(not FLASH.exists(), reason="shared FLASH traces absent")
def test_flash_speed_distribution():
    raw = json.loads(FLASH.read_text())
    pop = import_traces("flash", FLASH, seed=1, duration_s=36000.0)
    assert len(pop) == len(raw) == 19
    for d in pop.devices:
        spec = raw[d.device_id]
        # 600 slots: the mean lands near FLASH's mean (KB = 1024 bytes), within a few standard errors
        se = spec["down_sigma"] / math.sqrt(600)
        assert d.down_bps.mean() / 1024 == pytest.approx(spec["down_u"], abs=5 * se + 0.05 * spec["down_u"])
        assert d.up_bps.values.min() > 0
    again = import_traces("flash", FLASH, seed=1, duration_s=36000.0)
    assert [d.down_bps._cum for d in again.devices] == [d.down_bps._cum for d in pop.devices]


def test_flash_errors(tmp_path: Path):
    bad = tmp_path / "speed.json"
    bad.write_text(json.dumps({"dev": {"down_u": 10, "down_sigma": 1, "up_u": 5}}))
    with pytest.raises(TraceError, match=r"speed\.json: device 'dev': missing field 'up_sigma'"):
        import_traces("flash", bad)
    bad.write_text("{not json")
    with pytest.raises(TraceError, match="not valid JSON"):
        import_traces("flash", bad)
    with pytest.raises(ValueError, match="unknown trace format 'nope'"):
        import_traces("nope", bad)
    with pytest.raises(TraceError, match="no such file"):
        import_traces("flash", tmp_path / "missing.json")


def test_registry_lists_every_format():
    assert set(IMPORTERS) == {"fedscale", "fedscale-behave", "mahimahi", "throughput-csv", "flash"}
