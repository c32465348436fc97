"""The engine's two paths (vectorised numpy where nothing is shared, SimPy per device where devices
contend) give identical results where both apply; an independent brute-force numpy replay gives the
same round times."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _helpers import ROUND_CONFIG_IDS, TableCost, fixed_loop, random_population, round_configs, round_rows, timing_rows  # noqa: E402

from simfed.records import Arm, Outcome  # noqa: E402
from simfed.structure import ModelShape  # noqa: E402
from simfed.timing.cost import CostModel, PlanCost  # noqa: E402
from simfed.timing.engine import Engine, EngineConfig  # noqa: E402
from simfed.timing.generators import generate  # noqa: E402
from simfed.timing.traces import Population  # noqa: E402

COST = TableCost(PlanCost(flops=2e10, down_bytes=4e6, up_bytes=4e6, memory_bytes=3e9))


def _both(pop, cost, cfg, rounds, arm=Arm(0.1, 8)):
    a = Engine(pop, cost, cfg, fixed_loop(arm, 0.5, 20, 10), contended=True).run(rounds)
    b = Engine(pop, cost, cfg, fixed_loop(arm, 0.5, 20, 10), contended=False).run(rounds)
    return a, b


CONFIGS = round_configs()


@pytest.mark.parametrize("cfg", CONFIGS, ids=ROUND_CONFIG_IDS)
def test_vectorised_equals_simpy_on_random_population(cfg: EngineConfig) -> None:
    pop = random_population(60, seed=21)
    a, b = _both(pop, COST, cfg, rounds=6)
    assert round_rows(a.rounds) == round_rows(b.rounds)
    assert timing_rows(a.timings) == timing_rows(b.timings)
    assert a.events == b.events


def test_paths_cover_every_outcome_somewhere() -> None:
    """The equality above is only meaningful if the runs contain the interesting cases."""
    pop = random_population(60, seed=21)
    seen = set()
    for cfg in CONFIGS[1:4]:
        a, _ = _both(pop, COST, cfg, rounds=6)
        seen |= {t.outcome for t in a.timings}
    ram_limited = TableCost(PlanCost(flops=2e10, down_bytes=4e6, up_bytes=4e6, memory_bytes=1e10))
    a, b = _both(pop, ram_limited, CONFIGS[1], rounds=2)
    assert timing_rows(a.timings) == timing_rows(b.timings)
    seen |= {t.outcome for t in a.timings}
    assert seen == set(Outcome) - {Outcome.FAILED}  # FAILED is the server's verdict on training


def test_paths_agree_on_generated_phone_population_with_real_costs() -> None:
    pop = generate("phones", n_devices=80, seed=3)
    shape = ModelShape(n_layers=4, d_model=128, n_heads=4, n_kv_heads=4, head_dim=32, d_ff=512, vocab_size=80)
    cost = CostModel(shape, batch_size=8, seq_len=64)
    cfg = EngineConfig(participants=20, overcommit=1.3, deadline_s=300.0, seed=1)
    a, b = _both(pop, cost, cfg, rounds=5, arm=Arm(0.15, 8))
    assert round_rows(a.rounds) == round_rows(b.rounds)
    assert timing_rows(a.timings) == timing_rows(b.timings)
    assert len({t.compute_flops for t in a.timings}) > 1  # sparsity grew, costs changed


# ---------------------------------------------------------------- independent brute-force check


def _curve(series, horizon: float) -> tuple[np.ndarray, np.ndarray]:
    """Breakpoints of the cumulative-work curve up to ``horizon``, by tiling the period."""
    times = np.asarray(series.times_s, dtype=float)
    rates = np.asarray(series.values, dtype=float)
    period = series.period_s
    reps = int(np.ceil(horizon / period)) + 1
    t = (times[None, :] + period * np.arange(reps)[:, None]).ravel()
    widths = np.diff(np.append(t, reps * period))
    work = np.concatenate([[0.0], np.cumsum(np.tile(rates, reps) * widths)])
    return np.append(t, reps * period), work


def _finish(series, t0: float, amount: float, horizon: float) -> float:
    t, w = _curve(series, horizon)
    return float(np.interp(np.interp(t0, t, w) + amount, w, t))


def _sessions(avail, horizon: float) -> tuple[np.ndarray, np.ndarray]:
    """Online sessions up to ``horizon``, touching intervals merged into one."""
    if avail.is_always:
        return np.array([0.0]), np.array([np.inf])
    reps = int(np.ceil(horizon / avail.period_s)) + 1
    off = avail.period_s * np.arange(reps)[:, None]
    s = (np.asarray(avail.starts)[None, :] + off).ravel()
    e = (np.asarray(avail.ends)[None, :] + off).ravel()
    keep = np.concatenate([[True], s[1:] != e[:-1]])  # a session starting where the last ended continues it
    starts = s[keep]
    ends = np.append(e[np.flatnonzero(keep)[1:] - 1], e[-1])
    return starts, ends


def test_round_times_match_a_brute_force_numpy_replay() -> None:
    """All devices, three rounds, one fixed plan: each device's end and each round's end, computed by
    tiling and interpolating the cumulative-work curves, equal the engine's."""
    pop = generate("phones", n_devices=40, seed=7)
    flops, down, up = 3e11, 2e7, 2e7
    cost = TableCost(PlanCost(flops=flops, down_bytes=down, up_bytes=up, memory_bytes=1.0))
    res = Engine(pop, cost, EngineConfig(), fixed_loop(Arm(0.0, 4), 0.5, 10, 5)).run(3)
    horizon = 10 * 86400.0
    t0 = 0.0
    for r in range(3):
        ends = []
        for dev in pop.devices:
            starts, stops = _sessions(dev.availability, horizon)
            k = int(np.searchsorted(stops, t0, side="right"))  # first session ending after t0
            ready = max(t0, starts[k])
            off = stops[k]
            dl = _finish(dev.down_bps, ready + dev.latency_s, down, horizon)
            ce = _finish(dev.compute_flops, dl, flops, horizon)
            ue = _finish(dev.up_bps, ce + dev.latency_s, up, horizon)
            first_late = next((x for x in (dl, ce, ue) if x > off), None)
            ends.append(off if first_late is not None else ue)
        got = [t for t in res.timings if t.round == r]
        assert [t.end_s for t in got] == pytest.approx(ends, rel=1e-9, abs=1e-6)
        assert res.rounds[r].end_s == pytest.approx(max(ends), rel=1e-9)
        t0 = res.rounds[r].end_s
    assert any(t.outcome is Outcome.OFFLINE for t in res.timings) or any(
        t.ready_s > t.start_s for t in res.timings
    )  # availability actually mattered


