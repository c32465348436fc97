"""``simfed`` turns every error a user can cause into one line and exit status 2, keeps tracebacks for
bugs (and for ``--debug``), prints warnings as one line, and ends quietly on a closed pipe.

The config-typos and zero-bandwidth inputs are the project's copies of the cases of the same names
in the shared CASES.md (``tests/cli/cases``, ``tests/timing/cases``).
"""

from __future__ import annotations

import fractions
import shutil
from pathlib import Path

import pytest

from simfed.cli import EXIT_BROKEN_PIPE, is_user_error, main
from simfed.config import ConfigError
from simfed.errors import OptionError, SimfedError
from simfed.timing.tracefile import read_population

TYPOS = Path(__file__).resolve().parent / "cases" / "config-typos"
ZERO = Path(__file__).resolve().parents[1] / "timing" / "cases" / "zero-bandwidth"


@pytest.fixture
def typos(tmp_path: Path, monkeypatch) -> Path:
    case = shutil.copytree(TYPOS, tmp_path / "config-typos")
    monkeypatch.chdir(case)
    return case


def _run(capsys, argv: list[str]) -> tuple[int, list[str]]:
    code = main(argv)
    return code, capsys.readouterr().err.strip().splitlines()


# CASES.md, config-typos: each command, and what the one line must name
TYPO_CASES = [
    (["--set", "policy.method_params.rounds_to_targt=2"],
     ["policy.method_params.rounds_to_targt", "unknown option", "did you mean 'rounds_to_target'", "accepted: rounds_to_target"]),
    (["--set", "method=hetlora", "--set", "policy.params.anything=1"],
     ["policy.params.anything", "unknown option", "method 'hetlora' takes no options"]),
    (["--set", "method=fedspine", "--set", "policy.params.gamma=0.9"],
     ["policy.params.gamma", "did you mean 'discount' (γ)", "accepted: discount (γ), exploration (c), nu (ν), rho (ρ)"]),
    (["--set", "traces.generator=fedspine-testbed", "--set", "traces.dir=", "--set", "traces.generator_args.efficency=0.4"],
     ["traces.generator_args.efficency", "unknown option of generator 'fedspine-testbed'", "did you mean 'efficiency'",
      "mode_hold_s"]),
]


@pytest.mark.parametrize("extra, needles", TYPO_CASES, ids=["method-param", "hetlora-param", "gamma", "generator-arg"])
def test_config_typos_are_one_line_naming_the_key(typos, tmp_path, capsys, extra, needles):
    code, err = _run(capsys, ["run", "config.toml", "--out", str(tmp_path / "out"), "--fresh", "--no-progress", *extra])
    assert code == 2
    assert len(err) == 1, err
    assert err[0].startswith("simfed run: error: config.toml: ")
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    assert not (tmp_path / "out").exists()  # refused before any run work


def test_config_typos_right_spellings_load(typos):
    from simfed import config as config_mod

    cfg = config_mod.load("config.toml", ["policy.method_params.rounds_to_target=2"])
    assert cfg.policy.method_params == {"rounds_to_target": 2}
    cfg = config_mod.load("config.toml", ["method=fedspine", "policy.params.discount=0.9"])
    assert cfg.policy.params == {"discount": 0.9}
    cfg = config_mod.load("config.toml", ["traces.generator=fedspine-testbed", "traces.dir=",
                                          "traces.generator_args.efficiency=0.4"])
    assert cfg.traces.generator_args == {"efficiency": 0.4}


@pytest.mark.parametrize(
    "extra, needles",
    [
        (["--set", "traces.generator=fedspine-testbed", "--set", "traces.dir=", "--set", "traces.generator_args.efficiency=4"],
         ["traces.generator_args.efficiency: expected a number in (0, 1], got 4"]),
        (["--set", "traces.generator=fedspine-testbed", "--set", "traces.dir=", "--set", "traces.generator_args.seed=3"],
         ["traces.generator_args.seed: not set here; it comes from traces.seed"]),
        (["--set", "traces.generator_args.efficiency=0.4"], ["traces.generator_args.efficiency: only used with traces.generator"]),
        (["--set", "traces.generator=nope", "--set", "traces.dir="], ["traces.generator: unknown generator 'nope'"]),
        (["--set", "policy.method_params.rounds_to_target=0"], ["policy.method_params.rounds_to_target: expected an integer >= 1"]),
        (["--set", "policy.method_params.rank=4"], ["policy.method_params.rank: not set here; it comes from policy.rank"]),
        (["--set", "method=hetlora", "--set", "policy.method_params.ranks_by_type={a=0}"],
         ["policy.method_params.ranks_by_type.a: expected an integer >= 1, got 0"]),
        (["--set", "method=fedspine", "--set", "policy.params.discount=1.5"], ["policy.params.discount: expected a number in (0, 1]"]),
        (["--set", "method=fedspine", "--set", "policy.params.play=corner"], ["policy.params.play: expected one of 'centre', 'uniform'"]),
        (["--set", "method=nope"], ["method: unknown method 'nope'"]),
        (["--set", "policy.rank=64"], ["policy.rank: 64 is outside [policy.r_min, policy.r_max] = [2, 32]", "'uniform'"]),
        (["--set", "policy.reward.los=0.1"], ["policy.reward.los", "did you mean 'loss'"]),
        (["--set", "policy.reward.loss=2.0"], ["policy.reward", "loss"]),
    ],
)
def test_bad_values_in_option_tables_are_one_line(typos, tmp_path, capsys, extra, needles):
    code, err = _run(capsys, ["run", "config.toml", "--out", str(tmp_path / "out"), *extra])
    assert code == 2 and len(err) == 1, err
    for needle in needles:
        assert needle in err[0], (needle, err[0])


