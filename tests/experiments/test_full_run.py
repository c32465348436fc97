"""Full mode (real PyTorch training of the tiny model): a 2-round run, and resume after a kill.

Slow: needs the Shakespeare data and the pre-trained tiny model (fetched and trained once, then cached).
"""

from __future__ import annotations

import io
import json
import math
import pickle

import numpy as np
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


def check_checkpoint_is_plain_data(run_dir) -> dict:
    """The checkpoint names no class or function of the accuracy layer (nor the old referencing pickler's):
    the trainer and the aggregator are in it as their state_dict()s. Returns its learner state."""
    seen: set[str] = set()

    class Recording(pickle.Unpickler):
        def find_class(self, module, name):
            seen.add(module)
            return super().find_class(module, name)

    checkpoint = Recording(io.BytesIO(RunDir(run_dir).load_checkpoint())).load()
    assert not [m for m in seen if m.startswith(("simfed.accuracy", "simfed.experiments.learner"))], seen
    learner = checkpoint["state"]["learner"]
    assert set(learner) == {"trainer", "aggregator"} and learner["trainer"]["devices"]
    return learner


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
    check_checkpoint_is_plain_data(killed)
    assert main(["run", str(cfg_path), "--out", str(killed), "--no-progress"]) == 0
    assert json.loads((killed / "wall.json").read_text())["resumed_from_round"] == 1
    tk = tables(killed)
    for name in TABLES:
        assert_frame_equal(tk[name], t[name])
    assert json.loads((killed / "summary.json").read_text()) == summary


FLORA = """
mode = "full"
method = "flora"
rounds = 2
[traces]
generator = "fedspine-testbed"
devices = 3
[train]
local_iters = 4
tau = 2
eval_every = 1
[policy]
r_max = 16
"""


@pytest.mark.slow
def test_flora_full_run_downloads_the_stack_merges_and_resumes(tmp_path):
    """FLoRA (no pruning, ranks by device type): round 1's download is the stack of round 0's accepted updates
    (sum of their ranks, costed by the cost model), the merged update is evaluated, and a run killed after
    round 0 resumes bit-identically (the merged update travels in the checkpoint as plain data)."""
    from simfed.experiments.runner import build_cost
    from simfed.structure import structure_at

    cfg_path = tmp_path / "flora.toml"
    cfg_path.write_text(FLORA)
    whole = tmp_path / "whole"
    assert main(["run", str(cfg_path), "--out", str(whole), "--no-progress"]) == 0
    t = tables(whole)
    devs = t["device_rounds"]
    assert (devs["sparsity_after"] == 0).all() and set(devs["r"]) <= {4, 8, 16}
    assert ((t["rounds"]["accuracy"] > 0) & (t["rounds"]["accuracy"] < 1)).all()
    cost = build_cost(C.load(cfg_path))
    full = structure_at(cost.shape, 0.0)
    first = devs[devs["round"] == 0]
    stacked = int(first.loc[first["outcome"] == "ok", "r"].sum())
    assert stacked > 0
    for _, row in devs.iterrows():
        trained_before = row["round"] == 1 and first.set_index("device_id").loc[row["device_id"], "outcome"] == "ok"
        lora = cost.adapter_bytes(full, stacked) if trained_before else (0.0 if row["round"] == 0 else None)
        base = cost.base_model_bytes(0.0) if row["base_download"] else 0.0
        if lora is not None:
            assert row["down_bytes"] == pytest.approx(lora + base), row

    killed = tmp_path / "killed"
    run_and_kill(cfg_path, killed, kill_after=1)
    learner = check_checkpoint_is_plain_data(killed)
    assert learner["aggregator"]["stacked_ranks"] == [stacked]
    assert main(["run", str(cfg_path), "--out", str(killed), "--no-progress"]) == 0
    tk = tables(killed)
    for name in TABLES:
        assert_frame_equal(tk[name], t[name])
