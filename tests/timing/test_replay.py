"""Exact replay of piecewise-constant traces: scalar Series, PackedSeries, Availability, PackedAvailability.

The reference is a brute-force integration on a fine grid written from the raw (times, values)
arrays, independent of the cumulative-sum/bisect code under test. Breakpoints and periods are
integers and queries sit on a quarter-second grid, so the brute force with a quarter-second step is
exact and comparisons need only float round-off tolerance.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from simfed.timing.packed import PackedAvailability, PackedSeries
from simfed.timing.traces import Availability, Series, TraceError, wrap_time

STEP = 0.25


@st.composite
def integer_series(draw, allow_all_zero: bool = False):
    """A Series with integer breakpoints, some zero-rate segments, and an integer period."""
    n = draw(st.integers(1, 6))
    durations = draw(st.lists(st.integers(1, 8), min_size=n, max_size=n))
    values = draw(st.lists(st.one_of(st.just(0.0), st.integers(1, 50).map(float)), min_size=n, max_size=n))
    if not allow_all_zero:
        assume(any(v > 0 for v in values))
    times = np.concatenate([[0], np.cumsum(durations)[:-1]]).astype(float)
    return Series.make(times, values, float(sum(durations)))


def brute_rate(s: Series, t: float) -> float:
    """Rate at ``t`` from the raw arrays, by a linear scan (no bisect, no cumulative sums)."""
    u = t % s.period_s
    rate = s.values[0]
    for tt, v in zip(s.times_s, s.values):
        if tt <= u:
            rate = v
    return float(rate)


def brute_amount(s: Series, t0: float, t1: float) -> float:
    total = 0.0
    t = t0
    while t < t1 - 1e-12:
        total += brute_rate(s, t + STEP / 2) * STEP
        t += STEP
    return total


def brute_finish(s: Series, t0: float, amount: float, horizon: float) -> float:
    done = 0.0
    t = t0
    while t < horizon:
        r = brute_rate(s, t + STEP / 2)
        if r > 0 and done + r * STEP >= amount - 1e-9:
            return t + (amount - done) / r
        done += r * STEP
        t += STEP
    return math.inf


grid_time = st.integers(0, 160).map(lambda q: q * STEP)


@settings(max_examples=150, deadline=None)
@given(s=integer_series(allow_all_zero=True), t0=grid_time, span=st.integers(0, 120).map(lambda q: q * STEP))
def test_amount_matches_brute_force_integration(s, t0, span):
    """amount(t0, t1) equals the fine-step integral, including spans that cross several periods."""
    assert s.amount(t0, t0 + span) == pytest.approx(brute_amount(s, t0, t0 + span), rel=1e-12, abs=1e-9)


@settings(max_examples=150, deadline=None)
@given(s=integer_series(), t0=grid_time, frac=st.floats(0.0, 3.0))
def test_finish_time_matches_brute_force(s, t0, frac):
    """finish_time equals the time the fine-step integral reaches the amount (also past the period)."""
    amount = frac * s.total_per_period + 1.0
    expected = brute_finish(s, t0, amount, horizon=t0 + 5 * s.period_s + 10)
    assert s.finish_time(t0, amount) == pytest.approx(expected, rel=1e-12, abs=1e-9)


@settings(max_examples=200, deadline=None)
@given(s=integer_series(), t0=st.floats(0, 1e4), amount=st.floats(1e-6, 1e4))
def test_amount_and_finish_time_are_inverse(s, t0, amount):
    """amount(t0, finish_time(t0, x)) == x for any start time, including inside zero-rate segments."""
    t1 = s.finish_time(t0, amount)
    assert t1 >= t0
    assert s.amount(t0, t1) == pytest.approx(amount, rel=1e-9, abs=1e-6)
    # the finish time is the earliest: just before it the amount is not yet done
    assert s.amount(t0, max(t0, t1 - 1e-3)) < amount or t1 - t0 < 1e-3


@settings(max_examples=100, deadline=None)
@given(s=integer_series(), t0=grid_time, amount=st.floats(0.5, 500), cycles=st.integers(1, 20))
def test_cyclic_repetition(s, t0, amount, cycles):
    """Shifting the start by whole periods shifts the finish time by the same amount."""
    shift = cycles * s.period_s
    assert s.finish_time(t0 + shift, amount) == pytest.approx(s.finish_time(t0, amount) + shift, rel=1e-12, abs=1e-7)
    assert s.amount(t0 + shift, t0 + shift + 3.0) == pytest.approx(s.amount(t0, t0 + 3.0), rel=1e-12, abs=1e-7)


def test_zero_rate_segments_are_skipped_and_all_zero_never_finishes():
    s = Series.make([0, 10, 20], [5.0, 0.0, 1.0], 30)
    # start in the zero segment: nothing happens until t=20
    assert s.finish_time(12.0, 3.0) == 23.0
    # 50 units fill [0,10) exactly: the earliest completion is at 10, not at the end of the zero gap
    assert s.finish_time(0.0, 50.0) == 10.0
    assert s.finish_time(0.0, 51.0) == 21.0
    # 60 = one full period; the next one starts at t=30
    assert s.finish_time(0.0, 61.0) == 30.2
    zero = Series.make([0, 5], [0.0, 0.0], 10)
    assert zero.finish_time(3.0, 1.0) == math.inf
    assert zero.finish_time(3.0, 0.0) == 3.0


def test_period_boundary_lands_on_earliest_time():
    """An amount that ends exactly where a trailing zero-rate gap starts finishes at the gap's start."""
    s = Series.make([0, 4], [2.0, 0.0], 10)
    assert s.finish_time(0.0, 8.0) == 4.0
    assert s.finish_time(0.0, 16.0) == 14.0


