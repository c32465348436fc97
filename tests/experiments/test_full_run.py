"""Full mode (real PyTorch training of the tiny model): a 2-round run, and resume after a kill.

Slow: needs the Shakespeare data and the pre-trained tiny model (fetched and trained once, then cached).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from simfed import config as C
from simfed.cli import main
from simfed.experiments.outputs import RunDir

from .test_run import TABLES, run_and_kill, tables

FULL = """
mode = "full"
method = "fedspine"
rounds = 2
s_star = 0.5
target_accuracy = 0.05
[traces]
generator = "fedspine-testbed"
devices = 3
[train]
local_iters = 4
tau = 2
eval_every = 1
[policy]
r_max = 8
"""


@pytest.mark.slow
def test_two_round_full_run_trains_and_resumes(tmp_path):
    cfg_path = tmp_path / "full.toml"
    cfg_path.write_text(FULL)
    whole = tmp_path / "whole"
    assert main(["run", str(cfg_path), "--out", str(whole), "--no-progress"]) == 0
    t = tables(whole)
    rounds, devs = t["rounds"], t["device_rounds"]
    assert rounds["evaluated"].all()
    assert ((rounds["accuracy"] > 0) & (rounds["accuracy"] < 1)).all()
    ok = devs[devs["outcome"] == "ok"]
    assert len(ok) > 0
    assert np.isfinite(ok[["loss_before", "loss_after", "update_norm", "measured_sparsity_after"]].to_numpy()).all()
    assert (ok["n_samples"] > 0).all()
    # the trainer pruned to the planned structure: measured sparsity grows when the plan asks for it
    grew = ok[ok["sparsity_after"] > ok["sparsity_before"]]
    assert (grew["measured_sparsity_after"] > 0).all()
    summary = json.loads((whole / "summary.json").read_text())
    assert summary["mode"] == "full" and summary["final_sparsity"] == pytest.approx(0.5)
    assert 0 < summary["final_accuracy"] < 1 and math.isfinite(summary["final_eval_loss"])

    killed = tmp_path / "killed"
    run_and_kill(cfg_path, killed, kill_after=1)
    assert RunDir(killed).has_checkpoint()
    assert main(["run", str(cfg_path), "--out", str(killed), "--no-progress"]) == 0
    assert json.loads((killed / "wall.json").read_text())["resumed_from_round"] == 1
    tk = tables(killed)
    for name in TABLES:
        assert_frame_equal(tk[name], t[name])
    assert json.loads((killed / "summary.json").read_text()) == summary
