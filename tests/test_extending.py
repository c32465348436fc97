"""docs/extending.md's worked example, run exactly as written: a policy, an aggregator and a method from files
outside the package, through the Python API and a config file (timing-only runs), and a short full run with
them (real training)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "extending.md"


def blocks() -> list[tuple[str, str, str]]:
    """(language, first line, code) of every fenced block of the page, in order."""
    text = DOC.read_text()
    return [(m.group(1), m.group(2).splitlines()[0] if m.group(2) else "", m.group(2))
            for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A directory holding the page's files, with the repository's configs/ and traces/ beside them."""
    d = tmp_path_factory.mktemp("extending")
    for name in ("configs", "traces"):
        (d / name).symlink_to(REPO / name)
    for lang, first, code in blocks():
        m = re.match(r"# file: (\S+)", first)
        if m:
            (d / m.group(1)).write_text(code)
    return d


def _env(workdir: Path) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(workdir), os.environ.get("PYTHONPATH", "")])}


def test_the_page_has_the_files_and_the_runs():
    names = [first for _, first, _ in blocks()]
    for f in ("# file: my_bandit.py", "# file: my_merge.py", "# file: my_methods.py", "# file: mine.toml", "# run: python"):
        assert f in names, f


def test_python_api_example_runs(workdir):
    """The `# run: python` block: fedspine with the user's policy, uniform with the user's aggregator, the
    user's method; timing only."""
    code = next(code for lang, first, code in blocks() if first == "# run: python")
    proc = subprocess.run([sys.executable, "-c", code], cwd=workdir, env=_env(workdir), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["fedspine + epsilon-greedy", "uniform + equal weights", "greedy-spine"]


def test_config_file_example_runs(workdir):
    """The bash block: `simfed run mine.toml` names the user's method and policy by import path."""
    commands = [line for lang, _, code in blocks() if lang == "bash" for line in code.splitlines() if line.startswith("simfed ")]
    assert commands == ["simfed run mine.toml --out runs/mine"]
    simfed = Path(sys.executable).with_name("simfed")
    proc = subprocess.run([str(simfed), *commands[0].split()[1:], "--no-progress"], cwd=workdir, env=_env(workdir),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    devs = pd.read_parquet(workdir / "runs" / "mine" / "device_rounds.parquet")
    assert devs["round"].nunique() == 4 and devs["device_id"].nunique() == 8
    summary = (workdir / "runs" / "mine" / "summary.json").read_text()
    assert '"method": "my_methods:GreedySpine"' in summary


@pytest.mark.slow
def test_a_full_run_with_the_user_components(workdir, monkeypatch):
    """Real training with the user's method (its policy and its aggregator, loaded from its own files)."""
    import simfed

    monkeypatch.syspath_prepend(str(workdir))
    monkeypatch.chdir(workdir)
    from my_methods import GreedySpine

    result = simfed.run("configs/demo.toml", method=GreedySpine, out=workdir / "full",
                        overrides=["rounds=2", "traces.devices=4", "train.local_iters=2", "train.tau=1",
                                   "train.eval_every=1"])
    rounds = result.rounds
    assert result.summary["method"] == "greedy-spine" and len(rounds) == 2
    assert rounds["evaluated"].all() and rounds["accuracy"].between(0, 1).all()
    assert (result.device_rounds["outcome"] == "ok").any()
    assert (rounds["aggregate_s"] > 0).all()  # the user's aggregator was timed (its inherited merge_flops)
