"""The ``phones`` generator in chunks: small populations as before, large ones on a trace library."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from simfed.cli import main
from simfed.timing.generators import generate, phones
from simfed.timing.packed import PackedPopulation
from simfed.timing.tracefile import TraceWriter, read_population, write_population
from simfed.timing.traces import SeriesRef


def _fingerprint(pop):
    out = []
    for d in pop.devices:
        row = [d.device_id, d.device_type, d.ram_bytes, d.latency_s, d.ap, d.availability.starts, d.availability.ends]
        for s in (d.compute_flops, d.down_bps, d.up_bps):
            if type(s) is SeriesRef:
                row += [s.series_id, s.offset_s, s.scale]
                s = s.base
            row += [s._cum, s.period_s]
        out.append(row)
    return out


def test_a_population_of_one_chunk_is_the_stream_collected():
    pop = generate("phones", n_devices=60, seed=4)
    st = phones.stream(n_devices=60, seed=4)
    assert _fingerprint(st.population()) == _fingerprint(pop)
    assert st.library == {} and "library_size" not in pop.meta["params"]
    assert not any(type(d.down_bps) is SeriesRef for d in pop.devices)  # own series, as before


def test_chunks_continue_one_random_stream(monkeypatch):
    """The first chunk is exactly the population of one chunk's size; later chunks go on drawing."""
    monkeypatch.setattr(phones, "CHUNK_DEVICES", 7)
    small = phones.generate(n_devices=7, seed=2, library_size=0)
    big = phones.generate(n_devices=20, seed=2, library_size=0, access_points=3)
    assert [len(c) for c in phones.stream(n_devices=20, seed=2, library_size=0).chunks()] == [7, 7, 6]
    strip = [row[:4] + row[5:] for row in _fingerprint(big)[:7]]
    assert strip == [row[:4] + row[5:] for row in _fingerprint(small)]
    assert _fingerprint(big) == _fingerprint(phones.generate(n_devices=20, seed=2, library_size=0, access_points=3))
    assert len({d.device_id for d in big.devices}) == 20
    assert [d.ap for d in big.devices[:7]] == ["ap00", "ap01", "ap02", "ap00", "ap01", "ap02", "ap00"]
    assert big.devices[7].ap == "ap01"  # round robin over the whole population, not per chunk


def test_library_is_the_default_above_one_chunk(monkeypatch):
    monkeypatch.setattr(phones, "CHUNK_DEVICES", 50)
    assert phones.stream(n_devices=50).library == {}
    st = phones.stream(n_devices=51, cellular_period_s=30.0)
    assert st.meta["params"]["library_size"] == phones.LIBRARY_SIZE_ABOVE_ONE_CHUNK
    assert len(st.library["downlink"]) == 2 * phones.LIBRARY_SIZE_ABOVE_ONE_CHUNK


