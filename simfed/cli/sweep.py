"""``simfed sweep SWEEP.toml``: methods × seeds × a parameter grid, on a local pool or on Dask.

The file is a run config with a ``[sweep]`` table (methods, seeds, grid). Each member is a run
directory under --out; a re-run skips complete members and resumes interrupted ones. A failed member
is reported and the others go on; the exit status is 1 when any member failed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from simfed import config as config_mod
from simfed.cli import CliError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sweep", help="run a sweep (methods x seeds x grid) locally or on Dask",
                              description=__doc__.splitlines()[0])
    p.add_argument("config", help="a run config with a [sweep] table, e.g. configs/sweep-small.toml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key before expanding the sweep; repeatable")
    p.add_argument("--out", help="sweep directory (default: runs/<config name>)")
    p.add_argument("--workers", type=int, default=0, help="local process pool size (default: CPUs; 1 = in-process)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--scheduler", default="", metavar="ADDRESS", help="run on an existing Dask scheduler (tcp://host:8786)")
    g.add_argument("--dask-local", type=int, default=0, metavar="N", help="start a Dask LocalCluster with N worker processes")
    p.add_argument("--plot", action="store_true", help="draw the figures into OUT/figures when done")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from simfed.experiments.sweep import run_sweep

    if args.workers < 0 or args.dask_local < 0:
        raise CliError(f"--workers and --dask-local must be >= 0, got {args.workers} and {args.dask_local}")
    cfg = config_mod.load(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    results = run_sweep(cfg, out, workers=args.workers, scheduler=args.scheduler, dask_local=args.dask_local)
    failed = [r for r in results if r.status in ("failed", "crashed")]
    if args.plot and len(failed) < len(results):
        from simfed.cli.plot import plot_runs

        plot_runs([out], out / "figures")
    print(f"sweep {out}: {len(results) - len(failed)} members complete, {len(failed)} failed")
    return 1 if failed else 0
