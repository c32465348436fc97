"""The demo: FedSpine against HetLoRA, prune-then-tune, uniform and FedMP, end to end on one machine.

It reproduces the shape of FedSpine's main comparison (arXiv 2501.02438: the 80-board Jetson
testbed, every method at the same target sparsity s*) at a size that runs in minutes: the tiny
pre-trained model and a type-stratified subset of the fedspine-testbed population (sizes and the
measured run time are in ``configs/demo.toml``). Steps: pre-train the tiny model if it is not
cached, run the methods as a sweep (a process pool), draw every figure, write ``report.txt`` and the
paired, seed-level tables of ``simfed compare`` (``comparison.md``).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from simfed import config as config_mod
from simfed.experiments.outputs import atomic_write_text
from simfed.experiments.sweep import run_sweep

DEMO_METHODS = ["fedspine", "hetlora", "prune-then-tune", "uniform", "fedmp"]


def shipped_config() -> Path:
    """``configs/demo.toml`` of the repository this package runs from."""
    path = Path(__file__).resolve().parents[2] / "configs" / "demo.toml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the shipped demo config is missing (run from a clone of the repository, or pass --config)")
    return path


def _fmt(x, spec: str = ".3f") -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def report_text(summaries: list[dict], baseline: str, wall_s: float, out: Path) -> str:
    """A plain-text table of the headline numbers, one line per method (mean over seeds)."""
    by_method: dict[str, list[dict]] = {}
    for s in summaries:
        by_method.setdefault(s["method"], []).append(s)

    def mean(rows: list[dict], key: str):
        vals = [r[key] for r in rows if r.get(key) is not None]
        return sum(vals) / len(vals) if vals else None

    base = by_method.get(baseline, [])
    base_t = mean(base, "time_to_target_s")
    base_sim = mean(base, "simulated_time_s")
    lines = [
        "simfed demo: federated prune-and-tune of the tiny LM on the fedspine-testbed population",
        f"runs: {out}",
        "",
        f"{'method':<16} {'final acc':>9} {'sparsity':>8} {'t->target s':>11} {'speedup':>7} {'sim time s':>10} "
        f"{'wait s':>7} {'inf FLOPs':>9}",
    ]
    for method in DEMO_METHODS + sorted(set(by_method) - set(DEMO_METHODS)):
        rows = by_method.get(method)
        if not rows:
            continue
        t = mean(rows, "time_to_target_s")
        sim = mean(rows, "simulated_time_s")
        # fedspine's speed-up over this method: the method's time / the reference's
        if t is not None and base_t is not None:
            speed = t / base_t
        elif base_t is None and t is None and sim and base_sim:
            speed = sim / base_sim
        else:
            speed = None
        lines.append(
            f"{method:<16} {_fmt(mean(rows, 'final_accuracy')):>9} {_fmt(mean(rows, 'final_sparsity'), '.2f'):>8} "
            f"{_fmt(t, '.2f'):>11} {_fmt(speed, '.2f'):>7} {_fmt(sim, '.2f'):>10} {_fmt(mean(rows, 'mean_wait_s'), '.3f'):>7} "
            f"{_fmt(mean(rows, 'inference_flops_rel'), '.2f'):>9}"
        )
    target = next((s.get("target_accuracy") for s in summaries if s.get("target_accuracy")), None)
    lines += [
        "",
        f"final acc: next-character accuracy after every device is pruned to s* (hetlora: unpruned); "
        f"t->target: simulated seconds until accuracy {target} with every device at s* (hetlora: accuracy only); "
        f"speedup: {baseline}'s speed-up over the method, i.e. the method's time / {baseline}'s "
        f"(time to target when both reached it, total simulated time when neither did); wait: mean waiting time per "
        f"accepted device-round; inf FLOPs: inference FLOPs relative to the unpruned model.",
        f"wall time of the demo: {wall_s:.0f} s. Figures: {out.parent / 'figures'}",
    ]
    return "\n".join(lines) + "\n"


def run_demo(out: Path, *, config_path: str | Path | None = None, overrides: list[str] | None = None,
             workers: int = 0, echo=print) -> Path:
    """Run the demo into ``out`` (runs/, figures/, report.txt); returns the report's path."""
    from simfed.accuracy.pretrain import PretrainConfig, load_pretrained
    from simfed.cli.plot import plot_runs

    t0 = time.perf_counter()
    cfg = config_mod.load(config_path or shipped_config(), overrides)
    if not cfg.sweep.methods:
        cfg = config_mod.from_dict({**config_mod.to_dict(cfg), "sweep": {**config_mod.to_dict(cfg)["sweep"], "methods": DEMO_METHODS}})
    if cfg.mode == "full":
        cache = Path(cfg.model.cache_dir) if cfg.model.cache_dir else None
        echo("demo: the pre-trained tiny model (trained once, then cached)")
        _model, info = load_pretrained(PretrainConfig(preset=cfg.model.preset, corpus=cfg.model.pretrain_corpus), cache=cache, log=echo)
        echo(f"  {'cached' if info.get('cached') else 'trained'}: {info.get('path')} "
             f"(validation accuracy {info.get('val_accuracy', float('nan')):.3f})")
    runs = out / "runs"
    results = run_sweep(cfg, runs, workers=workers, echo=echo)
    failed = [r for r in results if r.status in ("failed", "crashed")]
    done = [r for r in results if r.status not in ("failed", "crashed")]
    if not done:
        raise RuntimeError(f"demo: every run failed; see {runs}/*/error.txt")
    plot_runs([runs], out / "figures", echo=echo)
    if "fedspine" in {r.summary.get("method") for r in done}:
        from simfed.cli.compare import _import_compare

        load, compare = _import_compare()
        atomic_write_text(out / "comparison.md", compare.markdown(load.load_runs([runs], events=False)))
    text = report_text([r.summary for r in done], "fedspine", time.perf_counter() - t0, runs)
    if failed:
        text += "\nFAILED: " + ", ".join(f"{r.name} ({r.error})" for r in failed) + "\n"
    path = out / "report.txt"
    atomic_write_text(path, text)
    return path
