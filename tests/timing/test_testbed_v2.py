"""``fedspine-testbed`` v2 and the kept phones'-Wi-Fi variant: the numbers traces/SCHEMA.md documents."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest

from simfed.errors import OptionError
from simfed.timing.calibrate import Profile, write_profile
from simfed.timing.generators import fedspine_testbed as tb
from simfed.timing.generators import generate

GIB, MIB = 1024**3, 1024**2

# traces/SCHEMA.md, fedspine-testbed: effective throughput (GFLOP/s) at the maximum mode and its long-run mean
DOC_MAX_FP32 = {"tx2": 332.8, "xavier-nx": 422.4, "agx-xavier": 705.0}
DOC_MEAN_FP32 = {"tx2": 301.1, "xavier-nx": 393.6, "agx-xavier": 530.9}
DOC_MEAN_RATIOS_FP32 = {"xavier-nx": 1.307, "agx-xavier": 1.763}
DOC_MAX_RATIOS_FP16 = {"xavier-nx": 2.54, "agx-xavier": 4.24}
DOC_USABLE_MIB = {"tx2": 6185, "xavier-nx": 6107, "agx-xavier": 30254}


def _by_type(pop):
    out: dict[str, list] = {}
    for d in pop.devices:
        out.setdefault(d.device_type, []).append(d)
    return out


def _type_means(pop) -> dict[str, float]:
    return {t: float(np.mean([d.compute_flops.mean() for d in ds])) for t, ds in _by_type(pop).items()}


@pytest.fixture(scope="module")
def long_pop():
    """400 boards over two days: enough mode draws for the long-run means to settle."""
    return generate("fedspine-testbed", n_devices=400, seed=1, duration_s=48 * 3600.0)


def test_max_mode_throughput_and_mean_ratios_are_as_documented(long_pop):
    for t in tb.MIX:
        assert tb.max_mode_throughput(t) / 1e9 == pytest.approx(DOC_MAX_FP32[t], abs=0.05)
        expected = tb.max_mode_throughput(t) * tb.mean_mode_multiplier(t, 0.5)
        assert expected / 1e9 == pytest.approx(DOC_MEAN_FP32[t], abs=0.05)
    means = _type_means(long_pop)
    for t in tb.MIX:  # the population's per-type time averages land on the documented long-run means
        assert means[t] / 1e9 == pytest.approx(DOC_MEAN_FP32[t], rel=0.02)
    for t, ratio in DOC_MEAN_RATIOS_FP32.items():
        assert means[t] / means["tx2"] == pytest.approx(ratio, rel=0.03)
    # at the maximum modes the ratios are the specifications' FP32 peaks: 1 : 1.27 : 2.12
    assert DOC_MAX_FP32["agx-xavier"] / DOC_MAX_FP32["tx2"] == pytest.approx(1410.0 / 665.6, rel=0.01)


def test_every_level_is_a_documented_mode_times_the_boards_own_speed(long_pop):
    for d in long_pop.devices:
        top = tb.max_mode_throughput(d.device_type)
        allowed = {top * m for m in tb.mode_multipliers(d.device_type).values()}
        assert set(d.compute_flops.values.tolist()) <= allowed
        assert d.compute_flops.period_s == 48 * 3600.0
    # rare switches: a fresh draw every 30 min on average, so about one change of level an hour or fewer
    changes_per_hour = np.mean([len(d.compute_flops.values) - 1 for d in long_pop.devices]) / 48
    assert 0.5 < changes_per_hour < 2.0
    # the time share of the top level is max_mode_share (0.5), plus the other modes at the top GPU clock (NX 15 W)
    for t, ds in _by_type(long_pop).items():
        shares = []
        for d in ds:
            c = d.compute_flops
            durations = np.diff(np.append(c.times_s, c.period_s))
            shares.append(durations[c.values == tb.max_mode_throughput(t)].sum() / c.period_s)
        w, mult = tb.mode_weights(t, 0.5), tb.mode_multipliers(t)
        assert np.mean(shares) == pytest.approx(sum(w[m] for m in w if mult[m] == 1.0), abs=0.05)


def test_no_power_modes_and_the_compute_spread_option():
    pop = generate("fedspine-testbed", n_devices=40, seed=0, max_mode_share=1.0)
    for d in pop.devices:  # always the maximum mode: one constant level per board
        assert d.compute_flops.values.tolist() == [tb.max_mode_throughput(d.device_type)]
    flat = _type_means(generate("fedspine-testbed", n_devices=40, seed=0, max_mode_share=1.0, compute_spread=0.0))
    assert flat["agx-xavier"] == pytest.approx(flat["tx2"]) and flat["xavier-nx"] == pytest.approx(flat["tx2"])
    wide = _type_means(generate("fedspine-testbed", n_devices=40, seed=0, max_mode_share=1.0, compute_spread=2.0))
    assert wide["tx2"] == pytest.approx(DOC_MAX_FP32["tx2"] * 1e9, rel=1e-3)  # the measured TX2 anchors the spread
    assert wide["agx-xavier"] / wide["tx2"] == pytest.approx((705.024 / 332.8) ** 2, rel=1e-3)


def test_fp16_uses_tensor_cores_where_the_board_has_them():
    top = {t: tb.max_mode_throughput(t, "fp16") for t in tb.MIX}
    for t, ratio in DOC_MAX_RATIOS_FP16.items():
        assert top[t] / top["tx2"] == pytest.approx(ratio, abs=0.01)
    assert top["tx2"] == pytest.approx(2 * tb.max_mode_throughput("tx2", "fp32"))  # packed half, no tensor cores
    assert tb.tensor_core_peak_flops("xavier-nx", 1100.0) == pytest.approx(6.76e12, rel=0.01)  # 48 x 64 x 2 x 1.1 GHz
    pop = generate("fedspine-testbed", n_devices=8, seed=0, precision="fp16", max_mode_share=1.0)
    assert {d.device_type: d.compute_flops.values[0] for d in pop.devices} == pytest.approx(top)


def test_efficiency_is_what_fedadapters_tx2_measurement_gives():
    # BERT-base, batch 4 x 256, all 12 layers trained: 0.55 TFLOP in 1.70 s = 0.32 TFLOP/s of a 0.67 TFLOP/s peak
    assert tb.bert_base_step_flops(12) / 1e12 == pytest.approx(0.551, abs=0.001)
    shares = [tb.fedadapter_tx2_share(k) for k in range(13)]
    assert shares[12] == pytest.approx(0.487, abs=0.001)
    assert min(shares) <= tb.DEFAULT_EFFICIENCY <= max(shares) and max(shares) - min(shares) < 0.05


def test_link_rates_persist_with_slow_small_jitter():
    pop = generate("fedspine-testbed", n_devices=300, seed=2, duration_s=12 * 3600.0)
    logs = np.array([np.log(d.down_bps.values) for d in pop.devices])  # (devices, slots), 60-s slots
    # the placement sets each board's rate: log-uniform over [1, 10] MB/s
    link = np.exp(logs.mean(axis=1))
    assert link.min() > 0.8e6 and link.max() < 12e6
    u = (np.log(link) - np.log(1e6)) / np.log(10.0)
    assert np.quantile(u, [0.25, 0.5, 0.75]) == pytest.approx([0.25, 0.5, 0.75], abs=0.07)
    # persistence: a board's first six hours and last six hours agree; slot-to-slot correlation 0.9; cv 0.1
    first, last = logs[:, : logs.shape[1] // 2].mean(axis=1), logs[:, logs.shape[1] // 2:].mean(axis=1)
    assert np.corrcoef(first, last)[0, 1] > 0.98
    centred = logs - logs.mean(axis=1, keepdims=True)
    lag1 = np.mean([np.corrcoef(x[:-1], x[1:])[0, 1] for x in centred])
    assert lag1 == pytest.approx(0.9, abs=0.03)
    cv = np.mean([d.down_bps.values.std() / d.down_bps.values.mean() for d in pop.devices])
    assert cv == pytest.approx(0.1, abs=0.03)
    # the same link both ways, jittered independently
    up = np.array([np.log(d.up_bps.values).mean() for d in pop.devices])
    assert np.corrcoef(up, logs.mean(axis=1))[0, 1] > 0.98


def test_the_phones_wifi_variant_has_no_persistence_and_v2_can_drop_its_jitter():
    wifi = generate("fedspine-testbed-wifi", n_devices=80, seed=2)
    lag1 = np.mean([np.corrcoef(d.down_bps.values[:-1], d.down_bps.values[1:])[0, 1] for d in wifi.devices])
    assert abs(lag1) < 0.1  # FLASH-style independent draws every slot
    steady = generate("fedspine-testbed", n_devices=10, seed=2, link_jitter=0.0)
    assert all(len(d.down_bps.values) == 1 and d.down_bps.values[0] == d.up_bps.values[0] for d in steady.devices)
    wild = generate("fedspine-testbed", n_devices=200, seed=2, link_jitter=0.4, link_jitter_corr=0.0)
    lag1 = np.mean([np.corrcoef(np.log(d.down_bps.values[:-1]), np.log(d.down_bps.values[1:]))[0, 1]
                    for d in wild.devices])
    assert abs(lag1) < 0.1


def test_boards_share_four_half_duplex_access_points_by_default():
    pop = generate("fedspine-testbed")
    assert sorted(pop.access_points) == ["ap00", "ap01", "ap02", "ap03"]
    for ap in pop.access_points.values():
        assert ap.downlink_bps == 25e6 and ap.duplex == "half"
    per_ap = {name: [d.device_type for d in pop.devices if d.ap == name] for name in pop.access_points}
    assert all(len(v) == 20 for v in per_ap.values())
    assert all(set(v) == set(tb.MIX) for v in per_ap.values())  # every AP holds boards of every type
    private = generate("fedspine-testbed", n_devices=8, access_points=0)
    assert not private.access_points and all(d.ap == "" for d in private.devices)


def test_usable_ram_is_visible_ram_less_the_os_reserve():
    pop = generate("fedspine-testbed", n_devices=8)
    for d in pop.devices:
        assert d.ram_bytes == DOC_USABLE_MIB[d.device_type] * MIB
    pop = generate("fedspine-testbed", n_devices=8, os_reserve_bytes=0.0)
    assert {d.device_type: d.ram_bytes for d in pop.devices}["tx2"] == 7850 * MIB
    with pytest.raises(OptionError, match="os_reserve_bytes: .* leaves a tx2 no usable RAM"):
        generate("fedspine-testbed", n_devices=8, os_reserve_bytes=8.0 * GIB)


def test_option_errors():
    with pytest.raises(OptionError, match="link_min_bytes_s .* must not exceed link_max_bytes_s"):
        generate("fedspine-testbed", n_devices=4, link_min_bytes_s=2e7)
    with pytest.raises(OptionError, match="link_jitter_corr: expected a number in \\[0, 1\\]"):
        generate("fedspine-testbed", n_devices=4, link_jitter_corr=1.5)
    with pytest.raises(OptionError, match="compute_spread"):
        generate("fedspine-testbed", n_devices=4, compute_spread=-1.0)


def test_profiles_replace_a_board_types_throughput_and_ram(tmp_path):
    path = write_profile(Profile("tx2", 2.0e11, 1e9, usable_ram_bytes=5.5 * GIB), tmp_path / "tx2.json")
    pop = generate("fedspine-testbed", n_devices=16, seed=0, profiles={"tx2": str(path)})
    base = generate("fedspine-testbed", n_devices=16, seed=0)
    for d, b in zip(pop.devices, base.devices):
        if d.device_type == "tx2":
            assert d.compute_flops.values.max() <= 2.0e11 and d.ram_bytes == 5.5 * GIB
            assert d.compute_flops.values / b.compute_flops.values == pytest.approx(2.0e11 / 332.8e9)
        else:  # other types keep their spec-derived speed (compute_spread 1)
            assert d.compute_flops.values.tolist() == b.compute_flops.values.tolist() and d.ram_bytes == b.ram_bytes
    assert pop.meta["max_mode_flops"]["tx2"] == 2.0e11
    # a profile measured in MAXQ (850 MHz) scales up to the MAXN level by the clock ratio
    maxq = write_profile(Profile("tx2", 1.0e11, power_mode="MAXQ"), tmp_path / "maxq.json")
    pop = generate("fedspine-testbed", n_devices=8, seed=0, max_mode_share=1.0, profiles={"tx2": str(maxq)})
    assert [d for d in pop.devices if d.device_type == "tx2"][0].compute_flops.values[0] == pytest.approx(1e11 * 1300 / 850)
    with pytest.raises(OptionError, match="profiles.agx-xavier: .* is a profile of device type 'tx2'"):
        generate("fedspine-testbed", n_devices=8, profiles={"agx-xavier": str(path)})
    with pytest.raises(OptionError, match="profiles.tx2: .*missing.json: no such profile file"):
        generate("fedspine-testbed", n_devices=8, profiles={"tx2": str(tmp_path / "missing.json")})
    with pytest.raises(OptionError, match="profiles.phone: not a board type"):
        generate("fedspine-testbed", n_devices=8, profiles={"phone": str(path)})
    bad = write_profile(Profile("tx2", 1.0e11, power_mode="TURBO"), tmp_path / "bad.json")
    with pytest.raises(OptionError, match="power_mode 'TURBO' is not a mode of tx2"):
        generate("fedspine-testbed", n_devices=8, profiles={"tx2": str(bad)})


def _digest(pop) -> str:
    """A hash of everything a trace holds (ids, types, RAM, latency, AP, every series, availability, APs)."""
    h = hashlib.sha256()
    for d in pop.devices:
        h.update(f"{d.device_id}|{d.device_type}|{d.ram_bytes!r}|{d.latency_s!r}|{d.ap}|".encode())
        for s in (d.compute_flops, d.down_bps, d.up_bps):
            h.update(np.asarray(s.times_s, dtype=np.float64).tobytes())
            h.update(np.asarray(s.values, dtype=np.float64).tobytes())
            h.update(repr(s.period_s).encode())
        a = d.availability
        h.update(repr((tuple(a.starts), tuple(a.ends), a.period_s)).encode())
    for name in sorted(pop.access_points):
        ap = pop.access_points[name]
        h.update(repr((ap.name, ap.downlink_bps, ap.uplink_bps, ap.duplex)).encode())
    return h.hexdigest()


@pytest.mark.parametrize("kwargs, digest", [
    ({"seed": 0}, "24cdff814d39efb2fe2d91967288d8eef8a33df98998d963e070722f73a8d5a5"),
    ({"n_devices": 16, "seed": 5, "precision": "fp16", "online_share": 0.5, "access_points": 2, "bandwidth_scale": 0.5,
      "mode_hold_s": 120.0}, "8ef6fdab9795ce1d93927ae0bab3c70b92b8f7db35be38999893a6605531049d"),
])
def test_wifi_variant_is_the_first_generator_unchanged(kwargs, digest):
    """The digests are those of the populations ``fedspine-testbed`` generated before v2 (commit 3da483d)."""
    assert _digest(generate("fedspine-testbed-wifi", **kwargs)) == digest


def test_provenance_names_the_version_and_is_json():
    pop = generate("fedspine-testbed", n_devices=8)
    assert pop.meta["generator"] == "fedspine-testbed" and pop.meta["version"] == 2
    json.dumps(pop.meta)
    assert math.isclose(pop.meta["usable_ram_bytes"]["tx2"], 6185 * MIB)
