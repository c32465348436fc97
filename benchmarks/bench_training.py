"""Local-training throughput of the tiny preset: device-steps/s, achieved FLOP/s, one round's wall split.

    python benchmarks/bench_training.py [--devices 16] [--iters 20] [--rank 8] [--threads 1] [--no-reference]

Prints numbers measured in this run only (no thresholds):

- the host's large-matmul FLOP/s (1024^3 fp32), measured in this run;
- one simulated FedSpine round of ``--devices`` devices one at a time (τ LoRA steps with the
  importance EMA, then a pruning step), at the default :class:`TrainConfig`: device-steps/s, ms per
  step, and the achieved FLOP/s (``torch.utils.flop_counter`` FLOPs of a full-model step) as a share
  of the large-matmul FLOP/s; the same round's host wall time split into training, aggregation
  (flexlora) and evaluation;
- the same local steps through the *previous* implementation (LoRA as ``y + s * (x A^T) B^T``,
  hand-written RMSNorm, per-tensor AdamW), interleaved with the current one, as a speed ratio.

Both wall time and this process's CPU time are shown: on a shared host other processes inflate wall
time, while CPU time of a one-thread run is what the step itself costs. With ``--threads 2`` the CPU
time counts both threads, so compare wall times there. ``--batched`` also times a prototype that runs
all devices' steps as one batched call (bmm over stacked weights); it was no faster, so the Trainer
does not use it (see docs/accuracy.md).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from contextlib import contextmanager

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from simfed.accuracy import model as model_mod
from simfed.accuracy.adapters import MODULES, Kept
from simfed.accuracy.data import load_shakespeare, random_windows
from simfed.accuracy.lora import init_factors, load_factors, remove_adapters
from simfed.accuracy.model import Model, rotate_half
from simfed.accuracy.presets import preset
from simfed.accuracy.pretrain import PretrainConfig, checkpoint_path, load_checkpoint
from simfed.accuracy.prune import lora_grad_scores
from simfed.accuracy.train import Trainer, TrainConfig
from simfed.records import Arm, Plan


class Clock:
    """Wall and process-CPU seconds of a block."""

    def __enter__(self) -> "Clock":
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall_s = time.perf_counter() - self.w0
        self.cpu_s = time.process_time() - self.c0


def matmul_flops_per_s(n: int = 1024, reps: int = 20) -> tuple[float, float]:
    """(wall, CPU-time) FLOP/s of an n^3 fp32 matmul."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    with Clock() as c:
        for _ in range(reps):
            a @ b
    flops = 2 * n**3 * reps
    return flops / c.wall_s, flops / c.cpu_s


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


# ------------------------------------------------------------------ the previous implementation
def _reference_linear(self, x):
    y = F.linear(x, self.weight)
    if self.lora_A is not None:
        y = y + self.lora_scale * F.linear(F.linear(x, self.lora_A), self.lora_B)
    return y


def _reference_rmsnorm(self, x):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


@contextmanager
def reference_path():
    """Swap in the previous Linear/RMSNorm forwards (for an A/B in the same process)."""
    saved = model_mod.Linear.forward, model_mod.RMSNorm.forward
    model_mod.Linear.forward, model_mod.RMSNorm.forward = _reference_linear, _reference_rmsnorm
    try:
        yield
    finally:
        model_mod.Linear.forward, model_mod.RMSNorm.forward = saved


def local_steps(model: Model, cfg: TrainConfig, rank: int, tokens: torch.Tensor, n: int, fused: bool) -> Clock:
    """``n`` LoRA steps with importance (what a pruning stage does), timed."""
    shape = model.config.shape()
    params = load_factors(model, init_factors(shape, Kept.full(shape), rank, torch.Generator().manual_seed(0)))
    opt = torch.optim.AdamW(params, lr=cfg.lr, fused=fused)
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        x, y = random_windows(tokens, cfg.batch_size, cfg.seq_len, gen)
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        lora_grad_scores(model)
        opt.step()

    step()
    with Clock() as c:
        for _ in range(n):
            step()
    remove_adapters(model)
    return c


# ------------------------------------------------------------------ batched prototype (not kept)
# D devices' local steps as one call: stacked frozen weights [D, out, in], stacked LoRA factors, bmm.
# Same-structure devices only (a real integration would group devices by structure and pad ranks).
# Measured no faster than one at a time (docs/accuracy.md), so the Trainer does not use it; it is
# here so the comparison can be re-run: ``--batched``.

