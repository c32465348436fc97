"""``simfed run CONFIG [--set key=value ...] [--out DIR]``: one simulated run into a run directory.

Re-running the same command resumes an interrupted run from its checkpoint, and does nothing for a
complete one. See docs/experiments.md for the run directory's contents.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from simfed import config as config_mod
from simfed.experiments.outputs import json_safe


def default_out_dir(config_path: str, cfg: config_mod.RunConfig) -> Path:
    return Path("runs") / f"{Path(config_path).stem}-{cfg.method}-s{cfg.seed}"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("run", help="run one simulation (a method, a seed) into a run directory",
                              description=__doc__.splitlines()[0])
    p.add_argument("config", help="a run config (TOML), e.g. configs/demo.toml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (dotted, value read as TOML), e.g. --set train.lr=1e-3; repeatable")
    p.add_argument("--out", help="run directory (default: runs/<config>-<method>-s<seed>)")
    p.add_argument("--fresh", action="store_true", help="discard an earlier (partial or complete) run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from simfed.experiments.runner import run_config

    cfg = config_mod.load(args.config, args.overrides)
    out = Path(args.out) if args.out else default_out_dir(args.config, cfg)
    summary = run_config(cfg, out, progress=not args.no_progress, fresh=args.fresh)
    print(f"run directory: {out}")
    print(json.dumps({k: json_safe(summary[k]) for k in ("method", "seed", "rounds", "simulated_time_s", "final_accuracy",
                                               "time_to_target_s", "mean_wait_s") if k in summary}, indent=1))
    return 0
