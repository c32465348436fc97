"""Benchmark: the engine's two paths, a bare SimPy floor, and the cost of a shared network.

Timing-only synchronous rounds of 10,000 generated phone devices (all selected each round, one fixed arm,
the cost of a small LLaMA-style model). In the same run, best of ``--repeat`` interleaved repeats:

- the **vectorised path** (the engine's default where nothing is shared): every selected device's round
  at once with numpy;
- the **SimPy path** on the same population (``Engine(..., contended=True)``: one process per device,
  transfers answered in simulated time), with a check that its round times, device timings and event log
  equal the vectorised path's;
- the **floor**: a bare SimPy loop with one process per device-round and as many 1-s timeouts as the
  device waited for phases (what SimPy itself costs for this many events);
- the **shared network**: the same devices on ``--aps`` half-duplex access points (``--ap-mbps`` each), so
  the engine must use SimPy and the max-min fair flow model: cost per device-round;

each with a minimal round driver (the engine alone) and with the server loop (``ServerLoop`` without a
learner: plans, observations, rewards and table rows, what a timing-only ``simfed run`` pays on top).
Run: ``python benchmarks/bench_engine.py [--devices 10000 --rounds 3 --repeat 3 --aps 10]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import time
from dataclasses import replace

import simpy

from simfed.decisions.policies import make_policy
from simfed.experiments.loop import ServerLoop
from simfed.records import Arm, Plan
from simfed.structure import ModelShape, next_sparsity
from simfed.timing.cost import CostModel
from simfed.timing.engine import Engine, EngineConfig, ServerReply
from simfed.timing.generators import generate
from simfed.timing.packed import PackedPopulation
from simfed.timing.traces import AccessPoint, Population

SHAPE = ModelShape(n_layers=6, d_model=384, n_heads=6, n_kv_heads=6, head_dim=64, d_ff=1536, vocab_size=96)
ARM = Arm(0.1, 8)


class MinimalDriver:
    """The least a round driver can do: one fixed arm, sparsity advanced on OK (the engine alone)."""

    def __init__(self) -> None:
        self.sparsity: dict[str, float] = {}

    def setup_flops(self) -> float:
        return 0.0

    def plans(self, round, now_s, device_ids):
        sp = self.sparsity
        return [Plan(round, d, ARM, sp.get(d, 0.0), next_sparsity(sp.get(d, 0.0), ARM.p, 0.5), 20, 10) for d in device_ids]

    def round_closed(self, round, timings, close_s):
        sp = self.sparsity
        for t in timings:
            if t.outcome.value == "ok":
                sp[t.device_id] = next_sparsity(sp.get(t.device_id, 0.0), ARM.p, 0.5)
        return ServerReply()

    def round_done(self, round, timings, timing):
        return True


def _loop() -> ServerLoop:
    return ServerLoop(policy=make_policy("fixed", arm=ARM), s_star=0.5, local_iters=20, tau=10)


def _rows(records) -> list[tuple]:
    """Records as tuples with NaN as None (NaN != NaN), so that identical timelines compare equal."""
    return [tuple(None if x != x else x for x in dataclasses.astuple(r)) for r in records]


def _n_waits(result) -> list[list[int]]:
    """Per round, per device: how many timed phases it went through (the floor's timeouts)."""
    per_round: dict[int, list[int]] = {}
    for t in result.timings:
        n = sum(1 for x in (t.ready_s, t.download_end_s, t.compute_end_s, t.upload_end_s) if x == x)
        per_round.setdefault(t.round, []).append(max(n, 1))
    return [per_round[r] for r in sorted(per_round)]


def _floor(waits: list[list[int]]) -> float:
    """A bare SimPy run: per round, one process per device yielding that many 1-s timeouts."""

    def proc(env, n):
        for _ in range(n):
            yield env.timeout(1.0)

    env = simpy.Environment()
    gc.disable()
    try:
        t0 = time.perf_counter()
        for rnd in waits:
            for n in rnd:
                env.process(proc(env, n))
            env.run()
        return time.perf_counter() - t0
    finally:
        gc.enable()


def _on_access_points(pop: Population, n_aps: int, bytes_s: float) -> Population:
    aps = {f"ap{i:02d}": AccessPoint(f"ap{i:02d}", bytes_s, bytes_s, "half") for i in range(n_aps)}
    devs = tuple(replace(d, ap=f"ap{i % n_aps:02d}") for i, d in enumerate(pop.devices))
    return Population(devs, pop.meta, aps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--aps", type=int, default=10)
    ap.add_argument("--ap-mbps", type=float, default=400.0, help="capacity of each access point, Mbit/s")
    args = ap.parse_args()

    pop = generate("phones", n_devices=args.devices, seed=0)
    shared = _on_access_points(pop, args.aps, args.ap_mbps * 1e6 / 8)
    t0 = time.perf_counter()
    PackedPopulation.of(pop), PackedPopulation.of(shared)  # cached: every engine below reuses them
    t_pack = time.perf_counter() - t0
    cost = CostModel(SHAPE, batch_size=8, seq_len=64)
    cfg = EngineConfig()

    runs = {
        "vectorised": lambda: Engine(pop, cost, cfg, MinimalDriver()).run(args.rounds),
        "vectorised+loop": lambda: Engine(pop, cost, cfg, _loop()).run(args.rounds),
        "simpy": lambda: Engine(pop, cost, cfg, MinimalDriver(), contended=True).run(args.rounds),
        "simpy+loop": lambda: Engine(pop, cost, cfg, _loop(), contended=True).run(args.rounds),
        "shared": lambda: Engine(shared, cost, cfg, MinimalDriver()).run(args.rounds),
    }
    best = {k: math.inf for k in [*runs, "floor"]}
    out: dict = {}
    waits = None
    for _ in range(args.repeat):
        for name, fn in runs.items():
            gc.collect()
            t0 = time.perf_counter()
            out[name] = fn()
            best[name] = min(best[name], time.perf_counter() - t0)
        if waits is None:
            waits = _n_waits(out["simpy"])
        gc.collect()
        best["floor"] = min(best["floor"], _floor(waits))

    vec, sim, sh = out["vectorised"], out["simpy"], out["shared"]
    same = (_rows(vec.rounds) == _rows(sim.rounds) and _rows(vec.timings) == _rows(sim.timings)
            and vec.events == sim.events and _rows(out["vectorised+loop"].timings) == _rows(vec.timings))
    n = len(vec.timings)
    per = {k: 1e6 * v / n for k, v in best.items()}
    print(f"population: {args.devices} phone devices, {args.rounds} rounds, {n} device-rounds; best of "
          f"{args.repeat} interleaved repeats (packing both populations once: {t_pack:.2f} s)")
    print(f"round closes, private links (s): {[round(r.close_s, 1) for r in vec.rounds]}")
    print(f"round closes, {args.aps} half-duplex APs of {args.ap_mbps:g} Mbit/s (s): {[round(r.close_s, 1) for r in sh.rounds]}")
    print(f"{'path':<44}{'wall s':>9}{'us/device-round':>17}{'x floor':>9}")
    labels = {
        "floor": "bare SimPy floor (1-s timeouts, same count)",
        "vectorised": "vectorised path, engine alone",
        "vectorised+loop": "vectorised path + server loop",
        "simpy": "SimPy path (private links), engine alone",
        "simpy+loop": "SimPy path + server loop",
        "shared": f"shared network ({args.aps} APs), engine alone",
    }
    for k, label in labels.items():
        print(f"{label:<44}{best[k]:9.3f}{per[k]:17.1f}{best[k] / best['floor']:9.2f}")
    print(f"vectorised path is {best['simpy'] / best['vectorised']:.1f}x faster than the SimPy path on the same rounds; "
          f"the shared network costs {best['shared'] / best['simpy']:.1f}x the SimPy path with private links")
    print(f"identical round times, device timings and event logs on both paths: {same}")
    if not same:
        raise SystemExit("MISMATCH between the vectorised and the SimPy path")


if __name__ == "__main__":
    main()
