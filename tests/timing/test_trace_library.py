"""The trace library: base series stored once, replayed by devices with their own offset and scale.

Must show (issue #14): a device that replays a library series gives, bit for bit, the answers of the
same series written out as the device's own rows (same offset and scale), through the scalar replay,
the packed replay and whole engine rounds; the packed form keeps each base series once.
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from _helpers import TableCost, fixed_loop, round_rows, timing_rows  # noqa: E402

from simfed.errors import SimfedWarning  # noqa: E402
from simfed.records import Arm  # noqa: E402
from simfed.timing.cost import PlanCost  # noqa: E402
from simfed.timing.engine import Engine, EngineConfig  # noqa: E402
from simfed.timing.packed import PackedPopulation, PackedSeries  # noqa: E402
from simfed.timing.tracefile import TraceWriter, read_population, write_population  # noqa: E402
from simfed.timing.traces import Availability, DeviceTrace, Population, Series, SeriesRef, TraceError  # noqa: E402

KINDS = {"compute": "compute_flops", "downlink": "down_bps", "uplink": "up_bps"}


def _random_series(rng: np.random.Generator, scale: float, steps: int, period: float, *, grid: bool = False) -> Series:
    if grid:  # integer breakpoints: every rotation is exact
        times = np.arange(steps, dtype=float) * (period // steps)
    else:
        times = np.concatenate([[0.0], np.sort(rng.uniform(0, period, steps - 1))])
    values = scale * rng.lognormal(0.0, 0.6, steps) * (rng.random(steps) > 0.15)
    values[0] = values[0] or scale  # not all zero
    return Series.make(times, values, period)


def library_population(n: int = 40, seed: int = 0) -> Population:
    """Devices replaying a small library (float and whole-second offsets, various scales), plus devices
    with plain own series and devices with own series shifted and scaled."""
    rng = np.random.default_rng(seed)
    lib = {
        "compute": {f"c{k}": _random_series(rng, 1e9, int(rng.integers(1, 8)), float(rng.uniform(100, 400))) for k in range(3)},
        "downlink": {f"d{k}": _random_series(rng, 2e5, int(rng.integers(2, 30)), 600.0, grid=k % 2 == 0) for k in range(4)},
        "uplink": {f"u{k}": _random_series(rng, 1e5, int(rng.integers(1, 6)), float(rng.uniform(50, 200))) for k in range(2)},
    }
    devs = []
    for i in range(n):
        series = {}
        for kind in KINDS:
            choice = rng.random()
            if choice < 0.6:
                sid = str(rng.choice(sorted(lib[kind])))
                base = lib[kind][sid]
                off = float(rng.integers(0, int(base.period_s))) if rng.random() < 0.5 else float(rng.uniform(0, 2 * base.period_s))
                series[kind] = SeriesRef(base, off, float(rng.choice([1.0, 0.16, rng.uniform(0.2, 5.0)])), sid)
            elif choice < 0.8:
                series[kind] = SeriesRef(_random_series(rng, 3e5, 4, 120.0), float(rng.uniform(0, 100)), float(rng.uniform(0.5, 2)))
            else:
                series[kind] = _random_series(rng, 1e9 if kind == "compute" else 2e5, int(rng.integers(1, 6)), 300.0)
        if rng.random() < 0.6:
            period = float(rng.uniform(300, 900))
            cuts = np.sort(rng.uniform(0, period, 6))
            avail = Availability.make(cuts[0::2], cuts[1::2], period)
        else:
            avail = Availability.always()
        devs.append(DeviceTrace(f"dev{i:04d}", "a" if i % 2 else "b", series["compute"], series["downlink"], series["uplink"],
                                float(rng.uniform(0.0, 0.2)), float(rng.choice([4e9, 8e9, 16e9])), avail))
    return Population(tuple(devs), {"generator": "test-library", "seed": seed}, {}, lib)


def written_out(pop: Population) -> Population:
    """The same population with every library series written out as the device's own rows (same offset, scale)."""
    copies: dict[int, Series] = {}

    def own(s):
        if type(s) is SeriesRef and s.series_id is not None:
            base = copies.setdefault(id(s.base), Series.make(s.base.times_s.copy(), s.base.values.copy(), s.base.period_s))
            return SeriesRef(Series.make(base.times_s, base.values, base.period_s), s.offset_s, s.scale)
        return s

    devs = tuple(replace(d, compute_flops=own(d.compute_flops), down_bps=own(d.down_bps), up_bps=own(d.up_bps))
                 for d in pop.devices)
    return Population(devs, pop.meta, pop.access_points)


