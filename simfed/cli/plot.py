"""``simfed plot RUN_DIR... [--out DIR]``: every figure of the study, as PNG and PDF.

Each RUN_DIR may be one run directory or a directory holding many (a sweep); figures group the runs
by method and average over seeds. A figure the runs cannot support (regret without an oracle run,
accuracy in timing-only runs) is skipped with a note.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from simfed.cli import CliError


def import_analysis():
    """The ``analysis`` package lives beside ``simfed/`` in the repository (not inside the package)."""
    try:
        import analysis.figures as figures
        import analysis.load as load
    except ModuleNotFoundError:
        import sys

        root = Path(__file__).resolve().parents[2]
        if not (root / "analysis" / "figures.py").is_file():
            raise
        sys.path.insert(0, str(root))
        import analysis.figures as figures
        import analysis.load as load
    return load, figures


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("plot", help="draw the figures of one or more run directories",
                              description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run directories (or directories that hold runs, e.g. a sweep)")
    p.add_argument("--out", help="where the figures go (default: RUN_DIR/figures for one directory, else ./figures)")
    p.add_argument("--formats", default="png,pdf", help="comma-separated formats (default: png,pdf)")
    p.add_argument("--method", default="fedspine", help="whose speed-up over every other method is drawn (default: fedspine)")
    p.set_defaults(func=_main)


def plot_runs(paths: list[str | Path], out: str | Path, formats: tuple[str, ...] = ("png", "pdf"),
              method: str = "fedspine", echo=print) -> list[Path]:
    """Draw every figure for the runs under ``paths`` into ``out``; returns the files written."""
    load, figures = import_analysis()
    runs = load.load_runs(list(paths))
    written: list[Path] = []
    figs = figures.all_figures(runs)
    figs["speedup"] = figures.speedup_bars(runs.summaries, method=method)
    for name, fig in figs.items():
        if fig is None:
            echo(f"  {name}: skipped (the runs have no data for it)")
            continue
        written += figures.save(fig, out, name, formats)
    echo(f"{len(written)} files in {out} from {len(runs.runs)} runs")
    return written


def _main(args: argparse.Namespace) -> int:
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    for f in formats:
        if f not in ("png", "pdf", "svg"):
            raise CliError(f"--formats: unknown format {f!r} (png, pdf or svg)")
    out = Path(args.out) if args.out else (Path(args.runs[0]) / "figures" if len(args.runs) == 1 else Path("figures"))
    plot_runs(args.runs, out, formats, args.method)
    return 0