def test_a_key_only_other_methods_read_is_a_warning(typos, tmp_path, capsys):
    from simfed import config as config_mod

    with pytest.warns(Warning, match=r"policy\.params\.nu: ignored: not read by method 'hetlora'"):
        config_mod.load("config.toml", ["method=hetlora", "policy.params.nu=0.5"])
    # the ablation sets fix_r itself (from policy.rank): the user's value has no effect, and says so
    with pytest.warns(Warning, match=r"policy\.params\.fix_r: ignored: not read by method 'fedspine-fixed-rank'"):
        config_mod.load("config.toml", ["method=fedspine-fixed-rank", "policy.params.fix_r=4"])
    # a sweep over fedspine and hetlora shares the table: no warning for fedspine's key
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config_mod.load("config.toml", ["method=hetlora", "policy.params.nu=0.5", "sweep.methods=['fedspine', 'hetlora']"])


def test_zero_bandwidth_run_warns_at_load_and_fails_in_one_line(tmp_path, capsys, monkeypatch):
    case = shutil.copytree(ZERO, tmp_path / "zero-bandwidth")
    monkeypatch.chdir(case)
    code, err = _run(capsys, ["run", "config.toml", "--out", str(tmp_path / "out"), "--fresh", "--no-progress"])
    warning = [line for line in err if line.startswith("simfed run: warning: ")]
    assert len(warning) == 1 and "'d0'" in warning[0] and "downlink" in warning[0]
    assert str(case / "traces" / "downlink.csv") in warning[0]
    assert code == 2
    assert all(line.startswith("simfed run: ") for line in err), err  # no traceback
    assert sum(line.startswith("simfed run: error: ") for line in err) == 1