def test_wrap_time_keeps_phase_in_range():
    for t, p in [(3600.0 * 7 * (1 - 1e-16), 3600.0), (0.30000000000000004, 0.1), (1e7, 7.3)]:
        k, u = wrap_time(t, p)
        assert 0.0 <= u < p
        assert k * p + u == pytest.approx(t, rel=1e-12)


# --- packed == scalar --------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    many=st.lists(integer_series(allow_all_zero=True), min_size=1, max_size=6),
    queries=st.lists(st.tuples(st.integers(0, 5), st.floats(0, 1e4), st.floats(0, 1e3)), min_size=1, max_size=30),
)
def test_packed_series_equals_scalar(many, queries):
    packed = PackedSeries.from_series(many)
    idx = np.array([q[0] % len(many) for q in queries])
    t0 = np.array([q[1] for q in queries])
    amount = np.array([q[2] for q in queries])
    ft = packed.finish_time(idx, t0, amount)
    am = packed.amount(idx, t0, t0 + amount)
    rate = packed.rate_at(idx, t0)
    for q in range(len(queries)):
        s = many[idx[q]]
        assert ft[q] == s.finish_time(t0[q], amount[q])
        assert am[q] == s.amount(t0[q], t0[q] + amount[q])
        assert rate[q] == s.rate_at(t0[q])


def test_packed_series_float_breakpoints_equal_scalar():
    rng = np.random.default_rng(3)
    many = []
    for _ in range(40):
        n = int(rng.integers(1, 30))
        times = np.concatenate([[0.0], np.cumsum(rng.uniform(0.01, 50.0, n - 1))])
        vals = rng.uniform(0, 1e9, n) * (rng.random(n) > 0.2)
        many.append(Series.make(times, vals, times[-1] + rng.uniform(0.1, 9.0)))
    packed = PackedSeries.from_series(many)
    idx = rng.integers(0, len(many), 2000)
    t0 = rng.uniform(0, 1e5, 2000)
    amount = rng.uniform(0, 1e12, 2000)
    ft = packed.finish_time(idx, t0, amount)
    expected = np.array([many[i].finish_time(a, b) for i, a, b in zip(idx, t0, amount)])
    np.testing.assert_array_equal(ft, expected)
    np.testing.assert_array_equal(packed.mean(), [s.mean() for s in many])


