"""Local-training throughput of the tiny preset: device-steps/s, achieved FLOP/s, one round's wall split.

    python benchmarks/bench_training.py [--devices 16] [--iters 20] [--rank 8] [--threads 1]

Prints numbers measured in this run only (no thresholds): device-steps/s of one-device-at-a-time
local training (FedSpine's prune -> tune round: LoRA steps with the importance EMA, then a pruning
step), the FLOPs of one step counted with ``torch.utils.flop_counter`` and the achieved FLOP/s as a
share of this host's large-matmul FLOP/s measured in the same run, and the host wall time of one
simulated round of all devices split into training, aggregation (flexlora) and evaluation.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch.utils.flop_counter import FlopCounterMode

from simfed.accuracy.adapters import Kept
from simfed.accuracy.data import load_shakespeare, random_windows
from simfed.accuracy.lora import init_factors, load_factors, remove_adapters
from simfed.accuracy.model import Model
from simfed.accuracy.presets import preset
from simfed.accuracy.pretrain import PretrainConfig, checkpoint_path, load_checkpoint
from simfed.accuracy.prune import lora_grad_scores
from simfed.accuracy.train import Trainer, TrainConfig
from simfed.records import Arm, Plan


def matmul_flops_per_s(n: int = 1024, reps: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


def step_flops(model: Model, cfg: TrainConfig, rank: int, tokens: torch.Tensor) -> float:
    """FLOPs of one local iteration (forward, backward, lora-grad importance) on the full model."""
    shape = model.config.shape()
    load_factors(model, init_factors(shape, Kept.full(shape), rank, torch.Generator().manual_seed(0)))
    x, y = random_windows(tokens, cfg.batch_size, cfg.seq_len, torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        _, loss = model(x, y)
        loss.backward()
        lora_grad_scores(model)
    remove_adapters(model)
    return float(counter.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=16)
    ap.add_argument("--iters", type=int, default=20, help="local iterations per device (= tau: one pruning step)")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--p", type=float, default=0.1, help="pruning increment of the round")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    peak = matmul_flops_per_s()
    data = load_shakespeare()
    path = checkpoint_path(PretrainConfig())
    model = load_checkpoint(path)[0] if path.exists() else Model(preset("tiny"))
    cfg = TrainConfig()
    devices = data.pick_clients(args.devices, seed=0)
    trainer = Trainer(model, data.clients, cfg)
    flops = step_flops(trainer.state(devices[0]).model, cfg, args.rank, data.clients[devices[0]].train)

    from simfed.accuracy.aggregators import make_aggregator, rslora_scale

    agg = make_aggregator("flexlora", trainer.shape, r_max=args.rank, scale_rule=rslora_scale(cfg.alpha), seed=0)
    plans = [Plan(0, d, Arm(args.p, args.rank), 0.0, args.p, args.iters, args.iters) for d in devices]
    factors = {d: agg.factors_for(args.rank, trainer.kept(d)) for d in devices}
    # warm-up outside the timed round (first-call allocations, lazy imports)
    warm = Trainer(model, data.clients, cfg)
    warm.run_round([Plan(0, devices[0], Arm(0.0, args.rank), 0.0, 0.0, 3, 3)], {devices[0]: agg.factors_for(args.rank, Kept.full(trainer.shape))})

    t0 = time.perf_counter()
    reports = trainer.run_round(plans, factors)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    agg.aggregate([r.update for r in reports])
    t_agg = time.perf_counter() - t0
    t0 = time.perf_counter()
    trainer.evaluate(devices, delta_for=agg.delta_for)
    t_eval = time.perf_counter() - t0

    steps = args.devices * args.iters
    steps_per_s = steps / t_train
    print(f"host: {os.cpu_count()} cpus, torch threads {torch.get_num_threads()}; model {model.num_params()} params; "
          f"batch {cfg.batch_size}x{cfg.seq_len}, rank {args.rank}")
    print(f"large-matmul (1024^3) FLOP/s            {peak / 1e9:8.1f} GFLOP/s")
    print(f"FLOPs per local step (full model)       {flops / 1e6:8.1f} MFLOP (fwd+bwd+lora-grad importance)")
    print(f"one at a time: device-steps/s           {steps_per_s:8.1f}  ({steps} steps in {t_train:.2f} s, incl. pruning)")
    print(f"achieved FLOP/s                         {flops * steps_per_s / 1e9:8.1f} GFLOP/s = "
          f"{100 * flops * steps_per_s / peak:.0f}% of large-matmul (upper bound: pruned steps cost less)")
    print("batched (several devices per call)      not implemented")
    total = t_train + t_agg + t_eval
    print(f"one round of {args.devices} devices (host wall)   train {t_train:.2f} s | aggregate {t_agg:.2f} s | "
          f"evaluate {t_eval:.2f} s | total {total:.2f} s")


if __name__ == "__main__":
    main()