def _queries(n: int, m: int, seed: int):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, m)
    t0 = np.where(rng.random(m) < 0.1, 0.0, rng.uniform(0, 5e3, m))
    t0[:3] = [-1.0, 0.0, 1e-9]
    amount = rng.uniform(0, 5e6, m) * np.where(rng.random(m) < 0.05, 0.0, 1.0)
    return idx, t0, amount


def _answers(pop: Population, packed: bool, idx, t0, amount) -> dict:
    out = {}
    if packed:
        pk = PackedPopulation.from_population(pop)
        for attr in KINDS.values():
            s = getattr(pk, attr)
            out[attr] = (s.finish_time(idx, t0, amount), s.amount(idx, t0, t0 + amount / 1e5),
                         s.rate_at(idx, t0), s.cumulative(idx, t0), s.mean()[idx])
    else:
        for attr in KINDS.values():
            ss = [getattr(pop.devices[i], attr) for i in idx]
            out[attr] = (np.array([s.finish_time(a, w) for s, a, w in zip(ss, t0, amount)]),
                         np.array([s.amount(a, a + w / 1e5) for s, a, w in zip(ss, t0, amount)]),
                         np.array([s.rate_at(a) for s, a in zip(ss, t0)]),
                         np.array([s.cumulative(a) for s, a in zip(ss, t0)]),
                         np.array([s.mean() for s in ss]))
    return out


def _assert_same(a: dict, b: dict) -> None:
    for attr in KINDS.values():
        for x, y in zip(a[attr], b[attr]):
            np.testing.assert_array_equal(x, y, strict=True)


# --------------------------------------------------------------------------- the must-show equivalence


def test_library_reference_replays_exactly_like_the_series_written_out_per_device(tmp_path: Path):
    """Through the file format: library/ rows + references vs the same rows under each device; scalar and
    packed replay, bit for bit, and both equal to the in-memory population."""
    pop = library_population(40, seed=1)
    lib_dir = write_population(pop, tmp_path / "lib")
    own_dir = write_population(written_out(pop), tmp_path / "own")
    # the two layouts really differ on disk: references vs per-device rows
    dev = pd.read_csv(lib_dir / "devices.csv", dtype={"downlink_series": str})
    assert dev["downlink_series"].notna().sum() > 10 and (lib_dir / "library" / "downlink.csv").is_file()
    assert "downlink_series" not in pd.read_csv(own_dir / "devices.csv").columns
    assert not (own_dir / "library").exists()
    lib_rows = pd.read_csv(lib_dir / "downlink.csv")
    own_rows = pd.read_csv(own_dir / "downlink.csv")
    assert len(own_rows) > len(lib_rows)
    a, b = read_population(lib_dir), read_population(own_dir)
    assert sum(type(d.down_bps) is SeriesRef and d.down_bps.series_id is not None for d in a.devices) > 10
    assert not any(type(d.down_bps) is SeriesRef and d.down_bps.series_id is not None for d in b.devices)
    idx, t0, amount = _queries(len(pop), 3000, seed=2)
    ref = _answers(pop, False, idx, t0, amount)
    for p in (a, b):
        _assert_same(_answers(p, False, idx, t0, amount), ref)
        _assert_same(_answers(p, True, idx, t0, amount), ref)


@pytest.mark.parametrize("cfg", [EngineConfig(), EngineConfig(deadline_s=60.0),
                                 EngineConfig(participants=12, overcommit=1.3, seed=4)], ids=["all", "deadline", "overcommit"])
def test_engine_rounds_are_identical_for_library_and_written_out_series(cfg: EngineConfig):
    """Whole rounds (vectorised path and SimPy path) on the library population and on its written-out twin."""
    pop = library_population(40, seed=3)
    twin = written_out(pop)
    cost = TableCost(PlanCost(flops=5e10, down_bytes=3e6, up_bytes=2e6, memory_bytes=1e9))
    runs = []
    for p in (pop, twin):
        for contended in (False, True):
            driver = fixed_loop(Arm(0.1, 8), 0.5, 20, 10)
            runs.append(Engine(p, cost, cfg, driver, contended=contended).run(4))
    first = runs[0]
    for other in runs[1:]:
        assert round_rows(other.rounds) == round_rows(first.rounds)
        assert timing_rows(other.timings) == timing_rows(first.timings)
        assert other.events == first.events


