"""The study's figures, one stateless function each: DataFrames in, a matplotlib Figure out.

Each function takes the tables of :func:`analysis.load.load_runs` (columns as documented in
``docs/experiments.md``) and returns a :class:`matplotlib.figure.Figure`, or ``None`` when the data
cannot support the figure (e.g. regret without an oracle run); :func:`save` writes PNG and PDF.
The figures are those of FedSpine's evaluation (arXiv 2501.02438): accuracy against simulated time,
speed-up over the baselines, final accuracy at the target sparsity, waiting time, and what the
bandit chose; plus a Gantt timeline and the round-duration CDF that timing studies use.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files; never open a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from scipy import stats  # noqa: E402

PHASE_COLOURS = {"download": "tab:blue", "compute": "tab:orange", "upload": "tab:green"}


def time_unit(max_s: float) -> tuple[float, str]:
    """A readable unit for simulated times up to ``max_s``: (divisor, label)."""
    if not np.isfinite(max_s) or max_s < 120:
        return 1.0, "s"
    if max_s < 2 * 3600:
        return 60.0, "min"
    return 3600.0, "h"


def _methods(df: pd.DataFrame) -> list[str]:
    return sorted(df["method"].dropna().unique().tolist()) if len(df) and "method" in df else []


def _colour(methods: list[str]) -> dict[str, str]:
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


def mean_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its Student-t confidence interval (0 for a single value)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    if v.size == 1:
        return float(v[0]), 0.0
    half = stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)
    return float(v.mean()), float(half)


def accuracy_vs_time(rounds: pd.DataFrame) -> Figure | None:
    """Global accuracy against simulated time, one line per method (thin lines: seeds)."""
    ev = rounds[rounds["evaluated"].astype(bool)] if len(rounds) else rounds
    ev = ev[np.isfinite(ev["accuracy"].astype(float))] if len(ev) else ev
    if not len(ev):
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    colours = _colour(_methods(ev))
    div, unit = time_unit(float(ev["end_s"].max()))
    for method, g in ev.groupby("method"):
        for i, (seed, gs) in enumerate(g.groupby("seed")):
            gs = gs.sort_values("end_s")
            ax.plot(gs["end_s"] / div, gs["accuracy"], color=colours[method], marker=".",
                    alpha=0.9 if i == 0 else 0.4, label=method if i == 0 else None)
    ax.set_xlabel(f"simulated time ({unit})")
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy vs simulated time")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _time_metric(summaries: pd.DataFrame) -> str:
    """``time_to_target_s`` when every run reached the target, else ``simulated_time_s`` (same rounds)."""
    metric = "time_to_target_s"
    if metric not in summaries or summaries[metric].isna().any():
        metric = "simulated_time_s"
    return metric


def speedup_table(summaries: pd.DataFrame, method: str = "fedspine") -> tuple[pd.DataFrame, str]:
    """``method``'s speed-up over each other method, paired by seed and target sparsity: mean, CI half-width
    over the pairs (0 with one pair), and how many pairs.

    Speed-up is the other method's time / ``method``'s time for the same seed and s* (> 1: ``method`` is
    faster); a method that never prunes (its runs record s* = 0) is paired by seed where ``method`` ran at one
    s*. The time is :func:`_time_metric`'s. Methods with no pair are left out.
    """
    if not len(summaries) or method not in set(summaries["method"]):
        return pd.DataFrame(), ""
    metric = _time_metric(summaries)
    key = ["seed", "s_star"] if "s_star" in summaries else ["seed"]
    mine = summaries[summaries["method"] == method].set_index(key)[metric]
    own_s = sorted(set(summaries.loc[summaries["method"] == method, "s_star"])) if "s_star" in summaries else []
    rows = []
    for other, g in summaries.groupby("method"):
        if other == method:
            continue
        if len(own_s) == 1 and (g["s_star"] == 0).all():  # a method that never prunes (hetlora) records s* = 0
            g = g.assign(s_star=own_s[0])
        ratios = [t / mine[k] for k, t in zip(g.set_index(key).index, g[metric])
                  if k in mine.index and mine[k] > 0 and t > 0]
        if ratios:  # a method with no run to pair with draws no bar
            mean, half = mean_ci(np.array(ratios))
            rows.append({"baseline": other, "speedup": mean, "ci": half, "n": len(ratios)})
    return pd.DataFrame(rows), metric


def speedup_bars(summaries: pd.DataFrame, method: str = "fedspine") -> Figure | None:
    """``method``'s speed-up over each baseline (> 1: faster), with 95% confidence intervals over seeds where
    there are at least two; a one-seed figure shows no interval and says so."""
    tab, metric = speedup_table(summaries, method)
    if not len(tab):
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    colours = _colour(tab["baseline"].tolist())
    n = int(tab["n"].min())
    ci = tab["ci"] if n >= 2 else None
    ax.bar(tab["baseline"], tab["speedup"], yerr=ci, capsize=4, color=[colours[m] for m in tab["baseline"]])
    ax.axhline(1.0, color="k", lw=0.8)
    what = "time to target accuracy" if metric == "time_to_target_s" else "simulated time of the run"
    ax.set_ylabel(f"{method}'s speed-up over the method\n({what})")
    ax.set_title(f"{method}'s speed-up (95% CI over {n} seeds)" if n >= 2 else f"{method}'s speed-up (one seed: no interval)")
    ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    return fig


def accuracy_vs_sparsity(summaries: pd.DataFrame) -> Figure | None:
    """Final accuracy (every device pruned to s*) against the target sparsity s* (nominal), a point per s* and
    method (a method's variants that differ only in s*, ``fedspine-s_star=0.2``, are one series): a 95% CI over
    seeds on the points that have at least two; where the points' seed counts differ, each point is labelled
    with its count (n) and the title says which points carry an interval."""
    if not len(summaries) or summaries["final_accuracy"].isna().all():
        return None
    # runs of one method at several s* are labelled as variants ("fedspine-s_star=0.2", analysis.load); here they
    # are one series, a point per s*
    summaries = summaries.assign(method=summaries["method"].str.replace(r"-s_star=[^-]+", "", regex=True))
    fig, ax = plt.subplots(figsize=(6, 4))
    colours = _colour(_methods(summaries))
    level = "s_star" if "s_star" in summaries else "final_sparsity"
    counts = summaries.dropna(subset=["final_accuracy"]).groupby(["method", level]).size()
    mixed = counts.nunique() > 1
    for method, g in summaries.groupby("method"):
        xs, ys, es, ns = [], [], [], []
        for sp, gs in g.groupby(level):
            acc, acc_ci = mean_ci(gs["final_accuracy"].to_numpy(dtype=float))
            n = int(gs["final_accuracy"].notna().sum())
            xs.append(float(sp)), ys.append(acc), es.append(acc_ci if n >= 2 else 0.0), ns.append(n)
        ax.errorbar(xs, ys, yerr=es if max(ns) >= 2 else None, fmt="o-", capsize=4, color=colours[method],
                    label=method)
        if mixed:
            for x, y, n in zip(xs, ys, ns):
                ax.annotate(f"n={n}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7,
                            color=colours[method])
    ax.set_xlabel("target sparsity s* (nominal share of prunable parameters)")
    ax.set_ylabel("final accuracy")
    if counts.min() >= 2:
        note = " (95% CI over seeds)"
    elif counts.max() < 2:
        note = " (one seed)"
    else:
        note = "\n(95% CI where n ≥ 2 seeds; n per point)"
    ax.set_title("Final accuracy at each target sparsity" + note)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def waiting_time(rounds: pd.DataFrame) -> Figure | None:
    """Mean waiting time of the devices that reported, per round, per method (mean over seeds)."""
    if not len(rounds):
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    colours = _colour(_methods(rounds))
    for method, g in rounds.groupby("method"):
        m = g.groupby("round")["mean_wait_s"].mean()
        ax.plot(m.index, m.values, color=colours[method], label=method)
    ax.set_xlabel("round")
    ax.set_ylabel("mean waiting time (s)")
    ax.set_title("Waiting time per round")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def chosen_arms(device_rounds: pd.DataFrame, method: str | None = None) -> Figure | None:
    """Mean chosen pruning increment p and rank r per device type over rounds, for one method."""
    if not len(device_rounds):
        return None
    methods = _methods(device_rounds)
    method = method or ("fedspine" if "fedspine" in methods else methods[0])
    g = device_rounds[device_rounds["method"] == method]
    if not len(g):
        return None
    fig, (ax_p, ax_r) = plt.subplots(2, 1, figsize=(6, 6), sharex=True)
    for dtype, gt in g.groupby("device_type"):
        per_round = gt.groupby("round")[["p", "r"]].mean()
        ax_p.plot(per_round.index, per_round["p"], label=dtype)
        ax_r.plot(per_round.index, per_round["r"], label=dtype)
    ax_p.set_ylabel("pruning increment p")
    ax_r.set_ylabel("LoRA rank r")
    ax_r.set_xlabel("round")
    ax_p.set_title(f"Chosen (p, r) per device type: {method}")
    ax_p.legend()
    for ax in (ax_p, ax_r):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def regret_vs_oracle(rounds: pd.DataFrame, oracle: str = "oracle") -> Figure | None:
    """Cumulative extra simulated time over the oracle: sum over rounds of (T_round - T_round^oracle).

    The oracle knows the traces and equalises completion times, so its round durations bound what a
    policy that only observes can reach; the gap, accumulated, is the time regret (same seed).
    """
    if not len(rounds) or oracle not in set(rounds["method"]):
        return None
    ref = rounds[rounds["method"] == oracle].set_index(["seed", "round"])["duration_s"]
    fig, ax = plt.subplots(figsize=(6, 4))
    colours = _colour(_methods(rounds))
    div, unit = time_unit(float(rounds.groupby(["method", "seed"])["duration_s"].sum().max()))
    for method, g in rounds.groupby("method"):
        if method == oracle:
            continue
        curves = []
        for seed, gs in g.groupby("seed"):
            gs = gs.sort_values("round")
            keys = [(seed, r) for r in gs["round"]]
            if not all(k in ref.index for k in keys):
                continue
            curves.append(np.cumsum(gs["duration_s"].to_numpy() - ref.loc[keys].to_numpy()))
        if curves:
            n = min(len(c) for c in curves)
            mean = np.mean([c[:n] for c in curves], axis=0)
            ax.plot(np.arange(1, n + 1), mean / div, color=colours[method], label=method)
    ax.set_xlabel("round")
    ax.set_ylabel(f"cumulative time regret vs oracle ({unit})")
    ax.set_title("Regret against the oracle")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def gantt(device_rounds: pd.DataFrame, run: str | None = None, max_devices: int = 20,
          max_rounds: int = 5) -> Figure | None:
    """Timeline of device activity (download, compute, upload) for one run's first rounds."""
    if not len(device_rounds):
        return None
    runs = sorted(device_rounds["run"].unique())
    run = run or next((r for r in runs if r.startswith("fedspine")), runs[0])
    g = device_rounds[(device_rounds["run"] == run) & (device_rounds["round"] <= device_rounds["round"].min() + max_rounds - 1)]
    devices = sorted(g["device_id"].unique())[:max_devices]
    g = g[g["device_id"].isin(devices)]
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(devices) + 1.5))
    ypos = {d: i for i, d in enumerate(devices)}
    div, unit = time_unit(float(g["end_s"].max() - g["start_s"].min()))
    for row in g.itertuples(index=False):
        y = ypos[row.device_id]
        phases = (("download", row.ready_s, row.download_end_s), ("compute", row.download_end_s, row.compute_end_s),
                  ("upload", row.compute_end_s, row.upload_end_s))
        for name, a, b in phases:
            if np.isfinite(a) and np.isfinite(b) and b > a:
                ax.barh(y, (b - a) / div, left=a / div, color=PHASE_COLOURS[name], height=0.7)
        if row.outcome != "ok" and np.isfinite(row.end_s):
            ax.plot(row.end_s / div, y, "kx")
    handles = [Patch(color=c, label=name) for name, c in PHASE_COLOURS.items()]
    handles.append(Line2D([], [], color="k", marker="x", ls="", label="work discarded"))
    ax.set_yticks(range(len(devices)), devices, fontsize=7)
    ax.set_xlabel(f"simulated time ({unit})")
    ax.set_title(f"Device timeline: {run}")
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def round_duration_cdf(rounds: pd.DataFrame) -> Figure | None:
    """Empirical CDF of round durations per method (all seeds pooled)."""
    if not len(rounds):
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    colours = _colour(_methods(rounds))
    for method, g in rounds.groupby("method"):
        d = np.sort(g["duration_s"].to_numpy(dtype=float))
        ax.step(d, np.arange(1, d.size + 1) / d.size, where="post", color=colours[method], label=method)
    ax.set_xlabel("round duration (s)")
    ax.set_ylabel("fraction of rounds")
    ax.set_title("Round-duration CDF")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def all_figures(runs) -> dict[str, Figure | None]:
    """Every figure for a :class:`analysis.load.Runs`; ``None`` where the runs cannot support it."""
    return {
        "accuracy_vs_time": accuracy_vs_time(runs.rounds),
        "speedup": speedup_bars(runs.summaries),
        "accuracy_vs_sparsity": accuracy_vs_sparsity(runs.summaries),
        "waiting_time": waiting_time(runs.rounds),
        "chosen_arms": chosen_arms(runs.device_rounds),
        "regret_vs_oracle": regret_vs_oracle(runs.rounds),
        "gantt": gantt(runs.device_rounds),
        "round_duration_cdf": round_duration_cdf(runs.rounds),
    }


def save(fig: Figure, out_dir: str | Path, name: str, formats: tuple[str, ...] = ("png", "pdf")) -> list[Path]:
    """Write ``fig`` as ``out_dir/name.<fmt>`` (through a temp file and ``os.replace``) and close it."""
    import os
    import tempfile

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out / f"{name}.{fmt}"
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=f".{fmt}", dir=out)
        os.fchmod(fd, 0o644)
        os.close(fd)
        fig.savefig(tmp, format=fmt, dpi=120)
        os.replace(tmp, path)
        paths.append(path)
    plt.close(fig)
    return paths
