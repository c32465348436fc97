"""Local-training throughput: device-steps/s and the share of this host's matmul peak, one at a time,
batched and in parallel worker processes, for the ``tiny`` and ``smollm2-135m`` presets.

    python benchmarks/bench_training.py [--preset tiny|smollm2-135m] [--devices 8] [--iters 10]
        [--rank 8] [--threads 1] [--device cpu|cuda|auto] [--dtype float32|bfloat16|float16]
        [--batched] [--workers 2] [--reference]

Prints numbers measured in this run only (no thresholds):

- the device's large-matmul FLOP/s in the training dtype (CPU: 1024^3, GPU: 8192^3), measured here;
- **one at a time**: one simulated FedSpine round of ``--devices`` devices through the real
  :class:`~simfed.accuracy.train.Trainer` (``--iters`` LoRA steps with the importance EMA and a pruning
  step at the end), at the preset's benchmark batch (tiny: 8 x 80 characters, SmolLM2: 4 x 32 tokens,
  as in ``configs/smollm2.toml``): device-steps/s and the achieved FLOP/s (``torch.utils.flop_counter``
  FLOPs of a full-model step) as a share of the large-matmul rate; the round's wall time split into
  training, aggregation (flexlora) and evaluation;
- ``--batched``: the same devices' steps as **one batched call** (a prototype: stacked frozen weights
  ``[D, out, in]``, LoRA factors zero-padded to the largest rank, ``bmm``; devices of one structure),
  against one-at-a-time steps, interleaved, best of 3;
- ``--workers N``: the devices split over **N worker processes** (spawned, one torch thread each),
  each running its share of the round with its own Trainer, all started together: aggregate
  device-steps/s against one process doing all devices;
- ``--reference`` (tiny): the previous LoRA/RMSNorm/AdamW implementation, interleaved with the current.

Wall time and this process's CPU time are both shown: on a shared host other processes inflate wall
time, while CPU time of a one-thread run is what the step itself costs.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
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
from simfed.accuracy.device import Precision, cast_frozen, resolve_precision
from simfed.accuracy.lora import init_factors, load_factors, remove_adapters
from simfed.accuracy.model import Model, rotate_half
from simfed.accuracy.prune import lora_grad_scores
from simfed.accuracy.train import Trainer, TrainConfig
from simfed.records import Arm, Plan

# Per preset: (batch size, sequence length, learning rate) of the benchmark round.
SETTINGS = {"tiny": (8, 80, 2e-3), "smollm2-135m": (4, 32, 1e-3)}


class Clock:
    """Wall and process-CPU seconds of a block (the device is synchronised at both ends)."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device

    def _sync(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self) -> "Clock":
        self._sync()
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self._sync()
        self.wall_s = time.perf_counter() - self.w0
        self.cpu_s = time.process_time() - self.c0


def matmul_flops_per_s(precision: Precision, reps: int = 20) -> tuple[float, float]:
    """(wall, CPU-time) FLOP/s of a large square matmul in the training dtype on the training device."""
    n = 1024 if precision.device.type == "cpu" else 8192
    a = torch.randn(n, n, device=precision.device, dtype=precision.dtype)
    b = torch.randn(n, n, device=precision.device, dtype=precision.dtype)
    for _ in range(3):
        a @ b
    with Clock(precision.device) as c:
        for _ in range(reps):
            a @ b
    flops = 2 * n**3 * reps
    return flops / c.wall_s, flops / c.cpu_s


def load_model(preset: str) -> tuple[Model, object]:
    """The preset's pre-trained model (cached) and its tokenizer (``None`` for characters)."""
    if preset == "tiny":
        from simfed.accuracy.pretrain import PretrainConfig, load_pretrained

        return load_pretrained(PretrainConfig())[0], None
    from simfed.accuracy.smollm2 import load_smollm2

    model, tokenizer, _ = load_smollm2(max_seq_len=SETTINGS[preset][1])
    return model, tokenizer


def load_clients(preset: str, n: int, tokenizer) -> dict:
    data = load_shakespeare()
    devices = data.pick_clients(n, seed=0)
    clients = {d: data.clients[d] for d in devices}
    if tokenizer is not None:
        from simfed.accuracy.smollm2 import tokenize_clients

        clients = tokenize_clients(clients, tokenizer)
    return clients


