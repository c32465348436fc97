"""Where does an online per-device bandit pay? FedSpine's speed-up over a baseline across a grid of populations.

Runs of a sweep over trace-generator options (``traces.generator_args``: the compute spread between board types,
the network's persistence, the access points' capacity; docs/RESULTS.md) are grouped by their grid point; at each
point the speed-up of ``method`` over ``baseline`` is paired by seed (baseline time / method time, > 1: faster) with
a Student-t confidence interval over the seeds, and so is the oracle's. In timing-only runs the time is the
simulated time of the same number of rounds; with training, the time to the target accuracy when every run
reached it.

    python -m analysis.sensitivity runs/sensitivity --out docs/results
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from analysis.figures import _time_metric, mean_ci, save  # noqa: E402
from analysis.load import load_runs  # noqa: E402

GRID = ("compute_spread", "link_jitter", "link_jitter_corr", "access_points", "ap_downlink_bytes_s")


def grid_table(paths: list[str | Path]) -> pd.DataFrame:
    """One row per run: method, seed, the generator options of :data:`GRID` and the run's times."""
    from simfed.timing.generators import generator_options

    runs = load_runs(list(paths), events=False)
    rows = []
    for r in runs.runs:
        traces = r.config.get("traces", {})
        defaults = {o.name: o.default for o in generator_options(traces.get("generator") or "fedspine-testbed")}
        args = {**defaults, **traces.get("generator_args", {})}
        rows.append({"method": r.config.get("method"), "seed": r.summary.get("seed"),
                     **{k: args.get(k) for k in GRID},
                     "simulated_time_s": r.summary.get("simulated_time_s"),
                     "time_to_target_s": r.summary.get("time_to_target_s"),
                     # the capacity the method bought with its time: the mean LoRA rank it played
                     "mean_rank": float(r.device_rounds["r"].mean()) if len(r.device_rounds) else float("nan")})
    return pd.DataFrame(rows)


def speedups(table: pd.DataFrame, method: str = "fedspine", baseline: str = "uniform",
             oracle: str = "oracle") -> pd.DataFrame:
    """Per grid point: ``method``'s and the oracle's speed-up over ``baseline`` (mean, CI half-width, seeds)."""
    keys = [k for k in GRID if k in table and table[k].notna().any()]
    metric = _time_metric(table)
    out = []
    for point, g in table.groupby(keys, dropna=False):
        base = g[g["method"] == baseline].set_index("seed")[metric]
        row = dict(zip(keys, point if isinstance(point, tuple) else (point,)))
        for who, label in ((method, "speedup"), (oracle, "oracle_speedup")):
            mine = g[g["method"] == who].set_index("seed")[metric]
            ratios = np.array([base[s] / mine[s] for s in mine.index if s in base.index and mine[s] > 0])
            mean, half = mean_ci(ratios)
            row.update({label: mean, f"{label}_ci": half, f"{label}_n": len(ratios)})
        for who in (baseline, method, oracle):
            row[f"rank_{who}"] = float(g.loc[g["method"] == who, "mean_rank"].mean())
        out.append(row)
    return pd.DataFrame(out).assign(metric=metric)


def sensitivity_map(tab: pd.DataFrame, mark: dict | None = None, method: str = "fedspine",
                    baseline: str = "uniform", column: str = "speedup") -> Figure:
    """Heat maps of the speed-up (``column``: ``speedup`` of ``method``, or ``oracle_speedup``): compute spread (x)
    by network persistence (y), one panel per access-point setting; each cell shows the mean and its 95% CI over
    seeds and the mean ranks played (method / baseline); ``mark`` outlines one grid point (the testbed)."""
    tab = tab.rename(columns={column: "value", f"{column}_ci": "value_ci", f"{column}_n": "value_n"})
    tab = tab.copy()
    tab["network"] = [f"jitter {j:g}, corr {c:g}" for j, c in zip(tab["link_jitter"], tab["link_jitter_corr"])]
    tab["aps"] = [("private links" if not a else f"{int(a)} APs x {b / 1e6:g} MB/s")
                  for a, b in zip(tab["access_points"], tab["ap_downlink_bytes_s"])]
    tab = tab.drop_duplicates(subset=["compute_spread", "network", "aps"])
    panels = sorted(tab["aps"].unique(), key=lambda s: (s != "private links", s))
    xs = sorted(tab["compute_spread"].unique())
    ys = sorted(tab["network"].unique())
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels) + 2.2, 3.4), squeeze=False,
                             layout="constrained")
    vmax = max(float(np.nanmax(np.abs(np.log(tab["value"].to_numpy(dtype=float))))), np.log(1.1))
    who = "oracle" if column == "oracle_speedup" else method
    for ax, panel in zip(axes[0], panels):
        g = tab[tab["aps"] == panel]
        z = np.full((len(ys), len(xs)), np.nan)
        for row in g.itertuples(index=False):
            z[ys.index(row.network), xs.index(row.compute_spread)] = row.value
            ranks = f"r {getattr(row, 'rank_' + who):.1f} / {getattr(row, 'rank_' + baseline):.1f}"
            ax.text(xs.index(row.compute_spread), ys.index(row.network),
                    f"{row.value:.2f}\n±{row.value_ci:.2f}\n{ranks}", ha="center", va="center", fontsize=6.5)
        im = ax.imshow(np.log(z), cmap="RdBu", vmin=-vmax, vmax=vmax, aspect="auto", origin="lower")
        if mark is not None and mark.get("aps") == panel:
            x, y = xs.index(mark["compute_spread"]), ys.index(mark["network"])
            ax.add_patch(plt.Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, lw=2.5, ec="k"))
        ax.set_xticks(range(len(xs)), [f"{x:g}" for x in xs])
        ax.set_yticks(range(len(ys)), ys if ax is axes[0][0] else [], fontsize=7)
        ax.set_title(panel, fontsize=9)
    bar = fig.colorbar(im, ax=axes[0].tolist(), label=f"speed-up of {who} over {baseline}")
    ticks = np.log([1 / 1.2, 1 / 1.1, 1.0, 1.1, 1.2])
    bar.set_ticks(ticks[np.abs(ticks) <= vmax + 1e-9], labels=[f"{np.exp(t):.2f}" for t in ticks[np.abs(ticks) <= vmax + 1e-9]])
    fig.supxlabel("compute spread between board types (0: all as fast as a TX2, 1: specifications, 2: squared)", fontsize=8)
    n = int(tab["value_n"].min())
    fig.suptitle(f"{who} vs {baseline}: speed-up over the same rounds (mean ± 95% CI over {n} seeds), mean ranks "
                 f"{who} / {baseline}; box: the FedSpine testbed", fontsize=9)
    return fig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--out", default="figures")
    ap.add_argument("--method", default="fedspine")
    ap.add_argument("--baseline", default="uniform")
    args = ap.parse_args(argv)
    tab = speedups(grid_table(args.runs), args.method, args.baseline)
    pd.set_option("display.width", 200)
    print(tab.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    mark = {"compute_spread": 1.0, "network": "jitter 0.1, corr 0.9", "aps": "4 APs x 25 MB/s"}
    save(sensitivity_map(tab, mark, args.method, args.baseline), args.out, "sensitivity_map", ("png",))
    if "oracle_speedup" in tab and tab["oracle_speedup"].notna().any():
        save(sensitivity_map(tab, mark, args.method, args.baseline, "oracle_speedup"), args.out,
             "sensitivity_map_oracle", ("png",))
    out = Path(args.out) / "sensitivity.csv"
    tab.to_csv(out, index=False)
    print(f"wrote {out} and sensitivity_map.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
