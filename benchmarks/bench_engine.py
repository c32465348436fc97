"""Benchmark: the SimPy engine against a bare SimPy floor, and the vectorised path against the engine.

Timing-only synchronous rounds of 10,000 generated phone devices (all selected each round, one
fixed arm, the cost of a small LLaMA-style model). In the same run:

- the SimPy engine (event log on, and off);
- the *floor*: a bare SimPy loop with the same number of processes and timeouts per round as the
  engine scheduled (no traces, no costs, no records) -- what SimPy itself costs;
- the vectorised path (:class:`simfed.timing.fast.FastEngine`), with a check that its round times,
  device timings and event log are identical to the engine's; in record mode (the driver gets
  ``Plan``/``DeviceTiming`` objects, whose creation both paths pay) and in column mode (plans and
  timings stay numpy arrays).

Each measurement is the best of ``--repeat`` runs. Goals: engine <= 3x floor, vectorised >= 10x the
engine. Run: ``python benchmarks/bench_engine.py [--devices 10000 --rounds 5 --repeat 3]``.
"""

from __future__ import annotations

import argparse
import gc
import math
import time

import simpy

from simfed.records import Arm
from simfed.structure import ModelShape
from simfed.timing.cost import CostModel
from simfed.timing.engine import Engine, EngineConfig, FixedPlanDriver
from simfed.timing.fast import FastEngine
from simfed.timing.generators import generate
from simfed.timing.packed import PackedPopulation

SHAPE = ModelShape(n_layers=6, d_model=384, n_heads=6, n_kv_heads=6, head_dim=64, d_ff=1536, vocab_size=96)


def _driver() -> FixedPlanDriver:
    return FixedPlanDriver(Arm(0.1, 8), s_star=0.5, local_iters=20, tau=10)


def _timeouts_per_device_round(result) -> list[list[int]]:
    """How many timed waits each device process of each round made (from its recorded phases)."""
    per_round: dict[int, list[int]] = {}
    for t in result.timings:
        n = 0
        prev = t.start_s
        for x in (t.ready_s, t.download_end_s, t.compute_end_s, t.upload_end_s):
            if x == x and x > prev:
                n += 1
                prev = x
        if t.end_s > prev and t.outcome.value == "offline":
            n += 1
        per_round.setdefault(t.round, []).append(n)
    return [per_round[r] for r in sorted(per_round)]


def _floor(counts: list[list[int]]) -> float:
    """A bare SimPy run: per round, one process per device yielding its number of timeouts."""

    def proc(env, n):
        for _ in range(n):
            yield env.timeout(1.0)

    env = simpy.Environment()
    gc.disable()  # the engine pauses the cyclic collector too: compare like with like
    try:
        t0 = time.perf_counter()
        for round_counts in counts:
            for n in round_counts:
                env.process(proc(env, n))
            env.run()
        return time.perf_counter() - t0
    finally:
        gc.enable()


def _best(fn, repeat: int) -> tuple[float, object]:
    best, out = math.inf, None
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    pop = generate("phones", n_devices=args.devices, seed=0)
    packed = PackedPopulation.from_population(pop)
    cost = CostModel(SHAPE, batch_size=8, seq_len=64)
    logged, quiet = EngineConfig(), EngineConfig(log_events=False)

    runs = {
        "engine_log": lambda: Engine(pop, cost, logged, _driver()).run(args.rounds),
        "engine": lambda: Engine(pop, cost, quiet, _driver()).run(args.rounds),
        "fast": lambda: FastEngine(pop, cost, quiet, _driver(), packed=packed).run(args.rounds),
        "fast_log": lambda: FastEngine(pop, cost, logged, _driver(), packed=packed).run(args.rounds),
        "cols": lambda: FastEngine(pop, cost, quiet, _driver(), packed=packed, columns=True).run(args.rounds),
    }
    # Interleave the repeats (floor, engine, vectorised, ...) so that a change in the machine's load
    # hits every measurement alike; keep the best of each.
    best = {k: math.inf for k in runs} | {"floor": math.inf}
    out: dict = {}
    counts = None
    for _ in range(args.repeat):
        for name, fn in runs.items():
            t, out[name] = _best(fn, 1)
            best[name] = min(best[name], t)
            if name == "engine" and counts is None:
                counts = _timeouts_per_device_round(out["engine"])
        best["floor"] = min(best["floor"], _floor(counts))
    t_eng_log, res_log = best["engine_log"], out["engine_log"]
    t_eng, res = best["engine"], out["engine"]
    t_fast, res_fast = best["fast"], out["fast"]
    t_fast_log, res_fast_log = best["fast_log"], out["fast_log"]
    t_cols, res_cols = best["cols"], out["cols"]
    t_floor = best["floor"]
    n_timeouts = sum(map(sum, counts))
    same_rounds = [r.end_s for r in res.rounds] == [r.end_s for r in res_fast.rounds]
    same_timings = all(
        (a.outcome, a.end_s, a.device_id) == (b.outcome, b.end_s, b.device_id) for a, b in zip(res.timings, res_fast.timings)
    ) and len(res.timings) == len(res_fast.timings)
    same_log = res_log.events == res_fast_log.events
    ids = [d.device_id for d in pop.devices]
    col_rows = [t for cols in res_cols.columns for t in cols.to_timings(ids)]
    same_cols = [r.end_s for r in res_cols.rounds] == [r.end_s for r in res.rounds] and [
        (t.outcome, t.end_s) for t in col_rows
    ] == [(t.outcome, t.end_s) for t in res.timings]

    dev_rounds = len(res.timings)
    print(f"population: {args.devices} phone devices, {args.rounds} rounds, {dev_rounds} device-rounds, {n_timeouts} timeouts")
    print(f"round ends (s): {[round(r.end_s, 3) for r in res.rounds]}")
    print(f"SimPy floor (same processes and timeouts): {t_floor:8.3f} s")
    print(f"SimPy engine, no event log               : {t_eng:8.3f} s   = {t_eng / t_floor:5.2f} x floor (goal <= 3)")
    print(f"SimPy engine, event log ({len(res_log.events)} events)  : {t_eng_log:8.3f} s   = {t_eng_log / t_floor:5.2f} x floor")
    print(f"vectorised, no event log                 : {t_fast:8.3f} s   speed-up {t_eng / t_fast:6.1f} x (goal >= 10)")
    print(f"vectorised, event log                    : {t_fast_log:8.3f} s   speed-up {t_eng_log / t_fast_log:6.1f} x")
    print(f"vectorised, column driver (numpy rows)   : {t_cols:8.3f} s   speed-up {t_eng / t_cols:6.1f} x")
    print(f"per device-round: engine {1e6 * t_eng / dev_rounds:.1f} us, vectorised {1e6 * t_fast / dev_rounds:.1f} us")
    print(
        f"identical round times: {same_rounds}; identical device timings: {same_timings}; "
        f"identical event logs: {same_log}; column rows identical: {same_cols}"
    )
    if not (same_rounds and same_timings and same_log and same_cols):
        raise SystemExit("MISMATCH between the SimPy engine and the vectorised path")


if __name__ == "__main__":
    main()