def train_config(preset: str, device: str, dtype: str) -> TrainConfig:
    batch, seq, lr = SETTINGS[preset]
    return TrainConfig(batch_size=batch, seq_len=seq, lr=lr, device=device, dtype=dtype)


def step_flops(model: Model, cfg: TrainConfig, rank: int, tokens: torch.Tensor, precision: Precision) -> float:
    """FLOPs of one local iteration (forward, backward, lora-grad importance) on the full model."""
    shape = model.config.shape()
    load_factors(model, init_factors(shape, Kept.full(shape), rank, torch.Generator().manual_seed(0)))
    x, y = random_windows(tokens, cfg.batch_size, cfg.seq_len, torch.Generator().manual_seed(0))
    x, y = x.to(precision.device), y.to(precision.device)
    with FlopCounterMode(display=False) as counter:
        with precision.autocast():
            _, loss = model(x, y)
        loss.backward()
        lora_grad_scores(model)
    remove_adapters(model)
    return float(counter.get_total_flops())


def round_plans(devices: list[str], rank: int, iters: int, p: float) -> list[Plan]:
    return [Plan(0, d, Arm(p, rank), 0.0, p, iters, iters) for d in devices]


# ------------------------------------------------------------------ the previous implementation (tiny A/B)
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


def local_steps(model: Model, cfg: TrainConfig, rank: int, tokens: torch.Tensor, n: int, fused: bool,
                precision: Precision) -> Clock:
    """``n`` LoRA steps with importance (what a pruning stage does) on one model, timed."""
    shape = model.config.shape()
    params = load_factors(model, init_factors(shape, Kept.full(shape), rank, torch.Generator().manual_seed(0)))
    opt = torch.optim.AdamW(params, lr=cfg.lr, fused=fused)
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        x, y = random_windows(tokens, cfg.batch_size, cfg.seq_len, gen)
        with precision.autocast():
            _, loss = model(x.to(precision.device), y.to(precision.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        lora_grad_scores(model)
        opt.step()

    step()
    with Clock(precision.device) as c:
        for _ in range(n):
            step()
    remove_adapters(model)
    return c


# ------------------------------------------------------------------ batched prototype
# D devices' local steps as one call: stacked frozen weights [D, out, in], LoRA factors zero-padded to the
# largest rank (a padded component has A row = 0 and B column = 0, so both get zero gradient and AdamW
# leaves them at zero: exactly the device's own rank), bmm. Devices of one structure only.

def stack_model(models: list[Model], ranks: list[int], gen: torch.Generator, device: torch.device):
    """Stacked frozen weights [D, out, in] per (layer, module), padded LoRA factors [D, R, in] / [D, out, R]."""
    D, R = len(models), max(ranks)
    W, A, B = {}, {}, {}
    for l in range(len(models[0].layers)):
        for m in MODULES:
            w = torch.stack([mm.layers[l].linear(m).weight.detach() for mm in models])
            W[(l, m)] = w
            a = torch.zeros(D, R, w.shape[2])
            for d, r in enumerate(ranks):
                a[d, :r] = (torch.rand(r, w.shape[2], generator=gen) * 2 - 1) / math.sqrt(w.shape[2])
            A[(l, m)] = a.to(device).requires_grad_()
            B[(l, m)] = torch.zeros(D, w.shape[1], R, device=device, requires_grad=True)
    norms = [(torch.stack([mm.layers[l].attn_norm.weight.detach() for mm in models]),
              torch.stack([mm.layers[l].mlp_norm.weight.detach() for mm in models])) for l in range(len(models[0].layers))]
    emb = torch.stack([mm.embed.weight.detach() for mm in models])
    fnorm = torch.stack([mm.norm.weight.detach() for mm in models])
    return W, A, B, norms, emb, fnorm


def batched_loss(model0: Model, W, A, B, norms, emb, fnorm, scale, x, y):
    """x, y: [D, Bt, T]; ``scale`` [D]. Sum over devices of each device's mean CE (each device's grads are its own)."""
    D, Bt, T = x.shape
    cfg = model0.config
    hd, eps = cfg.head_dim, cfg.norm_eps
    cos, sin = model0.rope_cos[:T], model0.rope_sin[:T]
    h = torch.stack([F.embedding(x[d], emb[d]) for d in range(D)]).view(D, Bt * T, -1)  # [D, N, d]

    def lin(l, m, z):
        xa = torch.bmm(z, A[(l, m)].transpose(1, 2).to(z.dtype)) * scale.to(z.dtype)[:, None, None]
        return torch.baddbmm(torch.bmm(z, W[(l, m)].transpose(1, 2)), xa, B[(l, m)].transpose(1, 2).to(z.dtype))

    def rms(z, w):
        return F.rms_norm(z, (z.shape[-1],), None, eps) * w[:, None, :]

    for l in range(cfg.n_layers):
        z = rms(h, norms[l][0])
        nh, nkv = W[(l, "q")].shape[1] // hd, W[(l, "k")].shape[1] // hd
        q = lin(l, "q", z).view(D * Bt, T, nh, hd).transpose(1, 2)
        k = lin(l, "k", z).view(D * Bt, T, nkv, hd).transpose(1, 2)
        v = lin(l, "v", z).view(D * Bt, T, nkv, hd).transpose(1, 2)
        c, s = cos.to(q.dtype), sin.to(q.dtype)
        q, k = q * c + rotate_half(q) * s, k * c + rotate_half(k) * s
        if nkv != nh:
            k, v = k.repeat_interleave(nh // nkv, dim=1), v.repeat_interleave(nh // nkv, dim=1)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(D, Bt * T, nh * hd)
        h = h + lin(l, "o", att)
        z = rms(h, norms[l][1])
        h = h + lin(l, "down", F.silu(lin(l, "gate", z)) * lin(l, "up", z))
    logits = torch.bmm(rms(h, fnorm), emb.transpose(1, 2))  # [D, N, V]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1)) * D


@torch.no_grad()
def batched_importance(W, A, B, scale):
    out = {}
    for key in W:
        a, b = A[key], B[key]
        ga, gb = a.grad, b.grad
        g_hat = torch.baddbmm(torch.bmm(gb, a), b - gb, ga)
        out[key] = (g_hat * torch.baddbmm(W[key].float(), b * scale[:, None, None], a)).abs_()
    return out


def batched_vs_single(model: Model, cfg: TrainConfig, ranks: list[int], tokens: list[torch.Tensor],
                      precision: Precision) -> None:
    """Print ms per device-step of the batched prototype and of one-at-a-time steps, interleaved, best of 3."""
    D = len(tokens)
    models = [model.share_copy() for _ in range(D)]  # same structure (a round's same-shape devices)
    scale = torch.tensor([cfg.alpha / math.sqrt(r) for r in ranks], device=precision.device)
    W, A, B, norms, emb, fnorm = stack_model(models, ranks, torch.Generator().manual_seed(0), precision.device)
    opt = torch.optim.AdamW(list(A.values()) + list(B.values()), lr=cfg.lr, fused=True)
    gens = [torch.Generator().manual_seed(i) for i in range(D)]

    def step() -> None:
        xy = [random_windows(t, cfg.batch_size, cfg.seq_len, g) for t, g in zip(tokens, gens)]
        x = torch.stack([a for a, _ in xy]).to(precision.device)
        y = torch.stack([b for _, b in xy]).to(precision.device)
        with precision.autocast():
            loss = batched_loss(model, W, A, B, norms, emb, fnorm, scale, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        batched_importance(W, A, B, scale)
        opt.step()

    step()
    n_single = 5
    batched, single = [], []
    for _ in range(3):
        with Clock(precision.device) as c:
            for _ in range(3):
                step()
        batched.append(c)
        single.append(local_steps(models[0], cfg, max(ranks), tokens[0], n_single, fused=True, precision=precision))
    for label in ("wall_s", "cpu_s"):
        b = min(getattr(c, label) for c in batched) / (3 * D)
        s1 = min(getattr(c, label) for c in single) / n_single
        print(f"batched prototype ({label[:-2]:4s}, D={D}, ranks {sorted(set(ranks))}) {1000 * b:8.1f} ms/device-step "
              f"vs one at a time {1000 * s1:8.1f} ms (x{s1 / b:.2f}); {1 / b:6.2f} vs {1 / s1:6.2f} device-steps/s")


# ------------------------------------------------------------------ parallel worker processes
def _worker(args: tuple, barrier, results) -> None:
    preset, n_devices, device_ids, rank, iters, p, device, dtype = args
    torch.set_num_threads(1)
    model, tokenizer = load_model(preset)
    clients = load_clients(preset, n_devices, tokenizer)  # the same draw as the parent
    mine = {d: clients[d] for d in device_ids}
    cfg = train_config(preset, device, dtype)
    from simfed.accuracy.aggregators import make_aggregator, rslora_rule

    warm = Trainer(model.share_copy(), mine, cfg)
    agg = make_aggregator("flexlora", warm.shape, r_max=rank, scale_rule=rslora_rule(cfg.alpha), seed=0)
    first = device_ids[0]
    warm.run_round([Plan(0, first, Arm(0.0, rank), 0.0, 0.0, 2, 2)], {first: agg.factors_for(rank, Kept.full(warm.shape))})
    trainer = Trainer(model, mine, cfg)
    plans = round_plans(list(mine), rank, iters, p)
    factors = {d: agg.factors_for(rank, trainer.kept(d)) for d in mine}
    barrier.wait()
    with Clock(trainer.device) as c:
        trainer.run_round(plans, factors)
    results.put((len(mine) * iters, c.wall_s, c.cpu_s))


def parallel_round(preset: str, devices: list[str], workers: int, rank: int, iters: int, p: float, device: str,
                   dtype: str) -> tuple[float, float, float]:
    """(device-steps/s over all workers, wall s of the slowest, CPU s per device-step inside the workers) of one
    round split over ``workers`` processes."""
    ctx = mp.get_context("spawn")  # no fork: OpenMP state of the parent is not fork-safe
    barrier, results = ctx.Barrier(workers), ctx.Queue()
    shares = [devices[i::workers] for i in range(workers)]
    procs = [ctx.Process(target=_worker, args=((preset, len(devices), share, rank, iters, p, device, dtype), barrier, results))
             for share in shares]
    for proc in procs:
        proc.start()
    out = [results.get() for _ in procs]
    for proc in procs:
        proc.join()
    steps = sum(o[0] for o in out)
    wall = max(o[1] for o in out)
    return steps / wall, wall, sum(o[2] for o in out) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(SETTINGS), default="tiny")
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--iters", type=int, default=10, help="local iterations per device (= tau: one pruning step)")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--p", type=float, default=0.1, help="pruning increment of the round")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--device", default="cpu", help="auto | cpu | cuda | cuda:N | mps")
    ap.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16")
    ap.add_argument("--batched", action="store_true", help="time the batched-devices prototype")
    ap.add_argument("--mixed-ranks", action="store_true", help="batched: ranks cycle 4/8/16 (zero-padded to 16)")
    ap.add_argument("--workers", type=int, default=0, help="also time the round split over this many processes")
    ap.add_argument("--reference", action="store_true", help="A/B against the previous implementation (tiny)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    precision = resolve_precision(args.device, args.dtype)

    peak_wall, peak_cpu = matmul_flops_per_s(precision)
    model, tokenizer = load_model(args.preset)
    clients = load_clients(args.preset, args.devices, tokenizer)
    devices = list(clients)
    cfg = train_config(args.preset, args.device, args.dtype)
    model.freeze_base()
    cast_frozen(model, precision)
    flops = step_flops(model.share_copy(), cfg, args.rank, clients[devices[0]].train, precision)

    from simfed.accuracy.aggregators import make_aggregator, rslora_rule

    trainer = Trainer(model, clients, cfg)
    agg = make_aggregator("flexlora", trainer.shape, r_max=args.rank, scale_rule=rslora_rule(cfg.alpha), seed=0,
                          device=trainer.device)
    plans = round_plans(devices, args.rank, args.iters, args.p)
    factors = {d: agg.factors_for(args.rank, trainer.kept(d)) for d in devices}
    warm = Trainer(model, clients, cfg)  # first-call allocations and lazy imports outside the timed round
    warm.run_round([Plan(0, devices[0], Arm(0.0, args.rank), 0.0, 0.0, 2, 2)],
                   {devices[0]: agg.factors_for(args.rank, Kept.full(trainer.shape))})
    del warm

    with Clock(trainer.device) as train:
        reports = trainer.run_round(plans, factors)
    with Clock(trainer.device) as aggregate:
        agg.aggregate([r.update for r in reports])
    with Clock(trainer.device) as evaluate:
        trainer.evaluate(devices, delta_for=agg.delta_for)

    steps = args.devices * args.iters
    n_eval = sum(len(c.test) for c in clients.values())
    print(f"host: {os.cpu_count()} cpus, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{precision.describe()}; {args.preset}: {model.num_params() / 1e6:.2f} M params; batch {cfg.batch_size}x"
          f"{cfg.seq_len}, rank {args.rank}, {args.devices} devices x {args.iters} iters, p {args.p}")
    print(f"large-matmul FLOP/s ({precision.describe()})    wall {peak_wall / 1e9:8.1f} GFLOP/s | cpu-time "
          f"{peak_cpu / 1e9:8.1f} GFLOP/s")
    print(f"FLOPs per local step (full model)       {flops / 1e9:8.2f} GFLOP (fwd+bwd+lora-grad importance)")
    for label, sec, peak in (("wall", train.wall_s, peak_wall), ("cpu-time", train.cpu_s, peak_cpu)):
        rate = steps / sec
        print(f"one at a time ({label:8s}): {rate:7.2f} device-steps/s, {1000 * sec / steps:8.1f} ms/step; achieved "
              f"{flops * rate / 1e9:7.1f} GFLOP/s = {100 * flops * rate / peak:3.0f}% of large-matmul "
              f"(upper bound: pruned steps cost less)")
    total = train.wall_s + aggregate.wall_s + evaluate.wall_s
    print(f"one round of {args.devices} devices (wall)   train {train.wall_s:.2f} s | aggregate {aggregate.wall_s:.2f} s | "
          f"evaluate {evaluate.wall_s:.2f} s ({n_eval} held-out tokens) | total {total:.2f} s")

    if args.reference:
        probe = model.share_copy()
        tokens = clients[devices[0]].train
        current, reference = [], []
        for _ in range(3):  # interleaved, best of 3, so background load hits both alike
            current.append(local_steps(probe, cfg, args.rank, tokens, 10, fused=True, precision=precision))
            with reference_path():
                reference.append(local_steps(probe, cfg, args.rank, tokens, 10, fused=False, precision=precision))
        for label in ("wall_s", "cpu_s"):
            cur = min(getattr(c, label) for c in current) / 10
            ref = min(getattr(c, label) for c in reference) / 10
            print(f"previous vs current step ({label[:-2]:4s})      {1000 * ref:6.1f} ms -> {1000 * cur:6.1f} ms "
                  f"(x{ref / cur:.2f}; full model, importance on)")
    if args.batched:
        ranks = [(4, 8, 16)[i % 3] for i in range(args.devices)] if args.mixed_ranks else [args.rank] * args.devices
        batched_vs_single(model, cfg, ranks, [clients[d].train for d in devices], precision)
    if args.workers > 1:
        rate, wall, cpu_step = parallel_round(args.preset, devices, args.workers, args.rank, args.iters, args.p,
                                              args.device, args.dtype)
        one = steps / train.wall_s
        print(f"{args.workers} worker processes (1 thread each)  {rate:7.2f} device-steps/s (slowest worker {wall:.1f} s) vs "
              f"one process {one:7.2f} (x{rate / one:.2f}); CPU time per step {1000 * cpu_step:.1f} ms in the workers vs "
              f"{1000 * train.cpu_s / steps:.1f} ms in one process (x{args.workers} on {args.workers} free cores)")


if __name__ == "__main__":
    main()
