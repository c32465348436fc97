"""`simfed run`: a complete, pandas-readable run directory; determinism; resume after a kill."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from simfed import config as C
from simfed.cli import main
from simfed.experiments.outputs import DEVICE_ROUND_COLUMNS, EVENT_COLUMNS, ROUND_COLUMNS, RunDir
from simfed.experiments.runner import RunError, run_config

TABLES = ("events", "rounds", "device_rounds")


def tables(run_dir: Path) -> dict[str, pd.DataFrame]:
    return {t: pd.read_parquet(run_dir / f"{t}.parquet") for t in TABLES}


def test_run_directory_is_complete_and_readable(tiny_config, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(tiny_config), "--out", str(out), "--no-progress"]) == 0
    for name in ("config.toml", "events.parquet", "rounds.parquet", "device_rounds.parquet", "summary.json", "wall.json"):
        assert (out / name).is_file(), name
    assert not (out / "checkpoint.pkl").exists()
    t = tables(out)
    assert list(t["rounds"].columns[: len(ROUND_COLUMNS)]) == ROUND_COLUMNS
    assert list(t["device_rounds"].columns[: len(DEVICE_ROUND_COLUMNS)]) == DEVICE_ROUND_COLUMNS
    assert list(t["events"].columns) == EVENT_COLUMNS
    rounds, devs = t["rounds"], t["device_rounds"]
    assert list(rounds["round"]) == list(range(6))
    # over-commitment: 4 participants x 1.5 -> 6 selected, the 2 last to finish are stragglers
    assert (rounds["n_selected"] == 6).all() and (rounds["n_ok"] == 4).all() and (rounds["n_straggler"] == 2).all()
    assert len(devs) == 6 * 6 and set(devs["outcome"]) == {"ok", "straggler"}
    # rounds chain in simulated time and every accepted device ends before its round
    assert (rounds["start_s"].iloc[1:].to_numpy() == rounds["end_s"].iloc[:-1].to_numpy()).all()
    ok = devs[devs["outcome"] == "ok"].merge(rounds[["round", "end_s"]], on="round", suffixes=("", "_round"))
    assert (ok["end_s"] <= ok["end_s_round"]).all() and (ok["wait_s"] >= 0).all()
    # sparsity only grows, never beyond s*, and p = 0 rounds keep it
    assert (devs["sparsity_after"] >= devs["sparsity_before"]).all() and devs["sparsity_after"].max() <= 0.5 + 1e-12
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 6 and summary["mode"] == "timing" and summary["final_sparsity"] == pytest.approx(0.5)
    assert summary["simulated_time_s"] == pytest.approx(rounds["end_s"].iloc[-1])
    assert summary["final_accuracy"] is None  # timing mode trains nothing
    assert 0 < summary["inference_flops_rel"] < 1
    assert C.from_dict(C.read_toml(out / "config.toml")) == C.load(tiny_config)


def test_same_config_and_seed_give_identical_tables(tiny_config, tmp_path):
    cfg = C.load(tiny_config)
    s1 = run_config(cfg, tmp_path / "a", progress=False)
    s2 = run_config(cfg, tmp_path / "b", progress=False)
    assert s1 == s2
    ta, tb = tables(tmp_path / "a"), tables(tmp_path / "b")
    for name in TABLES:
        assert_frame_equal(ta[name], tb[name])
    other = run_config(C.load(tiny_config, ["seed=1"]), tmp_path / "c", progress=False)
    assert other != s1  # a different seed is a different run


def test_complete_run_is_not_rerun_and_other_config_is_refused(tiny_config, tmp_path):
    cfg = C.load(tiny_config)
    out = tmp_path / "run"
    run_config(cfg, out, progress=False)
    mtime = (out / "rounds.parquet").stat().st_mtime_ns
    run_config(cfg, out, progress=False)
    assert (out / "rounds.parquet").stat().st_mtime_ns == mtime
    with pytest.raises(RunError, match="another config"):
        run_config(C.load(tiny_config, ["rounds=3"]), out, progress=False)
    run_config(C.load(tiny_config, ["rounds=3"]), out, progress=False, fresh=True)
    assert len(pd.read_parquet(out / "rounds.parquet")) == 3


KILLER = """
import os, signal, sys
from simfed.experiments import outputs
saved = [0]
original = outputs.RunDir.save_checkpoint
def save_then_die(self, data):
    saved[0] += 1
    if saved[0] == {kill_after} and {before_save}:  # the round's journal record is written, its checkpoint not
        os.kill(os.getpid(), signal.SIGKILL)
    original(self, data)
    if saved[0] == {kill_after}:
        os.kill(os.getpid(), signal.SIGKILL)
