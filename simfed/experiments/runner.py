"""One run from a :class:`~simfed.config.RunConfig` to a complete run directory, with resume.

:func:`run_config` builds the pieces each layer owns (the population and the cost model for time,
the method's policy for decisions, the trainer for accuracy in full mode), hands them to the timing
engine with the :class:`~simfed.experiments.loop.ServerLoop` as its round driver, and writes the run
directory (:mod:`simfed.experiments.outputs`).

Resume: after every round the loop's state, the policy and the trainer's state are pickled into
``checkpoint.pkl`` (atomically). A restarted run with the same resolved config loads it and asks
the engine to simulate from round 1 again; for the rounds already done the loop replays the
recorded plans and checks that the engine reproduces the recorded timeline, but trains nothing and
asks the policy nothing, so training and decisions continue exactly where they stopped. The timing
engine is deterministic and fast next to training, so re-simulating its part of finished rounds
costs little and keeps the engine free of checkpoint code.
"""

from __future__ import annotations

import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from simfed import config as config_mod
from simfed.config import RunConfig
from simfed.experiments.loop import LoopState, ServerLoop
from simfed.experiments.outputs import RunDir
from simfed.timing.traces import Population


class RunError(ValueError):
    """A run cannot start (its directory holds another run, a component is missing, ...)."""


# ---------------------------------------------------------------------------------------- population


def stratified_subset(population: Population, n: int) -> Population:
    """``n`` devices keeping the population's type mix (largest remainders), first ids of each type.

    Deterministic and seed-free: the same population and ``n`` always give the same devices, which
    keeps a small demo representative of the 30/40/10 testbed mix.
    """
    if n <= 0 or n >= len(population):
        return population
    by_type: dict[str, list] = {}
    for d in sorted(population.devices, key=lambda d: d.device_id):
        by_type.setdefault(d.device_type, []).append(d)
    total = len(population)
    quotas = {t: n * len(ds) / total for t, ds in by_type.items()}
    counts = {t: int(math.floor(q)) for t, q in quotas.items()}
    left = n - sum(counts.values())
    for t in sorted(quotas, key=lambda t: (-(quotas[t] - counts[t]), t))[:left]:
        counts[t] += 1
    keep = {d.device_id for t, ds in by_type.items() for d in ds[: counts[t]]}
    devices = tuple(d for d in population.devices if d.device_id in keep)
    return Population(devices, {**population.meta, "subset_of": total, "subset": n})


def load_population(cfg: RunConfig) -> Population:
    """The configured population: a trace directory or a seeded generator, then the subset."""
    t = cfg.traces
    if t.dir:
        from simfed.timing.tracefile import read_population

        pop = read_population(t.dir)
    else:
        try:
            from simfed.timing import generators
        except ImportError as exc:  # pragma: no cover - until the generators land
            raise RunError(f"traces.generator: trace generators are not available ({exc})") from None
        pop = generators.generate(t.generator, seed=t.seed, **t.generator_args)
    return stratified_subset(pop, t.devices)


# ---------------------------------------------------------------------------------------- summary


