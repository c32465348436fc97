"""Trace inputs: zero-rate series are warned about at load, bad values are one error, and the
importers keep what the user gave (ids as text, no silent merges or drops, exact periods and units,
FedScale's own pairing rule, range-checked options).

The zero-bandwidth inputs are the project's copy of ``cases/zero-bandwidth`` (CASES.md); FLASH and
5Gophers files are read from the shared raw-trace folder and skipped when it is absent.
"""

from __future__ import annotations

import json
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from simfed.errors import OptionError, SimfedError, SimfedWarning
from simfed.timing.generators import generate
from simfed.timing.importers import import_traces, importer_options
from simfed.timing.importers.fedscale import KBIT_BYTES
from simfed.timing.tracefile import read_population, zero_rate_series
from simfed.timing.traces import TraceError

CASES = Path(__file__).resolve().parent / "cases"
ZERO = CASES / "zero-bandwidth"
RAW = Path(__file__).resolve().parents[2] / ".." / "shared" / "traces" / "raw"
FLASH = RAW / "flash-device-util" / "speed_distri.json"
GOPHERS = RAW / "5gophers-v1.0" / "All-Carriers"


def _simfed_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, SimfedWarning)]


# ------------------------------------------------------------------------------------ zero-rate series


def test_zero_bandwidth_is_warned_once_at_load_naming_device_series_and_file():
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        pop = read_population(ZERO / "traces")
    messages = _simfed_warnings(record)
    assert len(messages) == 1, messages
    msg = messages[0]
    assert "'d0'" in msg and "downlink" in msg and str(ZERO / "traces" / "downlink.csv") in msg
    assert "'d1'" not in msg and "\n" not in msg
    assert {k: [d.device_id for d in v] for k, v in zero_rate_series(pop).items()} == {"downlink": ["d0"]}


def test_zero_rate_in_several_series_and_devices(tmp_path: Path):
    traces = shutil.copytree(ZERO / "traces", tmp_path / "t")
    (traces / "uplink.csv").write_text("device_id,t,rate\nd0,0,0\nd0,4,0\nd1,0,0\n")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        read_population(traces)
    messages = sorted(_simfed_warnings(record))
    assert len(messages) == 2
    down, up = messages
    assert "downlink.csv" in down and "device 'd0' has a zero downlink rate" in down
    assert "uplink.csv" in up and "devices 'd0', 'd1' have a zero uplink rate" in up


def test_a_rate_that_is_zero_only_part_of_the_period_is_not_warned(tmp_path: Path):
    traces = shutil.copytree(ZERO / "traces", tmp_path / "t")
    (traces / "downlink.csv").write_text("device_id,t,rate\nd0,0,0\nd0,5,100\nd1,0,1000000\n")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        read_population(traces)
    assert _simfed_warnings(record) == []


def test_bad_nan_is_one_error_naming_file_device_and_field():
    with pytest.raises(TraceError) as info:
        read_population(ZERO / "bad-nan")
    msg = str(info.value)
    assert "downlink.csv" in msg and "'d0'" in msg and "'rate'" in msg and "line 2" in msg
    assert "np.float64" not in msg and "\n" not in msg


def test_imports_warn_about_zero_rate_series(tmp_path: Path):
    csv = tmp_path / "dead.csv"
    csv.write_text("seq_num,throughput_mbps\n0,0\n1,0\n")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        import_traces("throughput-csv", csv)
    messages = sorted(_simfed_warnings(record))
    assert len(messages) == 2  # downlink, and the uplink derived from it
    assert all(f"{csv}: device 'dead' has a zero" in m for m in messages)
    assert "downlink" in messages[0] and "uplink" in messages[1]


def test_trace_directory_ids_stay_text(tmp_path: Path):
    """devices.csv ids that look like numbers (or like pandas' NA markers) are read exactly as written."""
    traces = shutil.copytree(ZERO / "traces", tmp_path / "t")
    ids = ["007", "NA"]
    for name in ("devices.csv", "compute.csv", "downlink.csv", "uplink.csv"):
        path = traces / name
        path.write_text(path.read_text().replace("d0", ids[0]).replace("d1", ids[1]))
    (traces / "downlink.csv").write_text("device_id,t,rate\n007,0,5\nNA,0,1000000\n")
    pop = read_population(traces)
    assert [d.device_id for d in pop.devices] == ids


