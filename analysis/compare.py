"""Paired, seed-level comparison tables of methods (the tables of ``docs/RESULTS.md``).

FedSpine (arXiv 2501.02438, §V) claims that it reaches the target accuracy 1.4–6.9× faster than the
baselines and ends 0.4–4.5 accuracy points higher at the same sparsity. To check such claims on
simulated runs we compare methods *paired by seed*: in a sweep, every method of one seed shares the
same devices, roles and traces, so the per-seed difference (or ratio) removes the variance that the
population draws add, and the confidence interval is over those per-seed differences.

Every function here is pure: it takes the :class:`analysis.load.Runs` of :func:`analysis.load.load_runs`
(schemas in ``docs/experiments.md`` §3) and returns a DataFrame or a string. Confidence intervals are
Student-t half-widths over seeds (:func:`analysis.figures.mean_ci`); with fewer than two values
there is no interval and the half-width is NaN (shown as a bare mean), never a misleading 0.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .figures import mean_ci
from .load import Runs

# the runner's tolerance for "every device is at s*" (simfed.experiments.runner.summarise)
S_STAR_TOLERANCE = 1e-12
RELATIVE_LEVELS = (0.5, 0.75, 0.9)

TIME_COLUMNS = ["run", "method", "seed", "time_s", "round"]


def _ci(values, level: float) -> tuple[float, float, int]:
    """(mean, CI half-width, n) of the finite ``values``; the half-width is NaN below two values."""
    v = np.asarray(list(values), dtype=float)
    v = v[np.isfinite(v)]
    mean, half = mean_ci(v, level)
    return mean, (half if v.size >= 2 else math.nan), int(v.size)


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level: {level} is not in (0, 1)")


def _methods(runs: Runs, reference: str) -> list[str]:
    """The methods of the runs, the reference first; an absent reference is an error naming it."""
    present = sorted(set(runs.summaries["method"])) if len(runs.summaries) else []
    if reference not in present:
        raise ValueError(f"reference method {reference!r} is not among the runs ({', '.join(present) or 'none'})")
    return [reference] + [m for m in present if m != reference]


def _per_seed(summaries: pd.DataFrame, method: str, column: str) -> pd.Series:
    """``column`` of ``method``'s runs indexed by seed (two runs of one method and seed cannot be paired)."""
    g = summaries[summaries["method"] == method]
    dup = g["seed"][g["seed"].duplicated()]
    if len(dup):
        seed = int(dup.iloc[0])
        paths = ", ".join(str(x) for x in g.loc[g["seed"] == seed, "path"]) if "path" in g else "?"
        raise ValueError(f"method {method!r} has several runs for seed {seed} ({paths}): pass each sweep once, "
                         f"or rename one variant's directories (e.g. {method}-s{seed}-<label>) so it is labelled "
                         "as its own method")
    values = g[column] if column in g else pd.Series(math.nan, index=g.index)
    return pd.Series(pd.to_numeric(values, errors="coerce").to_numpy(dtype=float), index=g["seed"].astype(int))


