"""Trace generators: deterministic, the paper's device mix, documented specs, plausible magnitudes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from simfed.timing.generators import GENERATORS, generate
from simfed.timing.generators import fedspine_testbed as tb
from simfed.timing.generators import phones
from simfed.timing.tracefile import read_population, write_population


def _fingerprint(pop):
    return [
        (d.device_id, d.device_type, d.ram_bytes, d.latency_s, d.compute_flops._cum, d.down_bps._cum, d.up_bps._cum,
         d.availability.starts, d.availability.ends)
        for d in pop.devices
    ]  # fmt: skip


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_same_seed_same_population_other_seed_differs(name):
    a = generate(name, n_devices=40, seed=3)
    b = generate(name, n_devices=40, seed=3)
    c = generate(name, n_devices=40, seed=4)
    assert _fingerprint(a) == _fingerprint(b)
    assert _fingerprint(a) != _fingerprint(c)
    assert a.meta["generator"] == name and a.meta["seed"] == 3


def test_testbed_mix_ram_and_power_modes():
    pop = generate("fedspine-testbed-wifi")
    types = [d.device_type for d in pop.devices]
    assert (types.count("tx2"), types.count("xavier-nx"), types.count("agx-xavier")) == (30, 40, 10)
    assert len({d.device_id for d in pop.devices}) == 80
    for d in pop.devices:
        spec = tb.BOARDS[d.device_type]
        assert d.ram_bytes == spec["ram_bytes"]
        assert d.availability.is_always
        # every compute level is one of the board's documented modes at the default efficiency
        allowed = {tb.peak_flops(d.device_type, mhz) * 0.3 for mhz in spec["modes"].values()}
        assert set(d.compute_flops.values.tolist()) <= allowed
        assert d.compute_flops.period_s == 3600.0
    # modes do switch (roughly every 5 minutes on average), so compute varies over time for most boards
    n_switching = sum(len(d.compute_flops.values) > 1 for d in pop.devices)
    assert n_switching > 60
    mean_switches = np.mean([len(d.compute_flops.values) - 1 for d in pop.devices])
    assert 3 < mean_switches < 15  # 60 one-minute slots, switch probability 1/5 -> ~12 draws, some repeat a clock


def test_testbed_peak_specs_match_published_numbers():
    # TX2 FP16 peak at MAXN is NVIDIA's 1.33 TFLOPS; AGX Xavier FP32 CUDA-core peak 1.41 TFLOPS
    assert tb.peak_flops("tx2", 1300.0, "fp16") == pytest.approx(1.33e12, rel=0.01)
    assert tb.peak_flops("agx-xavier", 1377.0) == pytest.approx(1.41e12, rel=0.01)
    # board ordering at maximum clocks: TX2 < NX < AGX
    top = {t: tb.peak_flops(t, max(s["modes"].values())) for t, s in tb.BOARDS.items()}
    assert top["tx2"] < top["xavier-nx"] < top["agx-xavier"]


def test_testbed_wifi_bandwidth_follows_flash_distribution():
    pop = generate("fedspine-testbed-wifi", n_devices=800, seed=1)
    down_kib = np.array([d.down_bps.mean() for d in pop.devices]) / 1024
    up_kib = np.array([d.up_bps.mean() for d in pop.devices]) / 1024
    # medians of per-device means land near FLASH's medians (4,318 / 3,286 KB/s)
    assert np.median(down_kib) == pytest.approx(4318, rel=0.15)
    assert np.median(up_kib) == pytest.approx(3286, rel=0.15)
    assert (down_kib > 0).all() and all(d.down_bps.values.min() > 0 for d in pop.devices)
    # per-slot fluctuation around the device mean, cv near FLASH's 0.37
    cv = np.median([d.down_bps.values.std() / d.down_bps.values.mean() for d in pop.devices])
    assert 0.25 < cv < 0.45


def test_testbed_scaling_and_availability_option():
    pop = generate("fedspine-testbed", n_devices=8, seed=0, online_share=0.5, mean_online_s=600.0)
    assert [d.device_type for d in pop.devices].count("tx2") == 3
    on_share = np.mean([sum(e - s for s, e in zip(d.availability.starts, d.availability.ends)) / 3600 for d in pop.devices])
    assert 0.2 < on_share < 0.8
    assert not any(d.availability.is_always for d in pop.devices)
    with pytest.raises(ValueError, match="efficiency"):
        generate("fedspine-testbed", efficiency=2.0)
    with pytest.raises(ValueError, match="unknown trace generator 'nope'"):
        generate("nope")


def test_phone_score_to_flops_anchor():
    # the anchor reproduces FLASH's measured Pixel 4 / Nexus S per-batch times within the fit's residual
    a, b = phones.score_to_flops_fit()
    per_batch = phones.femnist_cnn_train_flops_per_sample() * phones.FEMNIST_BATCH
    for _, score, ms in phones.FLASH_TRAIN_ANCHORS:
        predicted_ms = per_batch / math.exp(a + b * math.log(score)) * 1000
        assert predicted_ms == pytest.approx(ms, rel=0.35)
    assert 0 < b < 1  # faster phones are faster, sub-linearly in score


def test_phones_population_statistics():
    pop = generate("phones", n_devices=2000, seed=0)
    flops = np.array([d.compute_flops.mean() for d in pop.devices])
    ram = np.array([d.ram_bytes for d in pop.devices]) / 1024**3
    assert set(np.unique(ram)) <= set(phones.RAM_GB_COUNTS)
    # score and RAM are drawn jointly: faster phones have more RAM
    assert np.corrcoef(np.argsort(np.argsort(flops)), np.argsort(np.argsort(ram)))[0, 1] > 0.6
    # compute spans the phones' range: slowest around a Nexus S, fastest beyond a Pixel 4
    assert flops.max() / flops.min() > 8
    types = [d.device_type for d in pop.devices]
    assert 0.2 < types.count("phone-cellular") / len(types) < 0.3
    cell = [d for d in pop.devices if d.device_type == "phone-cellular"]
    assert all(d.down_bps.period_s == 600.0 and len(d.down_bps.times_s) == 600 for d in cell)
    # cellular is per-second and persistent (lag-1 autocorrelation high), with uplink at the documented ratio
    x = cell[0].down_bps.values
    assert np.corrcoef(x[:-1], x[1:])[0, 1] > 0.7
    assert cell[0].up_bps.mean() == pytest.approx(cell[0].down_bps.mean() * 0.16)
    # diurnal availability: mean online share near FedScale's 0.41, more phones online at night
    shares = [sum(e - s for s, e in zip(d.availability.starts, d.availability.ends)) / 86400 for d in pop.devices]
    assert 0.3 < np.mean(shares) < 0.45
    night = np.mean([d.availability.is_online(23.5 * 3600) for d in pop.devices])
    noon = np.mean([d.availability.is_online(12 * 3600) for d in pop.devices])
    assert night > noon


def test_generated_population_round_trips(tmp_path):
    pop = generate("phones", n_devices=30, seed=2)
    back = read_population(write_population(pop, tmp_path / "p"))
    assert _fingerprint(back) == _fingerprint(pop)
    assert back.meta["generator"] == "phones"
