"""Every ``simfed`` command in the fenced code blocks of README.md and docs/*.md runs, unless it is in
:data:`LONG` (with the reason; those are still parsed and their config loaded): a doc example that
fails is a bug.

Each command runs through :func:`simfed.cli.main` in a fresh temporary directory that links the
repository's ``configs/`` and ``traces/``, so examples may name them as they do from a clone.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from simfed.cli import main

REPO = Path(__file__).resolve().parents[2]
# docs/extending.md is run whole, in order, with its own files, by tests/test_extending.py.
DOCS = [REPO / "README.md", *sorted(p for p in (REPO / "docs").glob("*.md") if p.name != "extending.md")]

# Examples that need a long run (or the output of one), with the reason; matched by their first words.
LONG = {
    "simfed demo": "the five-method demo with real training: about 4 minutes (docs/experiments.md section 7)",
    "simfed sweep configs/paper.toml": "the paper-scale sweep: 21 runs of real training, hours (docs/RESULTS.md)",
    "simfed sweep configs/paper-sparsity.toml": "4 runs of real training at other sparsities, about 25 minutes",
    "simfed sweep configs/sensitivity": "the sensitivity map (432 timing-only runs) and its points with real training",
    "simfed compare runs/paper": "needs the run directories of the paper sweep above",
    "simfed plot runs/paper": "needs the run directories of the paper sweep above",
}


SIMFED = re.compile(r"^(?:\S*/)?simfed\s")  # simfed or .venv/bin/simfed, then its arguments


def doc_commands() -> list[tuple[str, str]]:
    """(file:line, command) of every ``simfed`` command in the fenced code blocks of the docs.

    Continuation lines are joined, trailing comments dropped, ``a && b`` split into commands;
    other commands of a block (``python3 -m venv``, ``pip install``) are set-up, not examples.
    """
    out = []
    for path in DOCS:
        text = path.read_text()
        for block in re.finditer(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M):
            first = text[: block.start()].count("\n") + 2
            lines = block.group(1).splitlines()
            i = 0
            while i < len(lines):
                start, line = i, lines[i]
                while line.rstrip().endswith("\\") and i + 1 < len(lines):  # continuation lines
                    i += 1
                    line = line.rstrip()[:-1] + " " + lines[i].strip()
                i += 1
                line = line.split(" #")[0].strip()  # a trailing comment
                for part in line.split("&&"):
                    part = part.strip()
                    if SIMFED.match(part):
                        words = shlex.split(part)
                        out.append((f"{path.relative_to(REPO)}:{first + start}", shlex.join(["simfed", *words[1:]])))
    return out


COMMANDS = doc_commands()


def _long_reason(command: str) -> str | None:
    return next((why for prefix, why in LONG.items() if command.startswith(prefix)), None)


def test_the_docs_have_examples_and_the_skip_list_is_current():
    assert len(COMMANDS) >= 8
    for prefix in LONG:  # every skipped example still exists (the list cannot hide a removed one)
        assert any(cmd.startswith(prefix) for _, cmd in COMMANDS), prefix
    assert any(_long_reason(cmd) is None for _, cmd in COMMANDS)


@pytest.mark.parametrize("where, command", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_doc_example_runs(where, command, tmp_path, monkeypatch, capsys):
    reason = _long_reason(command)
    if reason:
        pytest.skip(f"long: {reason}")
    for name in ("configs", "traces"):
        (tmp_path / name).symlink_to(REPO / name)
    monkeypatch.chdir(tmp_path)
    code = main(shlex.split(command)[1:])
    captured = capsys.readouterr()
    assert code == 0, f"{where}: `{command}` exited {code}: {captured.err}"
    assert "error" not in captured.err, captured.err


@pytest.mark.parametrize("where, command", [(w, c) for w, c in COMMANDS if _long_reason(c)],
                         ids=[w for w, c in COMMANDS if _long_reason(c)])
def test_long_doc_example_parses_and_its_config_loads(where, command, monkeypatch):
    """A long example is not run, but its arguments parse and the config it names (with its
    ``--set`` overrides) loads: a renamed flag or config key in the docs still fails here."""
    from simfed import config as config_mod
    from simfed.cli import build_parser

    monkeypatch.chdir(REPO)
    args = build_parser().parse_args(shlex.split(command)[1:])
    config = getattr(args, "config", None)
    if args.command == "demo":
        config = config or str(REPO / "configs" / "demo.toml")
    if config:
        config_mod.load(config, getattr(args, "overrides", None))