outputs.RunDir.save_checkpoint = save_then_die
from simfed.cli import main
sys.exit(main(["run", {config!r}, "--out", {out!r}, "--no-progress"]))
"""


def run_and_kill(config: Path, out: Path, kill_after: int, before_save: bool = False) -> None:
    """Run ``simfed run`` in a subprocess that SIGKILLs itself at its ``kill_after``-th checkpoint."""
    code = KILLER.format(kill_after=kill_after, before_save=before_save, config=str(config), out=str(out))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr


@pytest.mark.parametrize("before_save, resumed_from", [(False, 3), (True, 2)])
def test_resume_after_kill_matches_uninterrupted_run(tiny_config, tmp_path, before_save, resumed_from):
    """Killed after round 3's checkpoint, or between round 3's journal record and its checkpoint."""
    killed = tmp_path / "killed"
    run_and_kill(tiny_config, killed, kill_after=3, before_save=before_save)
    rd = RunDir(killed)
    assert rd.has_checkpoint() and not rd.is_complete()
    assert main(["run", str(tiny_config), "--out", str(killed), "--no-progress"]) == 0
    assert rd.is_complete() and not rd.has_checkpoint() and not (killed / "journal.bin").exists()
    assert json.loads((killed / "wall.json").read_text())["resumed_from_round"] == resumed_from
    whole = tmp_path / "whole"
    run_config(C.load(tiny_config), whole, progress=False)
    tk, tw = tables(killed), tables(whole)
    for name in TABLES:
        assert_frame_equal(tk[name], tw[name])
    assert rd.read_summary() == RunDir(whole).read_summary()


def test_bad_method_is_one_line_naming_the_key(tiny_config, tmp_path, capsys):
    assert main(["run", str(tiny_config), "--out", str(tmp_path / "x"), "--set", "method=nope", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "method" in err and "nope" in err


def test_oracle_and_baselines_run_in_timing_mode(tiny_config, tmp_path):
    for method in ("oracle", "hetlora", "prune-then-tune", "uniform", "fedmp"):
        s = run_config(C.load(tiny_config, [f"method={method}", "rounds=3"]), tmp_path / method, progress=False)
        assert s["rounds"] == 3
        devs = pd.read_parquet(tmp_path / method / "device_rounds.parquet")
        if method == "hetlora":
            assert (devs["sparsity_after"] == 0).all() and s["final_sparsity"] == 0
        if method == "prune-then-tune":
            assert (devs["sparsity_before"] == 0.5).all() and (devs["p"] == 0).all()
        assert math.isfinite(s["simulated_time_s"])


def test_discarded_work_does_not_advance_sparsity(tiny_config, tmp_path):
    """With a tight deadline some devices are late; the server keeps their sparsity for the next round."""
    cfg = C.load(tiny_config, ["engine.participants=0", "engine.overcommit=1.0", "engine.deadline_s=0.35", "server.base_download=false",
                               "method=uniform", "policy.method_params.rounds_to_target=5"])
    run_config(cfg, tmp_path / "r", progress=False)
    devs = pd.read_parquet(tmp_path / "r" / "device_rounds.parquet").sort_values(["device_id", "round"])
    assert (devs["outcome"] == "late").any() and (devs["outcome"] == "ok").any()
    for _, g in devs.groupby("device_id"):
        prev = None
        for row in g.itertuples():
            if prev is not None:
                expected = prev.sparsity_after if prev.outcome == "ok" else prev.sparsity_before
                assert row.sparsity_before == pytest.approx(expected)
            prev = row
    late = devs[devs["outcome"] == "late"]
    assert late["wait_s"].isna().all() and (late["reward"] == 0).all()


def test_a_sample_of_devices_is_logged(tiny_config, tmp_path):
    """engine.log_sample: only a hashed sample of the devices' events is logged (server events always); the
    round tables are whole, and the sample does not change the simulation."""
    run_config(C.load(tiny_config, ["rounds=3"]), tmp_path / "all", progress=False)
    run_config(C.load(tiny_config, ["rounds=3", "engine.log_sample=0.5"]), tmp_path / "half", progress=False)
    full, half = tables(tmp_path / "all"), tables(tmp_path / "half")
    assert_frame_equal(full["rounds"], half["rounds"])
    assert_frame_equal(full["device_rounds"], half["device_rounds"])
    logged = set(half["events"]["device_id"]) - {""}
    assert 0 < len(logged) < full["events"]["device_id"].nunique() - 1
    server = full["events"][full["events"]["device_id"] == ""]
    assert_frame_equal(server.reset_index(drop=True), half["events"][half["events"]["device_id"] == ""].reset_index(drop=True))
    mine = full["events"][full["events"]["device_id"].isin(logged)].reset_index(drop=True)
    assert_frame_equal(mine, half["events"][half["events"]["device_id"].isin(logged)].reset_index(drop=True))


def test_the_oracles_vectorised_predictions_equal_one_call_each():
    """TracePredictor.many (what the oracle uses) gives exactly the values of one call per (device, arm)."""
    from simfed.decisions.arms import ArmSpace
    from simfed.experiments.runner import TracePredictor
    from simfed.timing.cost import CostModel
    from simfed.timing.generators import generate
    from simfed.timing.presets import timing_cost

    pop = generate("fedspine-testbed", n_devices=6, seed=3, duration_s=3600.0)
    cost = timing_cost("roberta-base", batch_size=8, seq_len=80)
    predictor = TracePredictor(pop, cost, s_star=0.5, local_iters=20, tau=20)
    predictor.now_s = 123.0
    requests = [(d.device_id, arm, s) for d in pop.devices for arm in ArmSpace().grid()[::4] for s in (0.0, 0.3)]
    assert predictor.many(requests).tolist() == [predictor(*q) for q in requests]
    assert isinstance(cost, CostModel) and any(math.isfinite(t) for t in predictor.many(requests))


def test_a_checkpoint_of_another_format_is_refused_with_one_clear_error(tiny_config, tmp_path):
    import pickle

    cfg = C.load(tiny_config)
    out = tmp_path / "run"
    run_config(cfg, out, progress=False)
    rd = RunDir(out)
    rd.file("summary.json").unlink()  # an unfinished run ...
    text = (out / "config.toml").read_text()
    rd.save_checkpoint(pickle.dumps({"config": text, "rounds_done": 1, "journal_bytes": 0, "plain": b""}))
    with pytest.raises(RunError, match="checkpoint has format none, this simfed writes and reads format 2.*--fresh"):
        run_config(cfg, out, progress=False)
    rd.save_checkpoint(b"not a pickle")
    with pytest.raises(RunError, match="cannot read its checkpoint.*--fresh"):
        run_config(cfg, out, progress=False)
    run_config(cfg, out, progress=False, fresh=True)  # --fresh starts again
    assert rd.is_complete()