# ------------------------------------------------------------------------------------ option tables


@pytest.mark.parametrize(
    "name, params, key",
    [
        ("fedspine-testbed", {"efficency": 0.4}, "efficency"),
        ("fedspine-testbed", {"efficiency": 2.0}, "efficiency"),
        ("fedspine-testbed", {"precision": "fp64"}, "precision"),
        ("fedspine-testbed", {"slot_s": "60"}, "slot_s"),
        ("phones", {"cellular_share": 1.5}, "cellular_share"),
        ("phones", {"sessions_per_day": 0.5}, "sessions_per_day"),
        ("phones", {"availability": 1}, "availability"),
    ],
)
def test_generator_options_are_checked(name, params, key):
    with pytest.raises(OptionError) as info:
        generate(name, n_devices=4, **params)
    msg = str(info.value)
    assert key in msg and "\n" not in msg
    assert isinstance(info.value, SimfedError)


def test_unknown_generator_option_lists_the_accepted_ones():
    with pytest.raises(OptionError, match=r"efficency: unknown option of generator 'fedspine-testbed' "
                                          r"\(did you mean 'efficiency'\? accepted: .*mode_hold_s"):
        generate("fedspine-testbed", n_devices=4, efficency=0.4)


def test_generator_duration_must_be_whole_slots():
    with pytest.raises(OptionError, match=r"fedspine-testbed: duration_s: 90 s is not a whole number of slot_s = 60 s"):
        generate("fedspine-testbed", n_devices=4, duration_s=90.0)


@pytest.mark.parametrize(
    "fmt, texts, key",
    [
        ("mahimahi", {"bin_s": "-1"}, "--set bin_s"),
        ("mahimahi", {"bin_s": "fast"}, "--set bin_s"),
        ("mahimahi", {"uplnk": "x.up"}, "--set uplnk"),
        ("flash", {"seed": "1.5"}, "--set seed"),
        ("fedscale", {"limit": "0"}, "--set limit"),
        ("throughput-csv", {"latency_s": "-0.1"}, "--set latency_s"),
        ("fedscale-behave", {"flops": "inf"}, "--set flops"),
    ],
)
def test_importer_options_are_parsed_as_declared_and_range_checked(fmt, texts, key):
    with pytest.raises(OptionError) as info:
        importer_options(fmt).parse(texts)
    assert str(info.value).startswith(key + ":") and "\n" not in str(info.value)


def test_string_options_keep_their_text():
    assert importer_options("mahimahi").parse({"device_id": "007"}) == {"device_id": "007"}
    assert importer_options("fedscale").parse({"behave": "0042"}) == {"behave": "0042"}
    assert importer_options("flash").parse({"seed": "7", "slot_s": "30"}) == {"seed": 7, "slot_s": 30.0}


# ------------------------------------------------------------------------------------ importers keep what was given


def _pickle(path: Path, obj) -> Path:
    path.write_bytes(pickle.dumps(obj))
    return path


def _cap(ms: float, kbps: float) -> dict:
    return {"computation": ms, "communication": kbps}


def _beh(start: float, end: float, period: float = 1000.0, model: str = "m") -> dict:
    return {"duration": end - start, "active": [start], "inactive": [end], "finish_time": period, "model": model}


def test_fedscale_bandwidth_uses_fedscales_kbit(tmp_path: Path):
    # FedScale's model size is bytes / 1024 * 8 "kbit": a transfer of S bytes at c kbit/s takes S * 8 / 1024 / c s
    pop = import_traces("fedscale", _pickle(tmp_path / "cap", {1: _cap(100.0, 5648.1)}))
    model_bytes = 46.8e6
    fedscale_s = (model_bytes / 1024 * 8) / 5648.1
    assert KBIT_BYTES == 128.0
    assert model_bytes / pop.devices[0].down_bps.mean() == pytest.approx(fedscale_s, rel=1e-12)
    assert "1024 bit" in pop.meta["units"]