# --------------------------------------------------------------------------- SeriesRef arithmetic


def test_zero_offset_unit_scale_is_the_base_itself():
    rng = np.random.default_rng(4)
    for _ in range(20):
        base = _random_series(rng, 1e6, int(rng.integers(1, 12)), float(rng.uniform(10, 100)))
        ref = SeriesRef(base, 0.0, 1.0, "x")
        for t in np.concatenate([[-3.0, 0.0], rng.uniform(0, 1e3, 40)]):
            a = float(rng.uniform(0, 1e9))
            assert ref.finish_time(t, a) == base.finish_time(t, a)
            assert ref.cumulative(t) == base.cumulative(t)
            assert ref.rate_at(t) == base.rate_at(t)
            assert ref.next_change(t) == base.next_change(t)
        assert ref.mean() == base.mean() and ref.total_per_period == base.total_per_period


def _brute_rate(s: Series, t: float) -> float:
    u = t % s.period_s
    return float(s.values[np.searchsorted(s.times_s, u, side="right") - 1])


def test_offset_and_scale_mean_rate_is_scale_times_base_from_the_offset():
    rng = np.random.default_rng(5)
    base = Series.make([0.0, 2.0, 5.0, 9.0], [3.0, 0.0, 7.0, 1.0], 12.0)
    ref = SeriesRef(base, 7.0, 0.5, "b")
    for t in rng.uniform(0, 100, 200):
        assert ref.rate_at(t) == 0.5 * _brute_rate(base, t + 7.0)
    # the whole first period from the offset: 0.5 * (7*... ) -- integrate by hand on [7, 19)
    assert ref.amount(0.0, 12.0) == 0.5 * base.total_per_period
    assert ref.cumulative(2.0) == 0.5 * 7.0 * 2  # [7, 9) at rate 7
    assert ref.finish_time(0.0, 0.5 * 7.0 * 2 + 0.5 * 1.0 * 3) == 5.0  # [7,9) rate 7, then [9,12) rate 1
    assert ref.next_change(0.0) == 2.0 and ref.next_change(2.0) == 5.0 and ref.next_change(5.0) == 7.0


@settings(max_examples=80, deadline=None)
@given(steps=st.integers(1, 8), period_steps=st.integers(1, 4), offset=st.integers(0, 200),
       scale=st.sampled_from([1.0, 0.5, 2.0, 0.25]), t=st.integers(0, 400), amount=st.integers(0, 5000))
def test_integer_data_replays_exactly_like_the_rotated_series(steps, period_steps, offset, scale, t, amount):
    """With integer times and offsets, power-of-two rates and scales every sum and quotient is exact, so
    the reference and its materialised (rotated, scaled) per-device form agree bit for bit (in general
    they agree to round-off: next test)."""
    rng = np.random.default_rng(steps * 1000 + offset)
    times = np.arange(steps, dtype=float) * 3.0
    values = 2.0 ** rng.integers(0, 5, steps) * (rng.random(steps) < 0.8)
    values[0] = 4.0
    base = Series.make(times, values, float(times[-1] + 3.0 * period_steps))
    ref = SeriesRef(base, float(offset), scale, "r")
    flat = ref.materialize()
    assert flat.period_s == base.period_s and flat.times_s[0] == 0.0
    assert ref.rate_at(t) == flat.rate_at(t)
    assert ref.cumulative(t) == flat.cumulative(t)
    assert ref.amount(t, t + 7) == flat.amount(t, t + 7)
    assert ref.finish_time(t, amount) == flat.finish_time(t, amount)


