"""Sweeps: expansion, a failed member does not lose the others, resume skips complete members,
and the same sweep file runs on a Dask LocalCluster."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from simfed import config as C
from simfed.cli import main
from simfed.experiments.sweep import expand, run_sweep

SWEEP = """
[sweep]
methods = ["fedspine", "uniform"]
seeds = [0, 1]
[sweep.grid]
"train.tau" = [5, 10]
"""


def test_expand_is_the_full_product_with_stable_names(tiny_config):
    cfg = C.load(tiny_config, ["sweep.methods=['fedspine', 'uniform']", "sweep.seeds=[0, 1]",
                               "sweep.grid.train.tau=[5, 10]"])
    members = expand(cfg)
    assert len(members) == 2 * 2 * 2
    names = [m.name for m in members]
    assert names[0] == "fedspine-s0-tau=5" and len(set(names)) == 8
    m = members[-1]
    assert (m.config.method, m.config.seed, m.config.train.tau) == ("uniform", 1, 10)
    assert m.config.sweep == C.SweepOptions()  # members are plain runs


def test_failed_member_is_reported_and_others_complete(tiny_config, tmp_path):
    # a member that fails only when it runs: 99 participants of a 6-device population
    cfg = C.load(tiny_config, ["rounds=2", "sweep.grid.engine.participants=[4, 99]"])
    results = run_sweep(cfg, tmp_path, workers=1, echo=None)
    status = {r.name: r.status for r in results}
    ok, bad = "fedspine-s0-participants=4", "fedspine-s0-participants=99"
    assert status == {ok: "done", bad: "failed"}
    failed = next(r for r in results if r.status == "failed")
    assert "engine.participants=99" in failed.error
    assert "engine.participants=99" in (tmp_path / bad / "error.txt").read_text()
    assert (tmp_path / ok / "summary.json").is_file()
    recorded = json.loads((tmp_path / "sweep.json").read_text())
    assert [m["status"] for m in recorded["members"]] == ["done", "failed"]
    # a re-run skips the complete member and retries the failed one
    again = run_sweep(cfg, tmp_path, workers=1, echo=None)
    assert {r.name: r.status for r in again} == {ok: "skipped", bad: "failed"}


def test_cli_exit_status_is_1_when_a_member_failed(tiny_config, tmp_path):
    rc = main(["sweep", str(tiny_config), "--out", str(tmp_path / "sw"), "--workers", "1",
               "--set", "rounds=2", "--set", "sweep.grid.engine.participants=[4, 99]"])
    assert rc == 1


def test_sweep_on_dask_localcluster_matches_in_process(tiny_config, tmp_path):
    pytest.importorskip("dask.distributed")
    path = tmp_path / "sweep.toml"
    path.write_text(tiny_config.read_text().replace("rounds = 6", "rounds = 3") + SWEEP.replace("[5, 10]", "[5]"))
    cfg = C.load(path)
    on_dask = run_sweep(cfg, tmp_path / "dask", dask_local=2, dask_processes=False, echo=None)
    assert sorted(r.status for r in on_dask) == ["done"] * 4
    local = run_sweep(cfg, tmp_path / "local", workers=1, echo=None)
    for r in local:
        for table in ("rounds", "device_rounds"):
            assert_frame_equal(pd.read_parquet(tmp_path / "dask" / r.name / f"{table}.parquet"),
                               pd.read_parquet(tmp_path / "local" / r.name / f"{table}.parquet"))
    assert all(r.status == "skipped" for r in run_sweep(cfg, tmp_path / "dask", dask_local=1, dask_processes=False, echo=None))


def test_process_pool_runs_members(tiny_config, tmp_path):
    cfg = C.load(tiny_config, ["rounds=2", "sweep.seeds=[0, 1]"])
    results = run_sweep(cfg, tmp_path, workers=2, echo=None)
    assert sorted(r.status for r in results) == ["done", "done"]
    s0 = json.loads((tmp_path / "fedspine-s0" / "summary.json").read_text())
    assert s0["seed"] == 0 and s0["rounds"] == 2


def _die_if_uniform(config_toml: str, out_dir: str):
    """Stands in for ``run_member`` in the pool's workers: the uniform member kills its worker process."""
    import os

    from simfed.experiments import sweep

    if 'method = "uniform"' in config_toml:
        os._exit(3)  # no exception, no cleanup: the pool sees a dead worker
    return sweep.run_member(config_toml, out_dir)  # in a spawned worker this is the real one


def test_a_member_that_kills_its_worker_is_retried_alone_and_reported_crashed(tiny_config, tmp_path, monkeypatch):
    import simfed.experiments.sweep as sweep_mod

    # The pool pickles the submitted function by reference: spawned workers import this module's stand-in,
    # while their own simfed.experiments.sweep (imported fresh) keeps the real run_member.
    monkeypatch.setattr(sweep_mod, "run_member", _die_if_uniform)
    cfg = C.load(tiny_config, ["rounds=2", "sweep.methods=['fedspine', 'uniform']"])
    results = run_sweep(cfg, tmp_path, workers=2, echo=None)
    status = {r.name: r.status for r in results}
    assert status == {"fedspine-s0": "done", "uniform-s0": "crashed"}
    assert "worker process died" in next(r.error for r in results if r.status == "crashed")
    assert (tmp_path / "fedspine-s0" / "summary.json").is_file()
    recorded = {m["name"]: m["status"] for m in json.loads((tmp_path / "sweep.json").read_text())["members"]}
    assert recorded == status