# --- availability ------------------------------------------------------------------------------


@st.composite
def availabilities(draw):
    if draw(st.integers(0, 5)) == 0:
        return Availability.always()
    n = draw(st.integers(1, 4))
    cuts = sorted(draw(st.sets(st.integers(0, 40), min_size=2 * n, max_size=2 * n)))
    period = float(draw(st.integers(cuts[-1], 45)))
    assume(period > 0)
    starts, ends = cuts[0::2], cuts[1::2]
    return Availability.make(starts, ends, period)


def brute_online(a: Availability, t: float) -> bool:
    if a.is_always:
        return True
    u = t % a.period_s
    return any(s <= u < e for s, e in zip(a.starts, a.ends))


@settings(max_examples=100, deadline=None)
@given(a=availabilities(), t=grid_time)
def test_availability_against_brute_force(a, t):
    assert a.is_online(t) == brute_online(a, t)
    nxt = a.next_online(t)
    assert nxt >= t and brute_online(a, nxt)
    # nothing online strictly between t and nxt (probe the grid)
    probe = t
    while probe < nxt - 1e-9:
        assert not brute_online(a, probe)
        probe += STEP
    if a.is_online(t):
        off = a.offline_at(t)
        if math.isfinite(off):
            assert not brute_online(a, off)
            probe = t
            while probe < off - 1e-9:
                assert brute_online(a, probe)
                probe += STEP
        else:
            assert all(brute_online(a, t + x) for x in np.arange(0, 3 * (a.period_s if not a.is_always else 10), STEP))
    else:
        assert a.offline_at(t) == t


@settings(max_examples=60, deadline=None)
@given(many=st.lists(availabilities(), min_size=1, max_size=6), ts=st.lists(st.floats(0, 500), min_size=1, max_size=30))
def test_packed_availability_equals_scalar(many, ts):
    packed = PackedAvailability.from_availabilities(many)
    idx = np.arange(len(ts)) % len(many)
    t = np.array(ts)
    on, nxt, off = packed.is_online(idx, t), packed.next_online(idx, t), packed.offline_at(idx, t)
    for q in range(len(ts)):
        a = many[idx[q]]
        assert on[q] == a.is_online(t[q])
        assert nxt[q] == a.next_online(t[q])
        assert off[q] == a.offline_at(t[q])


def test_wrapping_session_is_one_session():
    a = Availability.make([0, 50], [10, 100], 100)
    assert a.offline_at(60.0) == 110.0
    packed = PackedAvailability.from_availabilities([a, Availability.always(), Availability.make([0], [5], 5)])
    np.testing.assert_array_equal(packed.offline_at([0, 1, 2], [60.0, 3.0, 3.0]), [110.0, math.inf, math.inf])
    np.testing.assert_array_equal(packed.next_online([0, 0, 0], [20.0, 120.0, 105.0]), [50.0, 150.0, 105.0])


def test_series_validation_errors_name_the_place():
    with pytest.raises(TraceError, match="dev7.*negative"):
        Series.make([0, 1], [1.0, -2.0], where="dev7")
    with pytest.raises(TraceError, match="empty"):
        Series.make([], [], where="x")


def test_packed_availability_all_always_online():
    packed = PackedAvailability.from_availabilities([Availability.always()] * 3)
    assert packed.is_online([0, 1, 2], [5.0, 6.0, 7.0]).all()
    np.testing.assert_array_equal(packed.next_online([0, 1], [3.0, 4.0]), [3.0, 4.0])
    np.testing.assert_array_equal(packed.offline_at([0, 2], [1.0, 2.0]), [math.inf, math.inf])