def test_population_order_not_identity_decides() -> None:
    """Reordering the population reorders the timings but not the round times (all devices)."""
    pop = random_population(20, seed=8)
    rev = Population(tuple(reversed(pop.devices)))
    a = Engine(pop, COST, EngineConfig(), fixed_loop(Arm(0.1, 8), 0.5, 20, 10)).run(3)
    b = Engine(rev, COST, EngineConfig(), fixed_loop(Arm(0.1, 8), 0.5, 20, 10)).run(3)
    assert [r.end_s for r in a.rounds] == [r.end_s for r in b.rounds]


def test_checked_guess_is_exact_whatever_the_guess() -> None:
    """The guessed start of the packed search (used for phases on regular grids) never changes an answer."""
    from simfed.timing.packed import _checked_guess, _segmented_bisect

    rng = np.random.default_rng(3)
    lens = rng.integers(0, 40, 300)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    arr = np.concatenate([np.sort(rng.integers(0, 20, n)).astype(float) for n in lens])  # with ties
    x = rng.integers(-2, 22, 300).astype(float)
    for right in (True, False):
        exact = _segmented_bisect(arr, starts, starts + lens, x, right=right)
        for guess in (exact, starts + rng.integers(-5, 45, 300), np.zeros(300, dtype=np.int64), exact + 1):
            got = _checked_guess(arr, starts, starts + lens, x, guess.astype(np.int64), right=right)
            assert np.array_equal(got, exact)
