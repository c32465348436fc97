"""`simfed demo` end to end (in timing mode, so it is fast) and `simfed plot` over a sweep directory."""

from __future__ import annotations

from simfed.cli import main
from simfed.experiments.demo import DEMO_METHODS, run_demo, shipped_config


def test_demo_writes_runs_figures_and_report(tmp_path):
    report = run_demo(tmp_path, config_path=shipped_config(), overrides=["mode=timing", "rounds=4"], workers=1,
                      echo=lambda _m: None)
    text = report.read_text()
    for method in DEMO_METHODS:
        assert method in text
        assert (tmp_path / "runs" / f"{method}-s0" / "summary.json").is_file()
    pngs = {p.stem for p in (tmp_path / "figures").glob("*.png")}
    assert {"speedup", "waiting_time", "chosen_arms", "gantt", "round_duration_cdf"} <= pngs
    assert "accuracy_vs_time" not in pngs  # timing mode has no accuracy to draw
    tables = (tmp_path / "comparison.md").read_text()
    assert "| hetlora |" in tables and "simulated-time ratio" in tables


def test_plot_cli_over_a_sweep(tiny_config, tmp_path, capsys):
    assert main(["sweep", str(tiny_config), "--out", str(tmp_path / "sw"), "--workers", "1",
                 "--set", "rounds=3", "--set", "sweep.methods=['fedspine', 'oracle', 'hetlora']"]) == 0
    assert main(["plot", str(tmp_path / "sw"), "--out", str(tmp_path / "figs"), "--formats", "png"]) == 0
    pngs = {p.stem for p in (tmp_path / "figs").glob("*.png")}
    assert {"regret_vs_oracle", "speedup", "gantt"} <= pngs
    assert not list((tmp_path / "figs").glob("*.pdf"))
    assert main(["plot", str(tmp_path / "sw"), "--formats", "gif"]) == 2