def summarise(cfg: RunConfig, loop: ServerLoop, final: dict[str, float], cost: Any, n_devices: int) -> dict:
    """Headline numbers of a finished run (documented in docs/experiments.md)."""
    rows = loop.state.round_rows
    dev_rows = loop.state.device_rows
    end_s = rows[-1]["end_s"] if rows else 0.0
    target = cfg.target_accuracy
    time_to_target = None
    rounds_to_target = None
    if target > 0:
        for r in rows:
            if r["evaluated"] and math.isfinite(r["accuracy"]) and r["accuracy"] >= target:
                time_to_target, rounds_to_target = r["end_s"], r["round"]
                break
    time_to_s_star = None
    for r in rows:
        if math.isfinite(r["min_sparsity"]) and r["min_sparsity"] >= loop.s_star - 1e-12:
            time_to_s_star = r["end_s"]
            break
    waits = [r["wait_s"] for r in dev_rows if math.isfinite(r["wait_s"])]
    final_sparsity = float(np.mean(list(loop.state.sparsity.values()))) if loop.state.sparsity else 0.0
    inf_flops = cost.inference_flops(final_sparsity, cfg.train.seq_len) / cost.inference_flops(0.0, cfg.train.seq_len)
    inf_mem = cost.inference_memory_bytes(final_sparsity) / cost.inference_memory_bytes(0.0)
    outcomes: dict[str, int] = {}
    for r in dev_rows:
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
    return {
        "name": cfg.name,
        "method": cfg.method,
        "seed": cfg.seed,
        "mode": cfg.mode,
        "n_devices": n_devices,
        "rounds": len(rows),
        "simulated_time_s": end_s,
        "target_accuracy": target if target > 0 else None,
        "time_to_target_s": time_to_target,
        "rounds_to_target": rounds_to_target,
        "time_to_s_star_s": time_to_s_star,
        "final_accuracy": final["accuracy"],
        "final_eval_loss": final["loss"],
        "s_star": loop.s_star,
        "final_sparsity": final_sparsity,
        "mean_wait_s": float(np.mean(waits)) if waits else None,
        "mean_round_s": float(np.mean([r["duration_s"] for r in rows])) if rows else None,
        "inference_flops_rel": inf_flops,
        "inference_memory_rel": inf_mem,
        "outcomes": dict(sorted(outcomes.items())),
    }


# ---------------------------------------------------------------------------------------- building


class TracePredictor:
    """Completion-time predictor for the *oracle* baseline only: it reads the traces, as no server can.

    Predicts download → compute → upload of a plan started at ``now_s`` (set by the loop each round)
    from the device's traces and the cost model, ignoring availability and contention. Picklable, so
    the oracle survives checkpoints.
    """

    def __init__(self, population: Population, cost: Any, s_star: float, local_iters: int, tau: int) -> None:
        self.traces = population.by_id()
        self.cost = cost
        self.s_star = s_star
        self.local_iters = local_iters
        self.tau = tau
        self.now_s = 0.0

    def __call__(self, device_id: str, arm: Any, sparsity_before: float) -> float:
        from simfed.records import Plan
        from simfed.structure import next_sparsity

        tr = self.traces[device_id]
        plan = Plan(round=0, device_id=device_id, arm=arm, sparsity_before=sparsity_before,
                    sparsity_after=next_sparsity(sparsity_before, arm.p, self.s_star),
                    local_iters=self.local_iters, tau=self.tau)
        if self.cost.train_memory_bytes(plan) > tr.ram_bytes:
            return math.inf
        t = self.now_s
        t = tr.down_bps.finish_time(t + tr.latency_s, self.cost.download_bytes(plan))
        t = tr.compute_flops.finish_time(t, self.cost.round_flops(plan))
        t = tr.up_bps.finish_time(t + tr.latency_s, self.cost.upload_bytes(plan))
        return t - self.now_s


def build_cost(cfg: RunConfig) -> Any:
    """The cost model of the configured model preset, batch and sequence length."""
    from simfed.accuracy.presets import preset
    from simfed.timing.cost import CostModel

    return CostModel(preset(cfg.model.preset).shape(), batch_size=cfg.train.batch_size, seq_len=cfg.train.seq_len)


def _config_text(cfg: RunConfig) -> str:
    return config_mod.dumps(cfg)


def run_config(cfg: RunConfig, out_dir: str | Path, *, progress: bool = True, fresh: bool = False) -> dict:
    """Run ``cfg`` into ``out_dir`` (resuming from its checkpoint) and return the summary.

    A complete run with the same resolved config is not re-run; a directory holding another run is
    refused unless ``fresh``.
    """
    rd = RunDir(out_dir)
    text = _config_text(cfg)
    recorded = rd.recorded_config()
    if fresh:
        rd.clear()
        recorded = None
    if recorded is not None and recorded != text:
        raise RunError(f"{rd.path}: holds a run with another config; use another --out or --fresh to discard it")
    if recorded is not None and rd.is_complete():
        return rd.read_summary()
    rd.path.mkdir(parents=True, exist_ok=True)
    rd.write_config(text)
    t0 = time.perf_counter()
    session = Session(cfg, rd, progress=progress)
    summary = session.run()
    rd.write_wall({"wall_s": time.perf_counter() - t0, "resumed_from_round": session.resumed_from,
                   "host": platform.node(), "pid": os.getpid()})
    return summary