def test_fedscale_pairs_capacity_and_behaviour_as_fedscale_does(tmp_path: Path):
    """FedScale client c reads capacity key c and behaviour entry at position c mod B (aggregator.py,
    client_manager.py); the import must give each device the same behaviour entry."""
    cap = {c: _cap(10.0 * c, 1000.0) for c in range(1, 6)}  # keys 1..5, FedScale's layout
    beh = {f"u{j}": _beh(10.0 * j, 10.0 * j + 5.0, model=f"model{j}") for j in range(3)}  # B = 3
    pop = import_traces("fedscale", _pickle(tmp_path / "cap", cap), behave=_pickle(tmp_path / "beh", beh))
    keys = list(beh)
    for c in range(1, 6):
        dev = pop.by_id()[str(c)]
        expected = beh[keys[c % len(keys)]]  # FedScale: user_trace[keys[client_id % len]]
        assert dev.availability.starts == (float(expected["active"][0]),), c
        assert dev.device_type == expected["model"]


def test_fedscale_behave_pairs_capacity_as_fedscale_does(tmp_path: Path):
    cap = {c: _cap(float(c), 1000.0 * c) for c in range(1, 8)}  # P = 7
    beh = {f"u{j}": _beh(1.0, 2.0) for j in range(4)}  # B = 4: positions 0..3 are clients 4, 1, 2, 3
    pop = import_traces("fedscale-behave", _pickle(tmp_path / "beh", beh), capacity=_pickle(tmp_path / "cap", cap))
    clients = {"u0": 4, "u1": 1, "u2": 2, "u3": 3}
    for did, c in clients.items():
        assert pop.by_id()[did].down_bps.mean() == pytest.approx(1000.0 * (c % 7) * KBIT_BYTES)


def test_fedscale_behave_missing_capacity_key_is_an_error(tmp_path: Path):
    cap = {1: _cap(1.0, 1.0), 2: _cap(2.0, 2.0)}  # P = 2: client 2 reads key 2 mod 2 = 0, which is absent
    beh = {f"u{j}": _beh(1.0, 2.0) for j in range(3)}
    with pytest.raises(TraceError, match=r"no capacity entry with key 0: behaviour entry 'u2' .*FedScale client 2"):
        import_traces("fedscale-behave", _pickle(tmp_path / "beh", beh), capacity=_pickle(tmp_path / "cap", cap))


def test_fedscale_ids_are_kept_and_collisions_refused(tmp_path: Path):
    pop = import_traces("fedscale", _pickle(tmp_path / "cap", {"007": _cap(1.0, 1.0), 7: _cap(2.0, 2.0)}))
    assert [d.device_id for d in pop.devices] == ["007", "7"]
    with pytest.raises(TraceError, match=r"client keys 7 and '7' would both become device id '7'"):
        import_traces("fedscale", _pickle(tmp_path / "cap2", {7: _cap(1.0, 1.0), "7": _cap(2.0, 2.0)}))


def test_fedscale_pairing_needs_integer_client_ids(tmp_path: Path):
    with pytest.raises(TraceError, match=r"client key 'a' is not an integer"):
        import_traces("fedscale", _pickle(tmp_path / "cap", {"a": _cap(1.0, 1.0)}),
                      behave=_pickle(tmp_path / "beh", {"x": _beh(0.0, 1.0)}))


def test_dropped_entries_are_reported_with_their_count(tmp_path: Path):
    never = {"duration": 0, "active": [], "inactive": [], "finish_time": 100, "model": "x"}
    beh = {"a": _beh(0.0, 10.0), "b": never, "c": never, "d": _beh(5.0, 6.0)}
    path = _pickle(tmp_path / "beh", beh)
    with pytest.warns(SimfedWarning, match=r"fedscale-behave: 2 of 4 entries dropped: never online"):
        pop = import_traces("fedscale-behave", path, flops=1e9, bandwidth_bps=1e6)
    assert [d.device_id for d in pop.devices] == ["a", "d"] and pop.meta["skipped_never_online"] == 2
    cap = _pickle(tmp_path / "cap", {c: _cap(1.0, 1.0) for c in range(1, 5)})  # clients 1..4 -> b, c, d, a
    with pytest.warns(SimfedWarning, match=r"fedscale: 2 of 4 entries dropped: .*never online"):
        pop = import_traces("fedscale", cap, behave=path)
    assert sorted(d.device_id for d in pop.devices) == ["3", "4"]