def test_float_data_rotated_series_agrees_to_round_off():
    rng = np.random.default_rng(6)
    for _ in range(30):
        base = _random_series(rng, 1e6, int(rng.integers(1, 40)), float(rng.uniform(10, 600)))
        ref = SeriesRef(base, float(rng.uniform(0, 3 * base.period_s)), float(rng.uniform(0.1, 10)), "f")
        flat = ref.materialize()
        for t in rng.uniform(0, 5e3, 20):
            a = float(rng.uniform(0, 1e9))
            assert ref.finish_time(t, a) == pytest.approx(flat.finish_time(t, a), rel=1e-10, abs=1e-6)
            assert ref.cumulative(t) == pytest.approx(flat.cumulative(t), rel=1e-10, abs=1e-3)
        assert ref.mean() == pytest.approx(flat.mean(), rel=1e-12)


def test_bad_offset_or_scale_is_an_error():
    base = Series.constant(1.0)
    for off, sc, word in ((-1.0, 1.0, "offset"), (math.inf, 1.0, "offset"), (0.0, 0.0, "scale"), (0.0, math.nan, "scale")):
        with pytest.raises(TraceError, match=f"library series 'x': {word}"):
            SeriesRef(base, off, sc, "x")


# --------------------------------------------------------------------------- packed: exact and compact


@st.composite
def _refs(draw):
    rng = np.random.default_rng(draw(st.integers(0, 10**6)))
    bases = [_random_series(rng, 10.0, int(rng.integers(1, 6)), float(rng.integers(5, 40)), grid=bool(rng.random() < 0.5))
             for _ in range(3)]
    out = []
    for _ in range(draw(st.integers(1, 8))):
        b = bases[int(rng.integers(0, 3))]
        kind = rng.random()
        if kind < 0.3:
            out.append(b)  # a plain series among references
        else:
            out.append(SeriesRef(b, float(rng.choice([0.0, rng.integers(0, 50), rng.uniform(0, 80)])),
                                 float(rng.choice([1.0, rng.uniform(0.1, 9)])), "s"))
    return out


@settings(max_examples=60, deadline=None)
@given(many=_refs(), queries=st.lists(st.tuples(st.integers(0, 7), st.floats(-5, 1e4), st.floats(0, 1e4)), min_size=1, max_size=25))
def test_packed_references_equal_scalar(many, queries):
    packed = PackedSeries.from_series(many)
    idx = np.array([q[0] % len(many) for q in queries])
    t0 = np.array([q[1] for q in queries])
    amount = np.array([q[2] for q in queries])
    ft, am = packed.finish_time(idx, t0, amount), packed.amount(idx, t0, t0 + amount)
    rate, cum = packed.rate_at(idx, t0), packed.cumulative(idx, t0)
    for q in range(len(queries)):
        s = many[idx[q]]
        assert ft[q] == s.finish_time(t0[q], amount[q])
        assert am[q] == s.amount(t0[q], t0[q] + amount[q])
        assert rate[q] == s.rate_at(t0[q])
        assert cum[q] == s.cumulative(t0[q])
    np.testing.assert_array_equal(packed.mean(), [s.mean() for s in many])


def test_packed_population_stores_each_library_series_once():
    rng = np.random.default_rng(7)
    lib = [_random_series(rng, 1e6, 600, 600.0, grid=True) for _ in range(30)]
    n = 20_000
    k = rng.integers(0, 30, n)
    off = rng.integers(0, 600, n).astype(float)
    refs = [SeriesRef(lib[j], o, 1.0, f"s{j}") for j, o in zip(k.tolist(), off.tolist())]
    packed = PackedSeries.from_series(refs)
    assert packed.times_s.size == 30 * 600 and packed.cum.size == 30 * 601  # not 20,000 x 600
    assert len(packed) == n and packed.base.size == n and packed.shifted
    # plain series are not shifted and keep the original arithmetic
    plain = PackedSeries.from_series(lib)
    assert not plain.shifted and plain.times_s.size == 30 * 600


# --------------------------------------------------------------------------- the file format


def test_round_trip_keeps_library_and_references(tmp_path: Path):
    pop = library_population(25, seed=8)
    back = read_population(write_population(pop, tmp_path / "p"))
    assert {k: sorted(v) for k, v in back.library.items()} == {k: sorted(v) for k, v in pop.library.items()}
    for a, b in zip(pop.devices, back.devices):
        for attr in KINDS.values():
            sa, sb = getattr(a, attr), getattr(b, attr)
            assert type(sa) is type(sb)
            if type(sa) is SeriesRef:
                assert (sa.offset_s, sa.scale, sa.series_id) == (sb.offset_s, sb.scale, sb.series_id)
                sa, sb = sa.base, sb.base
            np.testing.assert_array_equal(sa.times_s, sb.times_s)
            np.testing.assert_array_equal(sa.values, sb.values)
            assert sa.period_s == sb.period_s and sa._cum == sb._cum
    # one Series object per library name, shared by all its devices
    users = [d.down_bps for d in back.devices if type(d.down_bps) is SeriesRef and d.down_bps.series_id == "d0"]
    assert len(users) > 1 and all(u.base is back.library["downlink"]["d0"] for u in users)