def test_library_population_keeps_the_distributions():
    n, size = 4000, 40
    lib = generate("phones", n_devices=n, seed=0, library_size=size)
    own = generate("phones", n_devices=n, seed=0, library_size=0)
    # per-phone compute and RAM come first in both modes: the same phones
    assert [d.compute_flops.mean() for d in lib.devices] == [d.compute_flops.mean() for d in own.devices]
    assert [d.ram_bytes for d in lib.devices] == [d.ram_bytes for d in own.devices]
    cell = [d for d in lib.devices if d.device_type == "phone-cellular"]
    wifi = [d for d in lib.devices if d.device_type == "phone-wifi"]
    assert 0.2 < len(cell) / n < 0.3
    for d in lib.devices:
        assert type(d.down_bps) is SeriesRef and d.down_bps.series_id in lib.library["downlink"]
        assert d.down_bps.base is lib.library["downlink"][d.down_bps.series_id]
    assert all(d.down_bps.series_id.startswith("cell-") and d.down_bps.offset_s == int(d.down_bps.offset_s) < 600
               and d.up_bps.scale == 0.16 and d.up_bps.series_id == d.down_bps.series_id for d in cell)
    assert all(d.down_bps.series_id.startswith("wifi-") and d.down_bps.offset_s % 60 == 0 for d in wifi)
    # Wi-Fi: per-phone means from FLASH's distribution, per-slot Normal(1, cv) patterns from the library
    down_kib = np.array([d.down_bps.mean() for d in wifi]) / 1024
    own_kib = np.array([d.down_bps.mean() for d in own.devices if d.device_type == "phone-wifi"]) / 1024
    assert np.median(down_kib) == pytest.approx(4318, rel=0.15) and np.median(down_kib) == pytest.approx(np.median(own_kib), rel=0.05)
    base = lib.library["downlink"]["wifi-000"].values
    assert base.mean() == pytest.approx(1.0, abs=0.15) and 0.25 < base.std() < 0.5
    # cellular: per-second, persistent, the 5Gophers marginal
    x = lib.library["downlink"]["cell-000"].values
    assert len(x) == 600 and np.corrcoef(x[:-1], x[1:])[0, 1] > 0.7
    cell_mbps = np.array([d.down_bps.mean() for d in cell]) * 8 / 1e6
    own_cell = np.array([d.down_bps.mean() for d in own.devices if d.device_type == "phone-cellular"]) * 8 / 1e6
    assert np.median(cell_mbps) == pytest.approx(np.median(own_cell), rel=0.15)
    # availability: the same diurnal model
    shares = [sum(e - s for s, e in zip(d.availability.starts, d.availability.ends)) / 86400 for d in lib.devices]
    assert 0.3 < np.mean(shares) < 0.45
    night = np.mean([d.availability.is_online(23.5 * 3600) for d in lib.devices])
    noon = np.mean([d.availability.is_online(12 * 3600) for d in lib.devices])
    assert night > noon
    # compact: the packed population holds the library once
    pk = PackedPopulation.of(lib)
    assert pk.down_bps.times_s.size == size * 60 + size * 600 and pk.up_bps.times_s.size == size * 60 + size * 600


def test_diurnal_batch_draws_the_scalar_model():
    rng = np.random.default_rng(0)
    m = 6000
    shares = rng.beta(0.408 * 5, 0.592 * 5, m)
    n_sess = 1 + rng.poisson(1 / 3, m)
    batch = phones.diurnal_sessions_batch(np.random.default_rng(1), shares, n_sess)
    scalar = [phones.diurnal_sessions(np.random.default_rng(10 + i), float(shares[i]), int(n_sess[i])) for i in range(m)]
    for (s, e), share, k in zip(batch, shares, n_sess):
        assert len(s) == len(e) >= 1 and all(x % 60 == 0 for x in s + e)
        assert all(0 <= a < b <= 86400 for a, b in zip(s, e)) and all(b < a for b, a in zip(e[:-1], s[1:]))
        if k == 1:  # one session: exactly its length, wherever it starts
            assert sum(b - a for a, b in zip(s, e)) == max(1, round(share * 1440)) * 60
    def stats(sessions):
        online = np.array([sum(b - a for a, b in zip(s, e)) for s, e in sessions]) / 86400
        at = lambda h: np.mean([any(a <= h * 3600 < b for a, b in zip(s, e)) for s, e in sessions])  # noqa: E731
        return online.mean(), at(23.5), at(12.0), np.mean([len(s) for s, _ in sessions])
    for x, y in zip(stats(batch), stats(scalar)):
        assert x == pytest.approx(y, rel=0.06)


def test_cli_streams_chunk_by_chunk_and_writes_what_write_population_writes(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(phones, "CHUNK_DEVICES", 25)
    calls = []
    real_add = TraceWriter.add
    monkeypatch.setattr(TraceWriter, "add", lambda self, devs: (calls.append(len(devs)), real_add(self, devs))[1])
    out = tmp_path / "cli"
    assert main(["traces", "generate", "phones", "--out", str(out), "--devices", "60", "--seed", "3",
                 "--set", "library_size=12", "--set", "cellular_period_s=40"]) == 0
    assert calls == [25, 25, 10]
    ref = write_population(phones.generate(n_devices=60, seed=3, library_size=12, cellular_period_s=40.0), tmp_path / "ref")
    files = sorted(p.relative_to(ref) for p in ref.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert Path("library/downlink.csv") in files and Path("downlink.csv") not in files
    for f in files:
        assert (out / f).read_bytes() == (ref / f).read_bytes(), f
    assert len(read_population(out)) == 60
