"""``simfed calibrate``: fits recover known constants from a fake measurement CSV; profiles; host; apply."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from simfed.cli import main
from simfed.structure import structure_at
from simfed.timing.calibrate import (
    CalibrationError,
    Measurement,
    Profile,
    apply_profiles,
    fit_memory,
    fit_profile,
    fit_throughput,
    load_profile,
    measure_host,
    read_measurements,
    write_measurements,
    write_profile,
)
from simfed.timing.generators import generate
from simfed.timing.presets import timing_cost
from simfed.timing.tracefile import read_population, write_population

HEADER = "preset,batch,seq_len,sparsity,rank,step_s,peak_bytes,device_type"
GRID = [(s, r) for s in (0.0, 0.25, 0.5) for r in (2, 8, 32)]


def _fake_csv(path: Path, theta: float, overhead: float, alloc: float, runtime: float, noise: float, seed: int = 0,
              configs=(("tiny", 8, 80), ("smollm2-135m", 2, 64)), device: str = "tx2", extra: str = "",
              extra_values: str = "", **cost_kw) -> Path:
    """A measurement CSV as a user would fill it: step times (F + o)/θ and peaks a T + b of the cost model's
    FLOPs F and tensors T over the (sparsity, rank) grid of each (preset, batch, seq_len), each times
    (1 + noise × a standard normal draw)."""
    rng = np.random.default_rng(seed)
    cost_kw = cost_kw or {"param_bytes": 4, "act_bytes": 4, "lora_bytes": 4}  # the CSV's default dtypes: float32
    lines = ["# measured on a board; one row per configuration", HEADER + extra]
    for preset, batch, seq in configs:
        cost = timing_cost(preset, batch, seq, allocator_factor=1.0, runtime_bytes=0.0, importance=False, **cost_kw)
        for s, r in GRID:
            st = structure_at(cost.shape, s)
            f = cost.iteration_flops(st, r, with_importance=False)
            t = (f + overhead) / theta * (1 + noise * rng.standard_normal())
            m = (alloc * cost.tensor_memory_bytes(st, r) + runtime) * (1 + noise * rng.standard_normal())
            lines.append(f"{preset},{batch},{seq},{s},{r},{t!r},{m!r},{device}{extra_values}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_import_recovers_known_throughput_and_overhead_from_noisy_measurements(tmp_path, capsys):
    # the host's constants (docs/timing.md §1.6), the Jetson memory overheads; 1 % noise on every number; the tiny
    # model's short steps make the overhead visible, SmolLM2's large tensors the allocator factor
    csv = _fake_csv(tmp_path / "m.csv", theta=75e9, overhead=1.33e9, alloc=1.176, runtime=1.41e9, noise=0.01)
    assert main(["calibrate", "import", str(csv), "--out", str(tmp_path / "tx2.json")]) == 0
    out = capsys.readouterr().out
    assert "device type tx2: throughput" in out and "memory: max |error|" in out
    prof = load_profile(tmp_path / "tx2.json")
    assert prof.device_type == "tx2" and prof.power_mode is None
    # tolerances: about three times the largest error over 30 noise seeds (1.1 %, 3.5 %, 3.0 %, 0.8 %)
    assert prof.throughput_flops == pytest.approx(75e9, rel=0.03)
    assert prof.iteration_overhead_flops == pytest.approx(1.33e9, rel=0.10)
    assert prof.allocator_factor == pytest.approx(1.176, rel=0.06)
    assert prof.runtime_bytes == pytest.approx(1.41e9, rel=0.02)
    assert prof.fit["n_points"] == 18 and prof.fit["time_error"]["max_abs"] < 0.05
    assert prof.fit["memory_error"]["max_abs"] < 0.05
    # FLOPs alone cannot explain such times: the overhead-free fit is clearly worse
    assert prof.fit["pure_time_error"]["max_abs"] > 2 * prof.fit["time_error"]["max_abs"]


def test_exact_measurements_give_the_constants_back(tmp_path):
    csv = _fake_csv(tmp_path / "m.csv", theta=3.3e11, overhead=5e10, alloc=1.3, runtime=1.5e9, noise=0.0,
                    configs=[("roberta-base", 16, 128)], device="agx-xavier",
                    extra=",targets,weights_dtype,lora_dtype,power_mode", extra_values=",q v,float16,float32,MAXN",
                    param_bytes=2, lora_bytes=4)
    rows = read_measurements(csv)
    assert rows[0].targets == ("q", "v") and rows[0].weights_dtype == "float16" and rows[0].power_mode == "MAXN"
    prof = fit_profile(rows)
    assert prof.throughput_flops == pytest.approx(3.3e11, rel=1e-6)
    assert prof.iteration_overhead_flops == pytest.approx(5e10, rel=1e-4)
    assert prof.allocator_factor == pytest.approx(1.3, rel=1e-6) and prof.runtime_bytes == pytest.approx(1.5e9, rel=1e-6)
    assert prof.power_mode == "MAXN"


def test_fits_respect_the_cost_models_ranges():
    f = np.array([1e9, 2e9, 3e9])
    theta, o = fit_throughput(f, f / 1e10)  # no overhead in the data: o = 0, not negative
    assert theta == pytest.approx(1e10) and o == pytest.approx(0.0, abs=1e-3)
    theta, o = fit_throughput(f, (f - 0.5e9) / 1e10)  # a "negative overhead" is clipped to 0 by the fit, not later
    assert o == 0.0
    assert fit_throughput([2e9, 2e9], [0.2, 0.2]) == (pytest.approx(1e10), 0.0)  # one configuration: θ alone
    with pytest.raises(CalibrationError, match="do not grow with the configurations' FLOPs"):
        fit_throughput(f, [3.0, 2.0, 1.0])
    a, b, fitted = fit_memory([1e8, 2e8], [0.9e8, 1.8e8])  # less than the tensors: factor held at 1
    assert a == 1.0 and b == pytest.approx(0.0, abs=1.0) and fitted
    a, b, fitted = fit_memory([1e8], [3e8])
    assert (a, fitted) == (1.0, False) and b == pytest.approx(2e8)


@pytest.mark.parametrize("text, message", [
    ("preset,batch,seq_len,sparsity,rank,device_type\ntiny,8,80,0,8,x\n", "line 1: missing column(s) step_s"),
    (HEADER.replace("peak_bytes", "peak_byte") + "\n", "unknown column 'peak_byte' (did you mean 'peak_bytes'?"),
    (HEADER + "\ntiny,8,80,0,8,-1,,tx2\n", "line 2: step_s: expected a finite number > 0, got '-1'"),
    (HEADER + "\ntiny,8,80,1.0,8,0.1,,tx2\n", "line 2: sparsity: expected a finite number >= 0 and < 1, got '1.0'"),
    (HEADER + "\ngpt5,8,80,0,8,0.1,,tx2\n", "line 2: preset: unknown preset 'gpt5'"),
    (HEADER + "\ntiny,8,80,0,8,0.1,tx2\n", "line 2: 7 fields for 8 columns"),
    (HEADER + "\ntiny,8,80,0,0,0.1,,tx2\n", "line 2: rank: expected an integer >= 1, got '0'"),
    (HEADER + "\nroberta-base,8,600,0,8,0.1,,tx2\n", "line 2: seq_len 600 exceeds the encoder's 514 learned positions"),
    (HEADER + ",weights_dtype\ntiny,8,80,0,8,0.1,,tx2,bf16\n", "line 2: weights_dtype: expected one of float32, float16"),
    (HEADER + ",targets\ntiny,8,80,0,8,0.1,,tx2,q w\n", "line 2: lora_targets: 'w' is not a linear"),
    (HEADER + "\ntiny,8,80,0,8,0.1,,\n", "line 2: device_type: missing value"),
    ("# nothing yet\n", "no measurements"),
    (HEADER + "\ntiny,8,80,0,8,0.1,,tx2\ntiny,8,80,0.5,8,0.05,,agx\n", "m.csv: the measurements hold device types agx, tx2: name the one"),
])
def test_bad_measurement_files_are_one_line_errors(tmp_path, capsys, text, message):
    path = tmp_path / "m.csv"
    path.write_text(text)
    assert main(["calibrate", "import", str(path), "--out", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "simfed calibrate: error:" in err
    assert not (tmp_path / "p.json").exists()


def test_device_type_picks_one_of_several_and_power_modes_must_agree(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(HEADER + ",power_mode\n" + "tiny,8,80,0,8,0.1,,tx2,MAXN\ntiny,8,80,0.5,8,0.06,,tx2,MAXN\n"
                    "tiny,8,80,0,8,0.05,,agx,MAXN\ntiny,8,80,0.5,8,0.03,,agx,MODE_10W\n")
    assert fit_profile(read_measurements(path), "tx2").device_type == "tx2"
    with pytest.raises(CalibrationError, match="'agx': measurements in different power modes"):
        fit_profile(read_measurements(path), "agx")
    with pytest.raises(CalibrationError, match="no measurement of device type 'nx'"):
        fit_profile(read_measurements(path), "nx")


def test_measurements_and_profiles_round_trip(tmp_path):
    rows = [Measurement("tiny", 8, 80, 0.25, 8, 0.0512, "host", peak_bytes=4.1e8, targets=("q", "v"),
                        weights_dtype="float16", importance=True, power_mode="MAXN")]
    assert read_measurements(write_measurements(rows, tmp_path / "m.csv")) == rows
    prof = Profile("tx2", 3.1e11, 2e9, "MAXQ", 1.2, 1.4e9, 6e9, {"n_points": 3}, {"kind": "import"})
    assert load_profile(write_profile(prof, tmp_path / "p.json")) == prof


@pytest.mark.parametrize("edit, message", [
    (lambda d: "not json", "not a JSON file"),
    (lambda d: {**d, "format": "other"}, "not a device profile"),
    (lambda d: {**d, "version": 9}, "version: expected 1, got 9"),
    (lambda d: {**d, "throughput_flops": -1.0}, "throughput_flops: expected a finite number > 0, got -1.0"),
    (lambda d: {**d, "allocator_factor": 0.5}, "allocator_factor: expected a finite number >= 1 or null"),
    (lambda d: {**d, "device_type": ""}, "device_type: expected a non-empty string"),
])
def test_bad_profiles_are_refused(tmp_path, edit, message):
    path = write_profile(Profile("tx2", 3e11, allocator_factor=1.2, runtime_bytes=1e9), tmp_path / "p.json")
    data = edit(json.loads(path.read_text()))
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    with pytest.raises(CalibrationError, match=message):
        load_profile(path)
    with pytest.raises(CalibrationError, match="no such profile file"):
        load_profile(tmp_path / "missing.json")


def test_apply_rescales_a_trace_directorys_type(tmp_path, capsys):
    src = write_population(generate("fedspine-testbed-wifi", n_devices=8, seed=3), tmp_path / "wifi")
    prof = write_profile(Profile("tx2", 2.0e11, usable_ram_bytes=5.0 * 2**30), tmp_path / "tx2.json")
    assert main(["calibrate", "apply", str(src), str(prof), "--out", str(tmp_path / "cal")]) == 0
    assert "tx2: compute scaled by" in capsys.readouterr().out
    before, after = read_population(src), read_population(tmp_path / "cal")
    assert max(d.compute_flops.values.max() for d in after.devices if d.device_type == "tx2") == pytest.approx(2.0e11)
    for b, a in zip(before.devices, after.devices):
        if a.device_type == "tx2":
            assert a.ram_bytes == 5.0 * 2**30
            assert np.allclose(a.compute_flops.values / b.compute_flops.values, a.compute_flops.values[0] / b.compute_flops.values[0])
        else:
            assert np.array_equal(a.compute_flops.values, b.compute_flops.values) and a.ram_bytes == b.ram_bytes
    assert after.meta["calibrated"]["tx2"]["profile"] == str(prof)
    pop = read_population(src)
    with pytest.raises(CalibrationError, match="device type 'phone' is not in the trace"):
        apply_profiles(pop, [Profile("phone", 1e9)])
    with pytest.raises(CalibrationError, match="measured in power mode 'MAXQ'"):
        apply_profiles(pop, [Profile("tx2", 1e11, power_mode="MAXQ")])
    with pytest.raises(CalibrationError, match="a second profile of device type 'tx2'"):
        apply_profiles(pop, [Profile("tx2", 1e11), Profile("tx2", 2e11)])


def test_host_measurement_is_the_import_path_on_this_machine(tmp_path, capsys):
    """Two configurations, few steps: the host path measures, writes the CSV, and importing that CSV gives
    the same profile; the measured points carry the cost model's configurations and memory."""
    out, csv = tmp_path / "host.json", tmp_path / "host.csv"
    assert main(["calibrate", "host", "--out", str(out), "--csv", str(csv), "--sparsities", "0,0.5", "--ranks", "8",
                 "--steps", "2", "--passes", "1", "--warmup", "1"]) == 0
    capsys.readouterr()
    host = load_profile(out)
    rows = read_measurements(csv)
    assert [(m.sparsity, m.rank, m.batch, m.seq_len, m.importance) for m in rows] == [(0.0, 8, 8, 80, True), (0.5, 8, 8, 80, True)]
    assert rows[0].step_s > rows[1].step_s > 0  # the pruned model is faster
    assert all(m.peak_bytes > p["tensor_bytes"] for m, p in zip(rows, host.fit["points"]))  # runtime on top of tensors
    assert host.source["kind"] == "host" and host.source["threads"] == 1
    imported = fit_profile(rows)
    assert imported.throughput_flops == host.throughput_flops
    assert imported.iteration_overhead_flops == host.iteration_overhead_flops
    assert imported.allocator_factor == host.allocator_factor and imported.runtime_bytes == host.runtime_bytes


@pytest.mark.parametrize("kwargs, message", [
    ({"preset": "roberta-base"}, "this host can run tiny, smollm2-135m"),
    ({"threads": 2}, "--clock cpu adds up the CPU time of every thread"),
    ({"sparsities": (1.0,)}, "--sparsities: 1.0 is not in \\[0, 1\\)"),
    ({"ranks": ()}, "grid is empty"),
])
def test_host_measurement_argument_errors(kwargs, message):
    with pytest.raises(CalibrationError, match=message):
        measure_host(**kwargs)
