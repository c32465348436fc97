"""Run directories load into tagged DataFrames, and every figure function draws from the documented schema."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis import figures, load
from simfed.experiments.outputs import DEVICE_ROUND_COLUMNS, ROUND_COLUMNS, RunDir


def fake_run(root, method, seed, round_s, acc_step, oracle=False):
    """A hand-sized run directory following the documented schema (2 devices, 4 rounds)."""
    rounds, devs, events = [], [], []
    t = 0.0
    for r in range(1, 5):
        start, end = t, t + round_s * (1 + 0.1 * seed)
        rounds.append({c: math.nan for c in ROUND_COLUMNS} | {
            "round": r, "start_s": start, "end_s": end, "duration_s": end - start, "n_selected": 2, "n_ok": 2,
            "mean_wait_s": 1.0 * r, "accuracy": acc_step * r, "eval_loss": 2.0 - 0.1 * r, "evaluated": True,
            "min_sparsity": 0.1 * r, "mean_sparsity": 0.1 * r})
        for i, (dev, typ) in enumerate((("a0", "tx2"), ("b0", "agx"))):
            devs.append({c: math.nan for c in DEVICE_ROUND_COLUMNS} | {
                "round": r, "device_id": dev, "device_type": typ, "outcome": "ok", "p": 0.1 * (i + 1), "r": 4 * (i + 1),
                "start_s": start, "ready_s": start, "download_end_s": start + 1, "compute_end_s": end - 2 * i - 1,
                "upload_end_s": end - 2 * i, "end_s": end - 2 * i, "wait_s": 2.0 * i, "n_samples": 10, "reward": 0.5})
            events.append({"time_s": start, "round": r, "device_id": dev, "kind": "select", "detail": ""})
        t = end
    summary = {"method": method, "seed": seed, "simulated_time_s": t, "time_to_target_s": rounds[1]["end_s"],
               "final_accuracy": acc_step * 4, "final_sparsity": 0.5, "mean_wait_s": 1.0}
    rd = RunDir(root / f"{method}-s{seed}")
    rd.write_config(f'method = "{method}"\nseed = {seed}\n')
    rd.write_tables(events, rounds, devs, summary)
    return rd.path


@pytest.fixture
def sweep_dir(tmp_path):
    for seed in (0, 1):
        fake_run(tmp_path, "hetlora", seed, round_s=100.0, acc_step=0.1)
        fake_run(tmp_path, "fedspine", seed, round_s=50.0, acc_step=0.12)
        fake_run(tmp_path, "oracle", seed, round_s=40.0, acc_step=0.12)
    return tmp_path


def test_load_runs_tags_rows(sweep_dir):
    runs = load.load_runs([sweep_dir])
    assert len(runs.runs) == 6
    assert set(runs.rounds["method"]) == {"hetlora", "fedspine", "oracle"}
    assert set(runs.device_rounds["seed"]) == {0, 1}
    assert len(runs.rounds) == 6 * 4 and len(runs.events) == 6 * 8


def test_load_missing_dir_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load.load_runs([tmp_path / "nowhere"])
    with pytest.raises(FileNotFoundError, match="no complete run"):
        load.load_runs([tmp_path])


def test_speedup_is_fedspine_over_each_baseline_paired_by_seed(sweep_dir):
    runs = load.load_runs([sweep_dir])
    tab, metric = figures.speedup_table(runs.summaries, method="fedspine")
    assert metric == "time_to_target_s"
    het = tab.set_index("baseline").loc["hetlora"]
    # time to target is the end of round 2; hetlora rounds take twice as long as fedspine's for the same seed
    assert het["speedup"] == pytest.approx(2.0) and het["ci"] == pytest.approx(0.0) and het["n"] == 2
    assert "fedspine" not in set(tab["baseline"])
    # the oracle's rounds take 40 s against fedspine's 50 s: fedspine is 0.8x as fast
    assert tab.set_index("baseline").loc["oracle", "speedup"] == pytest.approx(0.8)
    # a method that never prunes records s* = 0 in its summary; it is still paired with fedspine by seed
    unpruned = runs.summaries.assign(s_star=np.where(runs.summaries["method"] == "hetlora", 0.0, 0.5))
    tab0, _ = figures.speedup_table(unpruned, method="fedspine")
    assert tab0.set_index("baseline").loc["hetlora", "n"] == 2
    assert figures.speedup_bars(unpruned).axes[0].get_title() == "fedspine's speed-up (95% CI over 2 seeds)"


def test_mean_ci_matches_t_interval():
    mean, half = figures.mean_ci(np.array([1.0, 2.0, 3.0]))
    assert mean == pytest.approx(2.0)
    assert half == pytest.approx(4.302652729911275 * 1.0 / np.sqrt(3))


def test_every_figure_is_drawn_and_saved(sweep_dir, tmp_path):
    runs = load.load_runs([sweep_dir])
    figs = figures.all_figures(runs)
    assert all(f is not None for f in figs.values()), [k for k, f in figs.items() if f is None]
    out = tmp_path / "figs"
    for name, fig in figs.items():
        for p in figures.save(fig, out, name):
            assert p.stat().st_size > 1000
    assert len(list(out.glob("*.png"))) == len(list(out.glob("*.pdf"))) == 8


def test_regret_needs_an_oracle(sweep_dir):
    runs = load.load_runs([sweep_dir])
    no_oracle = runs.rounds[runs.rounds["method"] != "oracle"]
    assert figures.regret_vs_oracle(no_oracle) is None


def test_timing_only_runs_skip_accuracy_figures(sweep_dir):
    runs = load.load_runs([sweep_dir])
    rounds = runs.rounds.assign(accuracy=np.nan, evaluated=False)
    assert figures.accuracy_vs_time(rounds) is None
    assert figures.accuracy_vs_sparsity(runs.summaries.assign(final_accuracy=np.nan)) is None
    assert isinstance(figures.round_duration_cdf(rounds), figures.Figure)


def test_grid_variants_are_not_pooled_as_seeds(tmp_path):
    for seed in (0, 1):
        for tau in (5, 10):
            path = fake_run(tmp_path, "fedspine", seed, round_s=10.0 * tau, acc_step=0.1)
            path.rename(tmp_path / f"fedspine-s{seed}-tau={tau}")
    fake_run(tmp_path, "hetlora", 0, round_s=100.0, acc_step=0.1)
    runs = load.load_runs([tmp_path])
    assert set(runs.summaries["method"]) == {"fedspine-tau=5", "fedspine-tau=10", "hetlora"}
    assert set(runs.rounds["method"]) == set(runs.summaries["method"])
    assert (runs.summaries.groupby("method").size().loc[["fedspine-tau=5", "fedspine-tau=10"]] == 2).all()


def test_accuracy_vs_sparsity_claims_an_interval_only_where_there_are_seeds():
    # as analysis.load labels a sweep over s* beside a run at the config's s*: one series, two points
    rows = [{"method": "fedspine" if sp == 0.5 else f"fedspine-s_star={sp}", "seed": s, "s_star": sp,
             "final_accuracy": 0.4 + 0.01 * s - 0.1 * sp} for sp, seeds in ((0.2, [0]), (0.5, [0, 1, 2])) for s in seeds]
    mixed = figures.accuracy_vs_sparsity(pd.DataFrame(rows))
    ax = mixed.axes[0]
    assert "n ≥ 2" in ax.get_title() and {t.get_text() for t in ax.texts} == {"n=1", "n=3"}
    assert len(ax.containers) == 1 and len(ax.containers[0].lines[0].get_xdata()) == 2
    one = figures.accuracy_vs_sparsity(pd.DataFrame([r for r in rows if r["seed"] == 0]))
    assert one.axes[0].get_title().endswith("(one seed)") and not one.axes[0].texts
    three = figures.accuracy_vs_sparsity(pd.DataFrame([r for r in rows if r["s_star"] == 0.5]))
    assert three.axes[0].get_title().endswith("(95% CI over seeds)")