def _paired(a: pd.Series, b: pd.Series, op) -> list[float]:
    """``op(a[s], b[s])`` for every seed s where both are finite."""
    shared = sorted(set(a.index) & set(b.index))
    out = [op(a[s], b[s]) for s in shared if np.isfinite(a[s]) and np.isfinite(b[s])]
    return [x for x in out if np.isfinite(x)]


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def time_to_accuracy(runs: Runs, threshold: float) -> pd.DataFrame:
    """Per run, when the *deployable* model first reached ``threshold``: columns run, method, seed, time_s, round.

    The time is the ``end_s`` of the first evaluated round whose accuracy is at least ``threshold``
    while every device is at the run's target sparsity (``min_sparsity >= s_star - 1e-12``): the same
    rule the runner uses for ``time_to_target_s``, so that an accuracy bought before pruning is not
    counted. A run whose ``s_star`` is 0 (HetLoRA never prunes) or unknown needs the accuracy only.
    NaN time and round when the run never got there.
    """
    s_star = {}
    if len(runs.summaries) and "s_star" in runs.summaries:
        s_star = dict(zip(runs.summaries["run"], pd.to_numeric(runs.summaries["s_star"], errors="coerce")))
    rows = []
    for _, srow in runs.summaries.iterrows():
        run = srow["run"]
        g = runs.rounds[runs.rounds["run"] == run] if len(runs.rounds) else runs.rounds
        time_s = rnd = math.nan
        if len(g):
            g = g.sort_values("round")
            acc = pd.to_numeric(g["accuracy"], errors="coerce").to_numpy(dtype=float)
            evaluated = g["evaluated"].fillna(False).astype(bool).to_numpy()
            ok = evaluated & np.isfinite(acc) & (acc >= threshold)
            target_sparsity = s_star.get(run, math.nan)
            if np.isfinite(target_sparsity) and target_sparsity > 0:
                sp = pd.to_numeric(g["min_sparsity"], errors="coerce").to_numpy(dtype=float)
                ok &= np.isfinite(sp) & (sp >= target_sparsity - S_STAR_TOLERANCE)
            hits = np.flatnonzero(ok)
            if hits.size:
                first = g.iloc[hits[0]]
                time_s, rnd = float(first["end_s"]), int(first["round"])
        rows.append({"run": run, "method": srow["method"], "seed": int(srow["seed"]), "time_s": time_s, "round": rnd})
    return pd.DataFrame(rows, columns=TIME_COLUMNS)


def accuracy_table(runs: Runs, reference: str = "fedspine", level: float = 0.95) -> pd.DataFrame:
    """One row per method (reference first): final accuracy and its paired gap to the reference, costs.

    Columns: method, n (seeds), final_accuracy, final_accuracy_ci, final_sparsity (mean),
    acc_gap_pts, acc_gap_pts_ci, acc_gap_n (reference − method final accuracy per shared seed, in
    accuracy points ×100; positive: the reference is better), mean_wait_s, mean_wait_s_ci,
    simulated_time_s, simulated_time_s_ci, inference_flops_rel (mean).
    """
    _check_level(level)
    methods = _methods(runs, reference)
    s = runs.summaries
    ref_acc = _per_seed(s, reference, "final_accuracy")
    rows = []
    for method in methods:
        acc = _per_seed(s, method, "final_accuracy")
        a_mean, a_ci, _ = _ci(acc, level)
        gap_mean, gap_ci, gap_n = _ci(_paired(ref_acc, acc, lambda r, m: 100.0 * (r - m)), level)
        w_mean, w_ci, _ = _ci(_per_seed(s, method, "mean_wait_s"), level)
        t_mean, t_ci, _ = _ci(_per_seed(s, method, "simulated_time_s"), level)
        rows.append({
            "method": method, "n": int((s["method"] == method).sum()),
            "final_accuracy": a_mean, "final_accuracy_ci": a_ci,
            "final_sparsity": _ci(_per_seed(s, method, "final_sparsity"), level)[0],
            "acc_gap_pts": gap_mean, "acc_gap_pts_ci": gap_ci, "acc_gap_n": gap_n,
            "mean_wait_s": w_mean, "mean_wait_s_ci": w_ci,
            "simulated_time_s": t_mean, "simulated_time_s_ci": t_ci,
            "inference_flops_rel": _ci(_per_seed(s, method, "inference_flops_rel"), level)[0],
        })
    return pd.DataFrame(rows)