def test_traces_show_warns_in_one_line(capsys):
    code = main(["traces", "show", str(ZERO / "traces")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 0
    assert len(err) == 1 and err[0].startswith("simfed traces: warning: ") and "'d0'" in err[0]


def test_bad_nan_is_one_line(capsys):
    code, err = _run(capsys, ["traces", "show", str(ZERO / "bad-nan")])
    assert code == 2 and len(err) == 1
    assert err[0].startswith("simfed traces: error: ") and "'d0'" in err[0] and "'rate'" in err[0]


def test_debug_shows_the_traceback_of_a_user_error(typos, tmp_path):
    with pytest.raises(ConfigError, match="rounds_to_targt"):
        main(["run", "config.toml", "--set", "policy.method_params.rounds_to_targt=2", "--debug"])
    with pytest.raises(ConfigError, match="rounds_to_targt"):
        main(["--debug", "run", "config.toml", "--set", "policy.method_params.rounds_to_targt=2"])


def test_a_bug_keeps_its_traceback(monkeypatch):
    import simfed.cli.traces as traces_cli

    def broken(args):
        return 1 / 0

    monkeypatch.setattr(traces_cli, "_show", broken)  # registered when main() builds the parser
    with pytest.raises(ZeroDivisionError):
        main(["traces", "show", "anything"])


def test_user_errors_and_bugs_are_told_apart():
    assert is_user_error(OptionError("x: bad")) and is_user_error(ConfigError("x"))
    assert is_user_error(FileNotFoundError(2, "No such file", "x.toml"))
    assert not is_user_error(ZeroDivisionError()) and not is_user_error(KeyError("k"))
    assert not is_user_error(TypeError("f() got an unexpected keyword argument"))
    try:  # a ValueError raised by simfed's own code carries a message for the user
        from simfed.decisions.study import make_environment

        make_environment("nope", None, 1, 0)
    except ValueError as exc:
        assert is_user_error(exc)
    try:  # one that escapes a library (here the standard library) is a bug
        fractions.Fraction("not a number")
    except ValueError as exc:
        assert not is_user_error(exc)
    assert issubclass(ConfigError, SimfedError)


def test_closed_pipe_ends_quietly(monkeypatch, capsys):
    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("sys.stdout", ClosedPipe())
    assert main(["traces", "show", str(ZERO / "traces")]) == EXIT_BROKEN_PIPE
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error" not in err


def test_closed_pipe_in_a_real_pipeline(tmp_path):
    """``simfed traces show DIR | head -1`` on a long listing: no traceback, status 141 (SIGPIPE)."""
    import subprocess
    import sys

    from simfed.timing.tracefile import write_population
    from simfed.timing.traces import DeviceTrace, Population, Series

    devs = tuple(DeviceTrace(f"d{i}", f"type{i}", Series.constant(1e9), Series.constant(1e6), Series.constant(1e6), 0.0, 1e9)
                 for i in range(3000))
    write_population(Population(devs, {}), tmp_path / "many")
    code = "import sys; from simfed.cli import main; sys.exit(main())"
    proc = subprocess.run(f"{sys.executable} -c '{code}' traces show {tmp_path / 'many'} | head -1; "
                          "exit ${PIPESTATUS[0]}", shell=True, executable="/bin/bash", capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == EXIT_BROKEN_PIPE, proc.stderr
    assert proc.stderr == "" and proc.stdout.startswith(str(tmp_path / "many"))


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["traces", "generate", "phones", "--out", "{tmp}/x", "--set", "bogus=1"],
         "--set bogus: unknown option of generator 'phones' (accepted: "),
        (["traces", "generate", "phones", "--out", "{tmp}/x", "--set", "seed=1"], "--set seed: not set here; it comes from --seed"),
        (["traces", "generate", "phones", "--out", "{tmp}/x", "--set", "cellular_share=2"],
         "--set cellular_share: expected a number in [0, 1], got 2"),
        (["traces", "generate", "phones", "--out", "{tmp}/x", "--devices", "0"], "--devices: expected an integer >= 1, got 0"),
        (["traces", "import", "mahimahi", "{tmp}/link.down", "--out", "{tmp}/y", "--set", "bin_s=0"],
         "--set bin_s: expected a number > 0, got 0"),
        (["traces", "import", "mahimahi", "{tmp}/link.down", "--out", "{tmp}/y", "--set", "uplnk=a"],
         "--set uplnk: unknown option of importer 'mahimahi' (did you mean 'uplink'?"),
        (["traces", "import", "flash", "{tmp}/missing.json", "--out", "{tmp}/y"], "no such file"),
        (["bandit", "study", "--policies", "sucb", "--policy-params", '{"sucb": {"gamma": 0.5}}'],
         "--policy-params sucb.gamma: unknown option of policy 'sucb' (did you mean 'discount' (γ)?"),
        (["bandit", "study", "--policies", "sucb", "--policy-params", '{"ucb1": {"exploration": 0.5}}'],
         "--policy-params ucb1: not one of the --policies"),
        (["plot", "{tmp}", "--formats", "gif"], "--formats: unknown format 'gif'"),
    ],
)
def test_cli_option_errors_are_one_line(tmp_path, capsys, argv, needle):
    (tmp_path / "link.down").write_text("0\n5\n")
    code, err = _run(capsys, [a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert code == 2 and len(err) == 1, err
    assert needle in err[0], err[0]


def test_importer_set_keeps_text_ids(tmp_path, capsys):
    (tmp_path / "link.down").write_text("0\n5\n")
    assert main(["traces", "import", "mahimahi", str(tmp_path / "link.down"), "--out", str(tmp_path / "t"),
                 "--set", "device_id=007"]) == 0
    assert [d.device_id for d in read_population(tmp_path / "t").devices] == ["007"]


def test_warnings_and_log_records_print_as_one_line(monkeypatch, capsys):
    import logging
    import warnings

    import simfed.cli.traces as traces_cli

    def noisy(args):
        warnings.warn("first line\nsecond line", UserWarning)
        logging.getLogger("simfed.something").warning("a logged\nwarning")
        logging.getLogger("simfed.something").info("not shown")
        return 0

    monkeypatch.setattr(traces_cli, "_show", noisy)
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # as in a plain process (pytest adds its own)
    assert main(["traces", "show", "x"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == ["simfed traces: warning: first line second line", "simfed traces: warning: a logged warning"]