def test_unused_library_series_are_kept(tmp_path: Path):
    pop = library_population(6, seed=9)
    extra = dict(pop.library["uplink"], spare=Series.make([0.0, 1.0], [5.0, 6.0], 4.0))
    pop = replace(pop, library=dict(pop.library, uplink=extra))
    back = read_population(write_population(pop, tmp_path / "p"))
    assert back.library["uplink"]["spare"].period_s == 4.0


def test_devices_without_own_rows_need_no_series_file(tmp_path: Path):
    base = Series.make([0.0, 1.0], [2.0, 3.0], 2.0)
    devs = tuple(DeviceTrace(f"d{i}", "x", Series.constant(1e9), SeriesRef(base, float(i), 1.0, "b"),
                             SeriesRef(base, float(i), 0.5, "b"), 0.0, 1.0) for i in range(3))
    out = write_population(Population(devs, {}, {}, {}), tmp_path / "p")
    assert not (out / "downlink.csv").exists() and not (out / "uplink.csv").exists()
    back = read_population(out)
    assert back.devices[2].up_bps.rate_at(0.0) == 0.5 * 2.0  # offset 2 = one period: phase 0


def _edit(path: Path, fn) -> None:
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    fn(df).to_csv(path, index=False)


def _set(row: int, col: str, value):
    def fn(df):
        df.loc[row, col] = value
        return df
    return fn


def _lib_dir(tmp_path: Path) -> Path:
    return write_population(library_population(12, seed=10), tmp_path / "p")


def _first_ref_row(d: Path, kind: str = "downlink") -> tuple[int, str]:
    dev = pd.read_csv(d / "devices.csv", dtype=str, keep_default_na=False)
    r = int(np.flatnonzero(dev[f"{kind}_series"].to_numpy() != "")[0])
    return r, dev["device_id"][r]


@pytest.mark.parametrize("case", ["unknown", "negative_offset", "zero_scale", "text_scale", "period"])
def test_reference_faults_name_device_field_and_line(tmp_path: Path, case):
    d = _lib_dir(tmp_path)
    r, did = _first_ref_row(d)
    edit, pattern = {
        "unknown": (_set(r, "downlink_series", "nope"), rf"devices\.csv: device '{did}', field 'downlink_series': library series 'nope' is unknown.*line {r + 2}"),
        "negative_offset": (_set(r, "downlink_offset", "-3"), rf"devices\.csv: device '{did}', field 'downlink_offset': must be a finite time >= 0 or blank.*line {r + 2}"),
        "zero_scale": (_set(r, "downlink_scale", "0"), rf"devices\.csv: device '{did}', field 'downlink_scale': must be a finite number > 0.*line {r + 2}"),
        "text_scale": (_set(r, "downlink_scale", "fast"), rf"field 'downlink_scale'.*got 'fast' \(line {r + 2}\)"),
        "period": (lambda df: df.assign(downlink_period=["" if i != r else "50" for i in range(len(df))]),
                   rf"device '{did}', field 'downlink_period': the device replays library series .* leave it blank \(line {r + 2}\)"),
    }[case]
    _edit(d / "devices.csv", edit)
    with pytest.raises(TraceError, match=pattern):
        read_population(d)


def test_device_with_both_reference_and_own_rows_is_an_error(tmp_path: Path):
    d = _lib_dir(tmp_path)
    r, did = _first_ref_row(d)
    rows = pd.read_csv(d / "downlink.csv", dtype={"device_id": str})
    rows = pd.concat([rows, pd.DataFrame({"device_id": [did], "t": [0.0], "rate": [1.0]})], ignore_index=True)
    rows.to_csv(d / "downlink.csv", index=False)
    with pytest.raises(TraceError, match=rf"downlink\.csv: device '{did}' \(line {len(rows) + 1}\) replays library series '.*' "
                                         r"\(devices\.csv field 'downlink_series'\) and also has rows here; keep one"):
        read_population(d)


