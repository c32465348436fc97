import pandas as pd
import pytest

from simfed.cli import main
from simfed.decisions.arms import ArmSpace
from simfed.decisions.study import ENVIRONMENTS, make_environment, run_study, summarise

SPACE = ArmSpace()


def test_study_records_are_flat_deterministic_and_regret_consistent():
    a = run_study(["ucb1", "sucb"], ["stationary", "abrupt"], steps=60, seeds=[0, 1])
    b = run_study(["ucb1", "sucb"], ["stationary", "abrupt"], steps=60, seeds=[0, 1])
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == 2 * 2 * 2 * 60
    one = a[(a.policy == "ucb1") & (a.env == "stationary") & (a.seed == 0)]
    inst = (one.best_fixed_mean - one.mean_reward).cumsum()
    assert one.regret.to_numpy() == pytest.approx(inst.to_numpy())
    assert (one.dynamic_regret >= one.regret - 1e-9).all()
    s = summarise(a)
    assert set(s.columns) >= {"regret_mean", "first_half", "second_half"}


def test_environments_have_their_optima():
    lip = make_environment("lipschitz", SPACE, 10, 0)
    assert lip.means(lip.optimum[None, :], 0)[0] == pytest.approx(0.9)
    ab = make_environment("abrupt", SPACE, 90, 0, n_changes=2)
    assert ab.change_steps == [30, 60] and ab.segment(29) == 0 and ab.segment(30) == 1
    adv = make_environment("adversarial", SPACE, 20, 0)
    left, right = adv.means(__import__("numpy").array([[0.1, 0.5], [0.9, 0.5]]), 0)
    assert {left, right} == {0.0, 1.0}
    assert set(ENVIRONMENTS) == {"stationary", "lipschitz", "abrupt", "adversarial"}


def test_cli_study_writes_table_and_plot(tmp_path, capsys):
    out, png = tmp_path / "r.parquet", tmp_path / "r.png"
    rc = main(["bandit", "study", "--policies", "sucb,random", "--envs", "lipschitz", "--steps", "30",
               "--seeds", "0-1", "--out", str(out), "--plot", str(png)])
    assert rc == 0
    df = pd.read_parquet(out)
    assert len(df) == 2 * 2 * 30 and png.stat().st_size > 1000
    assert "sucb" in capsys.readouterr().out


@pytest.mark.parametrize("argv,msg", [
    (["--policies", "nope"], "unknown policy"),
    (["--envs", "nope"], "unknown bandit environment"),
    (["--seeds", "x"], "--seeds"),
    (["--policies", "oracle", "--steps", "2"], "traces"),
    (["--policy-params", "{bad"], "--policy-params"),
    (["--out", "x.txt", "--steps", "2", "--policies", "random", "--envs", "stationary"], ".csv or .parquet"),
])
def test_cli_errors_are_one_line(argv, msg, capsys):
    assert main(["bandit", "study", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and "\n" not in err
