"""The bad-input cases of ../shared/cases/CASES.md that concern runs (the project's own copies in cases/):
settings that cannot take effect are refused or warned about, ranks above a kept layer's dimension are capped
and costed as trained, and training that diverges is a recorded failure that is never aggregated."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pandas as pd
import pytest

from simfed import config as C
from simfed.cli import main
from simfed.errors import SimfedWarning
from simfed.experiments.runner import RunError, run_config

CASES = Path(__file__).parent / "cases"


def _case(name: str, tmp_path: Path) -> Path:
    shutil.copytree(CASES / name, tmp_path / name)
    return tmp_path / name / "config.toml"


def _run(config: Path, out: Path, overrides: list[str] | None = None):
    return run_config(C.load(config, overrides), out, progress=False, fresh=True)


# ------------------------------------------------------------------------------ oversample-overcommit


def test_more_participants_than_devices_is_refused(tmp_path, capsys):
    cfg = _case("oversample-overcommit", tmp_path)
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--no-progress", "--set", "engine.participants=10"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "engine.participants=10 exceeds the population's 4 devices" in err[0]


def test_overcommitment_that_rounds_to_nothing_is_warned_about(tmp_path):
    cfg = _case("oversample-overcommit", tmp_path)
    with pytest.warns(SimfedWarning, match=r"engine.overcommit=1.3 with engine.participants=3 selects 3 devices"):
        _run(cfg, tmp_path / "o", ["engine.participants=3", "engine.overcommit=1.3"])
    # 2 x 1.5 = 3 of 4: a real over-commitment, no warning; the round closes at the 2nd finish
    with warnings.catch_warnings():
        warnings.simplefilter("error", SimfedWarning)
        _run(cfg, tmp_path / "o2", ["engine.participants=2", "engine.overcommit=1.5"])
    rounds = pd.read_parquet(tmp_path / "o2" / "rounds.parquet")
    assert (rounds["n_selected"] == 3).all() and (rounds["n_ok"] == 2).all() and (rounds["n_straggler"] == 1).all()


def test_overcommitment_without_participants_is_refused(tmp_path):
    cfg = _case("oversample-overcommit", tmp_path)
    with pytest.raises(C.ConfigError, match=r"engine.overcommit=1.3 has no effect without engine.participants"):
        _run(cfg, tmp_path / "o", ["engine.overcommit=1.3"])


# ------------------------------------------------------------------------------ lora-rank-gt-dim


def test_a_rank_above_the_kept_dimension_is_capped_warned_and_costed_as_trained(tmp_path):
    """rank 256 at s* = 0.9 on the tiny model: the smallest adapted linear keeps 16 rows, so rank 16 is what is
    trained, sent and charged (payload = 16 x (d_out + d_in) per linear, not 256 x ...)."""
    from simfed.records import Arm, Plan
    from simfed.timing.presets import timing_cost

    cfg = _case("lora-rank-gt-dim", tmp_path)
    with pytest.warns(SimfedWarning, match=r"LoRA rank 256 exceeds min\(d_out, d_in\) = 16 .* sparsity 0.9: rank 16 is "
                                           r"trained, sent and costed"):
        _run(cfg, tmp_path / "o")
    devs = pd.read_parquet(tmp_path / "o" / "device_rounds.parquet")
    assert set(devs["r"]) == {16}
    cost = timing_cost("tiny", 8, 80)
    first = devs[devs["round"] == 0].iloc[0]
    plan = Plan(0, first["device_id"], Arm(first["p"], 16), 0.0, 0.9, 2, 1)
    assert first["up_bytes"] == cost.upload_bytes(plan)
    assert first["up_bytes"] < cost.upload_bytes(Plan(0, "x", Arm(0.9, 256), 0.0, 0.9, 2, 1)) / 10
    # nominal and measured sparsity are both in the tables
    assert devs["sparsity_after"].max() == pytest.approx(0.9)
    assert devs["measured_sparsity_after"].max() == pytest.approx(
        pd.read_parquet(tmp_path / "o" / "rounds.parquet")["mean_measured_sparsity"].iloc[-1])


# ------------------------------------------------------------------------------ nan-loss


def test_exploding_updates_are_recorded_failures_never_aggregated(tmp_path):
    """lr 1e6: every update explodes (norm ~4e9 against ||W|| ~ 190). Each is a `failed` device-round with its
    reason, an event, zero reward; nothing is aggregated (accuracy stays at the pre-trained model's); the run
    says in one line that every round failed."""
    cfg = _case("nan-loss", tmp_path)
    with pytest.warns(SimfedWarning, match="every finished device's update was rejected"):
        with pytest.raises(RunError, match=r"every round failed: all 6 finished updates were rejected .*exploding update"):
            _run(cfg, tmp_path / "o")
    devs = pd.read_parquet(tmp_path / "o" / "device_rounds.parquet")
    assert set(devs["outcome"]) == {"failed"} and (devs["reward"] == 0).all()
    assert devs["failure"].str.contains("exploding update").all()
    events = pd.read_parquet(tmp_path / "o" / "events.parquet")
    failed = events[events["kind"] == "failed"]
    assert len(failed) == 6 and failed["detail"].str.startswith("update_norm=").all()
    rounds = pd.read_parquet(tmp_path / "o" / "rounds.parquet")
    assert (rounds["n_failed"] == 2).all() and (rounds["n_ok"] == 0).all()
    assert rounds["accuracy"].nunique() == 1  # the global adapter never changed


def test_non_finite_training_fails_in_one_line(tmp_path, capsys):
    """lr 1e30 (a traceback from FlexLoRA's SVD before): the loss becomes NaN, nothing reaches the aggregator."""
    cfg = _case("nan-loss", tmp_path)
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--no-progress", "--set", "train.lr=1e30"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if ": error:" in line]
    assert len(err) == 1 and "every round failed" in err[0] and "(non-finite)" in err[0]
    devs = pd.read_parquet(tmp_path / "o" / "device_rounds.parquet")
    assert set(devs["outcome"]) == {"failed"}


def test_a_healthy_run_has_no_failures(tmp_path):
    cfg = _case("nan-loss", tmp_path)
    _run(cfg, tmp_path / "o", ["train.lr=2e-3"])
    devs = pd.read_parquet(tmp_path / "o" / "device_rounds.parquet")
    assert set(devs["outcome"]) == {"ok"} and (devs["failure"] == "").all()