def speed_table(runs: Runs, thresholds: list[float], reference: str = "fedspine", level: float = 0.95) -> pd.DataFrame:
    """One row per (threshold, method): how many seeds reached it, how fast, and the reference's speed-up.

    Columns: threshold, method, reached, n, time_s, time_s_ci (over the seeds that reached it),
    speedup, speedup_ci, speedup_n (t_method / t_reference per seed where both reached; > 1: the
    reference is faster; NaN without a pair), sim_time_ratio, sim_time_ratio_ci, sim_time_n (the
    same ratio of total ``simulated_time_s``, defined whenever the two share a seed — the fallback
    when a threshold is out of reach for some method).
    """
    _check_level(level)
    for threshold in thresholds:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold: {threshold} is not an accuracy in (0, 1]")
    methods = _methods(runs, reference)
    s = runs.summaries
    ref_sim = _per_seed(s, reference, "simulated_time_s")
    rows = []
    for threshold in sorted(thresholds):
        tta = time_to_accuracy(runs, threshold)
        per_method = {m: pd.Series(g["time_s"].to_numpy(dtype=float), index=g["seed"].astype(int))
                      for m, g in tta.groupby("method")}
        ref_t = per_method[reference]
        for method in methods:
            t = per_method[method]
            t_mean, t_ci, reached = _ci(t, level)
            sp_mean, sp_ci, sp_n = _ci(_paired(ref_t, t, lambda r, m: _ratio(m, r)), level)
            sim_mean, sim_ci, sim_n = _ci(_paired(ref_sim, _per_seed(s, method, "simulated_time_s"),
                                                  lambda r, m: _ratio(m, r)), level)
            rows.append({
                "threshold": float(threshold), "method": method, "reached": reached, "n": int(t.size),
                "time_s": t_mean, "time_s_ci": t_ci,
                "speedup": sp_mean, "speedup_ci": sp_ci, "speedup_n": sp_n,
                "sim_time_ratio": sim_mean, "sim_time_ratio_ci": sim_ci, "sim_time_n": sim_n,
            })
    return pd.DataFrame(rows)


def default_thresholds(runs: Runs, reference: str = "fedspine") -> list[float]:
    """The accuracy levels to time: the runs' ``target_accuracy`` plus three relative levels.

    A fixed target (the paper's) may be out of reach of a small simulated model, and then every
    time-to-accuracy is NaN and the speed comparison says nothing. The relative levels always
    give a table: for q in 0.5, 0.75, 0.9, the level a fraction q of the way from the lowest
    evaluated accuracy of the reference's runs (where training starts) to the lowest final accuracy
    of any method (a level every method's final model reaches). Rounded to 3 decimals, de-duplicated,
    sorted; only levels in (0, 1] are kept. Without evaluated accuracies (timing mode) only targets remain.
    """
    levels: set[float] = set()
    s = runs.summaries
    if len(s) and "target_accuracy" in s:
        for t in pd.to_numeric(s["target_accuracy"], errors="coerce").dropna():
            levels.add(round(float(t), 3))
    r = runs.rounds
    if len(r) and len(s) and "final_accuracy" in s:
        ref = r[(r["method"] == reference) & r["evaluated"].fillna(False).astype(bool)]
        ref_acc = pd.to_numeric(ref["accuracy"], errors="coerce").dropna()
        finals = pd.to_numeric(s["final_accuracy"], errors="coerce").dropna()
        if len(ref_acc) and len(finals):
            low, high = float(ref_acc.min()), float(finals.min())
            for q in RELATIVE_LEVELS:
                levels.add(round(low + q * (high - low), 3))
    return sorted(x for x in levels if 0.0 < x <= 1.0)


# ------------------------------------------------------------------------------------------ markdown

DASH = "–"