def stack_model(models: list[Model], rank: int, gen: torch.Generator):
    """Stacked frozen weights [D, out, in] per (layer, module) and fresh LoRA factors [D, r, in] / [D, out, r]."""
    D = len(models)
    W, A, B = {}, {}, {}
    for l in range(len(models[0].layers)):
        for m in MODULES:
            w = torch.stack([mm.layers[l].linear(m).weight.detach() for mm in models])
            W[(l, m)] = w
            A[(l, m)] = ((torch.rand(D, rank, w.shape[2], generator=gen) * 2 - 1) / math.sqrt(w.shape[2])).requires_grad_()
            B[(l, m)] = torch.zeros(D, w.shape[1], rank, requires_grad=True)
    norms = [(torch.stack([mm.layers[l].attn_norm.weight.detach() for mm in models]),
              torch.stack([mm.layers[l].mlp_norm.weight.detach() for mm in models])) for l in range(len(models[0].layers))]
    emb = torch.stack([mm.embed.weight.detach() for mm in models])
    fnorm = torch.stack([mm.norm.weight.detach() for mm in models])
    return W, A, B, norms, emb, fnorm

def batched_loss(model0: Model, W, A, B, norms, emb, fnorm, scale, x, y):
    """x, y: [D, Bt, T]. Mean over devices of each device's mean CE (so each device's grads are its own)."""
    D, Bt, T = x.shape
    cfg = model0.config; hd = cfg.head_dim; eps = cfg.norm_eps
    cos, sin = model0.rope_cos[:T], model0.rope_sin[:T]
    h = torch.stack([F.embedding(x[d], emb[d]) for d in range(D)]).view(D, Bt * T, -1)  # [D, N, d]
    def lin(l, m, z):
        xa = torch.bmm(z, A[(l, m)].transpose(1, 2))
        return torch.baddbmm(torch.bmm(z, W[(l, m)].transpose(1, 2)), xa, B[(l, m)].transpose(1, 2), alpha=scale)
    def rms(z, w):
        return F.rms_norm(z, (z.shape[-1],), None, eps) * w[:, None, :]
    for l in range(cfg.n_layers):
        z = rms(h, norms[l][0])
        nh = W[(l, "q")].shape[1] // hd; nkv = W[(l, "k")].shape[1] // hd
        q = lin(l, "q", z).view(D * Bt, T, nh, hd).transpose(1, 2)
        k = lin(l, "k", z).view(D * Bt, T, nkv, hd).transpose(1, 2)
        v = lin(l, "v", z).view(D * Bt, T, nkv, hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin; k = k * cos + rotate_half(k) * sin
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(D, Bt * T, nh * hd)
        h = h + lin(l, "o", att)
        z = rms(h, norms[l][1])
        h = h + lin(l, "down", F.silu(lin(l, "gate", z)) * lin(l, "up", z))
    logits = torch.bmm(rms(h, fnorm), emb.transpose(1, 2))  # [D, N, V]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)) * D  # sum of per-device means

@torch.no_grad()
def batched_importance(W, A, B, scale):
    out = {}
    for key in W:
        a, b = A[key], B[key]; ga, gb = a.grad, b.grad
        g_hat = torch.baddbmm(torch.bmm(gb, a), b - gb, ga)
        out[key] = (g_hat * torch.baddbmm(W[key], b, a, alpha=scale)).abs_()
    return out


def batched_vs_single(model: Model, cfg: TrainConfig, rank: int, tokens: list[torch.Tensor]) -> None:
    """Print ms per device-step of the batched prototype and of one-at-a-time steps, interleaved."""
    D = len(tokens)
    models = []
    for _ in range(D):
        m = Model(model.config)
        m.load_state_dict(model.state_dict())
        m.freeze_base()
        models.append(m)
    scale = cfg.alpha / math.sqrt(rank)
    W, A, B, norms, emb, fnorm = stack_model(models, rank, torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(list(A.values()) + list(B.values()), lr=cfg.lr, fused=True)
    gens = [torch.Generator().manual_seed(i) for i in range(D)]

    def step() -> None:
        xy = [random_windows(t, cfg.batch_size, cfg.seq_len, g) for t, g in zip(tokens, gens)]
        x, y = torch.stack([a for a, _ in xy]), torch.stack([b for _, b in xy])
        loss = batched_loss(model, W, A, B, norms, emb, fnorm, scale, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        batched_importance(W, A, B, scale)
        opt.step()

    step()
    batched, single = [], []
    for _ in range(3):
        with Clock() as c:
            for _ in range(3):
                step()
        batched.append(c)
        single.append(local_steps(models[0], cfg, rank, tokens[0], 10, fused=True))
    for label in ("wall_s", "cpu_s"):
        b = min(getattr(c, label) for c in batched) / (3 * D)
        s1 = min(getattr(c, label) for c in single) / 10
        print(f"batched prototype ({label[:-2]:4s}, D={D})     {1000 * b:6.1f} ms/device-step vs one at a time {1000 * s1:6.1f} ms "
              f"(x{s1 / b:.2f}; not kept unless > 1)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=16)
    ap.add_argument("--iters", type=int, default=20, help="local iterations per device (= tau: one pruning step)")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--p", type=float, default=0.1, help="pruning increment of the round")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--no-reference", action="store_true", help="skip the A/B against the previous implementation")
    ap.add_argument("--batched", action="store_true", help="also time the batched-devices prototype")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    peak_wall, peak_cpu = matmul_flops_per_s()
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

    with Clock() as train:
        reports = trainer.run_round(plans, factors)
    with Clock() as aggregate:
        agg.aggregate([r.update for r in reports])
    with Clock() as evaluate:
        trainer.evaluate(devices, delta_for=agg.delta_for)

    steps = args.devices * args.iters
    print(f"host: {os.cpu_count()} cpus, torch threads {torch.get_num_threads()}; model {model.num_params()} params; "
          f"batch {cfg.batch_size}x{cfg.seq_len}, rank {args.rank}, lr {cfg.lr}")
    print(f"large-matmul (1024^3) FLOP/s            wall {peak_wall / 1e9:7.1f} GFLOP/s | cpu-time {peak_cpu / 1e9:7.1f} GFLOP/s")
    print(f"FLOPs per local step (full model)       {flops / 1e6:8.1f} MFLOP (fwd+bwd+lora-grad importance)")
    for label, sec, peak in (("wall", train.wall_s, peak_wall), ("cpu-time", train.cpu_s, peak_cpu)):
        rate = steps / sec
        print(f"one at a time ({label:8s}): {rate:6.1f} device-steps/s, {1000 * sec / steps:6.1f} ms/step; achieved "
              f"{flops * rate / 1e9:5.1f} GFLOP/s = {100 * flops * rate / peak:3.0f}% of large-matmul "
              f"(upper bound: pruned steps cost less)")
    print("batched (several devices per call)      not kept: prototype no faster (run with --batched to measure)")
    total = train.wall_s + aggregate.wall_s + evaluate.wall_s
    print(f"one round of {args.devices} devices (host wall)   train {train.wall_s:.2f} s | aggregate {aggregate.wall_s:.2f} s | "
          f"evaluate {evaluate.wall_s:.2f} s | total {total:.2f} s")
    print(f"one round of {args.devices} devices (cpu time)    train {train.cpu_s:.2f} s | aggregate {aggregate.cpu_s:.2f} s | "
          f"evaluate {evaluate.cpu_s:.2f} s")

    if not args.no_reference:
        probe = Model(model.config)
        probe.load_state_dict(model.state_dict())
        probe.freeze_base()
        tokens = data.clients[devices[0]].train
        current, reference = [], []
        for _ in range(3):  # interleaved, best of 3, so background load hits both alike
            current.append(local_steps(probe, cfg, args.rank, tokens, 10, fused=True))
            with reference_path():
                reference.append(local_steps(probe, cfg, args.rank, tokens, 10, fused=False))
        for label in ("wall_s", "cpu_s"):
            cur = min(getattr(c, label) for c in current) / 10
            ref = min(getattr(c, label) for c in reference) / 10
            print(f"previous vs current step ({label[:-2]:4s})      {1000 * ref:6.1f} ms -> {1000 * cur:6.1f} ms "
                  f"(x{ref / cur:.2f}; full model, importance on)")
    if args.batched:
        batched_vs_single(model, cfg, args.rank, [data.clients[d].train for d in devices])


if __name__ == "__main__":
    main()
