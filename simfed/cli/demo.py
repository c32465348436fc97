"""``simfed demo``: FedSpine against HetLoRA, prune-then-tune, uniform and FedMP, end to end.

Sets up what it needs (the tiny model is pre-trained once and cached), runs the five methods on a
subset of the fedspine-testbed traces with the tiny model (configs/demo.toml), draws the figures and
writes a short text report. Sized to finish in under 10 minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="run the five-method demo end to end (< 10 min on 2 cores)",
                              description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/demo", help="where the runs, figures and report go (default: runs/demo)")
    p.add_argument("--config", default="", help="another demo config (default: the shipped configs/demo.toml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key; repeatable")
    p.add_argument("--workers", type=int, default=0, help="process pool size (default: CPUs)")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from simfed.experiments.demo import run_demo

    report = run_demo(Path(args.out), config_path=args.config or None, overrides=args.overrides, workers=args.workers)
    print(report.read_text())
    return 0