def _fmt(mean: float, half: float = math.nan, digits: int = 3, suffix: str = "") -> str:
    if not np.isfinite(mean):
        return DASH
    text = f"{mean:.{digits}f}{suffix}"
    return f"{text} ± {half:.{digits}f}" if np.isfinite(half) else text


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def markdown(runs: Runs, thresholds: list[float] | None = None, reference: str = "fedspine",
             level: float = 0.95) -> str:
    """Both tables as GitHub markdown, each with a legend that says what every column holds."""
    acc = accuracy_table(runs, reference, level)
    if thresholds is None:
        thresholds = default_thresholds(runs, reference)
        levels_are = (f"the runs' target accuracy, and levels 50%, 75% and 90% of the way from {reference}'s "
                      f"lowest evaluated accuracy to the lowest final accuracy of any method")
    else:
        levels_are = "as requested"
    pct = f"{100 * level:g}%"
    seeds = ", ".join(str(x) for x in sorted(set(runs.summaries["seed"].astype(int))))
    common = (f"Mean ± half-width of the {pct} Student-t confidence interval over the seeds (seed {seeds}); "
              f"a bare number had fewer than two values, “{DASH}” none. Differences and ratios are paired "
              f"by seed: every method of one seed shares devices, roles and traces, and only seeds both "
              f"methods ran are paired.")
    acc_rows = [[r.method, str(r.n), _fmt(r.final_accuracy, r.final_accuracy_ci),
                 _fmt(r.acc_gap_pts, r.acc_gap_pts_ci, 2), str(r.acc_gap_n), _fmt(r.final_sparsity),
                 _fmt(r.mean_wait_s, r.mean_wait_s_ci, 1), _fmt(r.simulated_time_s, r.simulated_time_s_ci, 1),
                 _fmt(r.inference_flops_rel)] for r in acc.itertuples()]
    parts = [
        "### Final accuracy at the target sparsity",
        "",
        _table(["method", "seeds", "final accuracy", f"{reference} − method (points)", "pairs",
                "final sparsity", "mean wait (s)", "simulated time (s)", "inference FLOPs (rel.)"], acc_rows),
        "",
        (f"*seeds*: runs of the method. *final accuracy*: global accuracy after every device is pruned to "
         f"s\\* (fraction correct). *{reference} − method*: per seed, {reference}'s final accuracy minus the "
         f"method's, ×100 (positive: {reference} is better); *pairs*: seeds in that difference. *final "
         f"sparsity*: mean nominal sparsity at the end (mean over seeds). *mean wait*: mean time an accepted "
         f"device waited for the round to close. *simulated time*: end of the last round. *inference FLOPs*: "
         f"the final model's inference FLOPs relative to the unpruned model (mean over seeds). {common}"),
        "",
        "### Time to accuracy",
        "",
    ]
    if thresholds:
        speed = speed_table(runs, thresholds, reference, level)
        speed_rows = [[f"{r.threshold:.3f}", r.method, f"{r.reached}/{r.n}", _fmt(r.time_s, r.time_s_ci, 1),
                       _fmt(r.speedup, r.speedup_ci, 2, "×"), str(r.speedup_n),
                       _fmt(r.sim_time_ratio, r.sim_time_ratio_ci, 2, "×")] for r in speed.itertuples()]
        parts.append(_table(["accuracy ≥", "method", "reached", "time (s)", f"speed-up of {reference}", "pairs",
                             "simulated-time ratio"], speed_rows))
    else:
        parts.append("No accuracy level to time: the runs have no target accuracy and no evaluated rounds.")
    parts += [
        "",
        (f"*accuracy ≥*: the level timed ({levels_are}). *reached*: "
         f"seeds whose deployable model (every device at s\\*; accuracy alone for a method that never prunes) "
         f"reached the level at an evaluated round, of the method's seeds. *time*: simulated end of that round, "
         f"over the seeds that reached it. *speed-up of {reference}*: per seed, the method's time ÷ {reference}'s "
         f"time, over seeds where both reached the level (>1×: {reference} is faster); *pairs*: those seeds. "
         f"*simulated-time ratio*: the method's total simulated time ÷ {reference}'s, per seed (the runs of a "
         f"sweep play the same number of rounds; defined even when a level is out of reach). {common}"),
        "",
    ]
    return "\n".join(parts)
