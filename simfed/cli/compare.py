"""``simfed compare RUN_DIR... [--reference fedspine] [--targets 0.45,0.47] [--level 0.95] [--out FILE.md]``: paired tables.

Prints the two comparison tables of ``docs/RESULTS.md`` (final accuracy with its paired gap to the
reference; time to accuracy with the reference's paired speed-up) for the runs under the RUN_DIRs,
with Student-t confidence intervals over seeds (see :mod:`analysis.compare`). ``--out`` also writes
them to a file, atomically.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from simfed.cli import CliError
from simfed.cli.plot import import_analysis
from simfed.experiments.outputs import atomic_write_text


def _import_compare():
    """``analysis.compare`` (the ``analysis`` package lives beside ``simfed/``; plot's helper finds it)."""
    load, _figures = import_analysis()
    import analysis.compare as compare

    return load, compare


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("compare", help="paired, seed-level comparison tables of run directories (markdown)",
                              description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (or directories that hold runs)")
    p.add_argument("--reference", default="fedspine", help="the method every other is paired with (default: fedspine)")
    p.add_argument("--targets", help="comma-separated accuracies in (0, 1] to time (default: the runs' target "
                                     "accuracy plus three relative levels)")
    p.add_argument("--level", type=float, default=0.95, help="confidence level in (0, 1) (default: 0.95)")
    p.add_argument("--out", help="also write the markdown to this file")
    p.set_defaults(func=_main)


def parse_targets(text: str | None) -> list[float] | None:
    """``"0.45,0.47"`` -> [0.45, 0.47]; each must be an accuracy in (0, 1]."""
    if text is None:
        return None
    targets = []
    for item in (t.strip() for t in text.split(",")):
        try:
            value = float(item)
        except ValueError:
            raise CliError(f"--targets: {item!r} is not a number") from None
        if not 0.0 < value <= 1.0:
            raise CliError(f"--targets: {value} is not an accuracy in (0, 1]")
        targets.append(value)
    return targets


def _main(args: argparse.Namespace) -> int:
    if not 0.0 < args.level < 1.0:
        raise CliError(f"--level: {args.level} is not in (0, 1)")
    targets = parse_targets(args.targets)
    load, compare = _import_compare()
    try:
        runs = load.load_runs(list(args.runs), events=False)
    except FileNotFoundError as exc:
        raise CliError(f"RUN_DIR: {exc}") from None
    if args.reference not in set(runs.summaries["method"]):
        present = ", ".join(sorted(set(runs.summaries["method"])))
        raise CliError(f"--reference: method {args.reference!r} is not among the runs ({present})")
    text = compare.markdown(runs, targets, args.reference, args.level)
    print(text)
    if args.out:
        atomic_write_text(Path(args.out), text)
    return 0