@pytest.mark.parametrize("fname, edit, pattern", [
    ("library/downlink.csv", _set(1, "t", "0"), r"library/downlink\.csv: series 'd0', field 't': times not strictly increasing at line 3"),
    ("library/downlink.csv", _set(0, "rate", "-1"), r"library/downlink\.csv: series 'd0', field 'rate': negative .* at line 2"),
    ("library/downlink.csv", _set(0, "series_id", "ghost"), r"library/downlink\.csv: series 'ghost' \(line 2\) is not in library/series\.csv"),
    ("library/series.csv", _set(0, "kind", "sideways"), r"library/series\.csv: field 'kind' must be one of compute, downlink, uplink, got 'sideways' \(line 2\)"),
    ("library/series.csv", _set(1, "series_id", "c0"), r"library/series\.csv: compute series 'c0' appears twice \(line 3\)"),
    ("library/series.csv", _set(0, "period", "-2"), r"library/series\.csv: series 'c0', field 'period': must be a positive finite number"),
])
def test_library_faults_name_file_series_field_and_line(tmp_path: Path, fname, edit, pattern):
    d = _lib_dir(tmp_path)
    _edit(d / fname, edit)
    with pytest.raises(TraceError, match=pattern):
        read_population(d)


def test_library_files_missing(tmp_path: Path):
    d = _lib_dir(tmp_path)
    (d / "library" / "uplink.csv").unlink()
    with pytest.raises(TraceError, match=r"library/uplink\.csv: missing \(library/series lists uplink series\)"):
        read_population(d)
    (d / "library" / "series.csv").unlink()
    with pytest.raises(TraceError, match=r"library/series\.csv: missing"):
        read_population(d)


def test_zero_rate_library_series_is_warned_naming_the_library_file(tmp_path: Path):
    dead = Series.make([0.0], [0.0], 10.0)
    devs = tuple(DeviceTrace(f"d{i}", "x", Series.constant(1e9), SeriesRef(dead, 1.0, 2.0, "dead"), Series.constant(1.0), 0.0, 1.0)
                 for i in range(2))
    out = write_population(Population(devs, {}, {}, {}), tmp_path / "p")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        read_population(out)
    msgs = [str(w.message) for w in record if issubclass(w.category, SimfedWarning)]
    assert len(msgs) == 1 and str(out / "library" / "downlink.csv") in msgs[0] and "devices 'd0', 'd1' have a zero downlink" in msgs[0]


# --------------------------------------------------------------------------- the chunked writer


def test_chunked_writer_writes_what_one_write_writes(tmp_path: Path):
    pop = library_population(30, seed=11)
    # the first chunk is always online: availability.csv starts with a later chunk
    devs = tuple(replace(d, availability=Availability.always()) if i < 7 else d for i, d in enumerate(pop.devices))
    pop = replace(pop, devices=devs)
    one = write_population(pop, tmp_path / "one")
    with TraceWriter(tmp_path / "chunks", meta=pop.meta, library=pop.library) as w:
        for lo in range(0, len(devs), 7):
            w.add(devs[lo : lo + 7])
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(w.path) for p in w.path.rglob("*") if p.is_file())
    for f in files:
        assert (one / f).read_bytes() == (w.path / f).read_bytes(), f


def test_writer_errors_leave_nothing_behind(tmp_path: Path):
    pop = library_population(6, seed=12)
    with pytest.raises(TraceError, match="duplicate device_id 'dev0001'"):
        with TraceWriter(tmp_path / "dup") as w:
            w.add(pop.devices[:3])
            w.add(pop.devices[1:2])
    other = Series.make([0.0], [9.0], 3.0)
    d0 = pop.devices[0]
    clash = replace(d0, device_id="zz", down_bps=SeriesRef(other, 0.0, 1.0, "d0"))
    with pytest.raises(TraceError, match="library downlink: two different series are named 'd0'"):
        with TraceWriter(tmp_path / "clash", library=pop.library) as w:
            w.add([clash])
    with pytest.raises(TraceError, match="refusing to write a population with no devices"):
        with TraceWriter(tmp_path / "empty"):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no target, no temp directories