def test_fedscale_limit_counts_devices(tmp_path: Path):
    never = {"duration": 0, "active": [], "inactive": [], "finish_time": 100, "model": "x"}
    beh = _pickle(tmp_path / "beh", {"a": never, "b": _beh(0.0, 1.0), "c": _beh(0.0, 1.0)})
    with pytest.warns(SimfedWarning, match="1 of 3 entries dropped"):
        pop = import_traces("fedscale-behave", beh, flops=1.0, bandwidth_bps=1.0, limit=2)
    assert [d.device_id for d in pop.devices] == ["b", "c"]


def test_mahimahi_period_is_the_loop_length_exactly(tmp_path: Path):
    down = tmp_path / "link.down"
    down.write_text("0\n0\n999\n1500\n2500\n")  # loop length 2.5 s: bins [0,1), [1,2), [2,2.5)
    d = import_traces("mahimahi", down).devices[0]
    assert d.down_bps.period_s == 2.5
    np.testing.assert_allclose(d.down_bps.values, [3 * 1500, 1500, 1500 / 0.5])
    assert d.down_bps.total_per_period == pytest.approx(5 * 1500)
    # a whole number of bins is unchanged
    down.write_text("0\n1000\n2000\n")
    d = import_traces("mahimahi", down).devices[0]
    assert d.down_bps.period_s == 2.0 and list(d.down_bps.values) == [1500.0, 3000.0]


def test_mahimahi_device_id_is_kept_as_text(tmp_path: Path):
    down = tmp_path / "0042.down"
    down.write_text("0\n10\n")
    assert import_traces("mahimahi", down).devices[0].device_id == "0042"
    assert import_traces("mahimahi", down, device_id="007").devices[0].device_id == "007"


def test_throughput_csv_keeps_run_labels_as_written(tmp_path: Path):
    csv = tmp_path / "runs.csv"
    csv.write_text("carrier,run_num,seq_num,throughput_mbps\nX,007,0,1\nX,007,1,2\nX,7,0,3\nX,7,1,4\n")
    ids = [d.device_id for d in import_traces("throughput-csv", csv).devices]
    assert ids == ["runs-X-007", "runs-X-7"]


def test_throughput_csv_colliding_ids_are_an_error(tmp_path: Path):
    csv = tmp_path / "runs.csv"
    csv.write_text("carrier,run_num,seq_num,throughput_mbps\na-b,1,0,1\na,b-1,0,3\n")
    with pytest.raises(TraceError, match=r"would both become device id 'runs-a-b-1'"):
        import_traces("throughput-csv", csv)


def test_flash_duplicate_keys_are_an_error(tmp_path: Path):
    entry = '{"down_u": 10, "down_sigma": 1, "up_u": 5, "up_sigma": 1}'
    path = tmp_path / "speed.json"
    path.write_text(f'{{"dev": {entry}, "dev": {entry}}}')
    with pytest.raises(TraceError, match=r"speed\.json: key 'dev' appears twice"):
        import_traces("flash", path)


def test_flash_series_last_exactly_duration(tmp_path: Path):
    path = tmp_path / "speed.json"
    path.write_text(json.dumps({"007": {"down_u": 10, "down_sigma": 1, "up_u": 5, "up_sigma": 1}}))
    d = import_traces("flash", path, slot_s=60.0, duration_s=90.0).devices[0]
    assert d.device_id == "007"
    assert d.down_bps.period_s == 90.0 and list(d.down_bps.times_s) == [0.0, 60.0]


@pytest.mark.skipif(not FLASH.exists(), reason="shared FLASH traces absent")
def test_flash_real_file_ids_are_its_keys():
    raw = json.loads(FLASH.read_text())
    pop = import_traces("flash", FLASH)
    assert sorted(d.device_id for d in pop.devices) == sorted(raw)


@pytest.mark.skipif(not GOPHERS.exists(), reason="shared 5Gophers traces absent")
def test_5gophers_real_file_imports_every_run_once():
    pop = import_traces("throughput-csv", GOPHERS / "01-Throughput" / "data.csv")
    ids = [d.device_id for d in pop.devices]
    assert len(ids) == len(set(ids)) == 120
