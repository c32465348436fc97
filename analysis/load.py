"""Run directories → pandas DataFrames.

A run directory (see ``simfed.experiments.outputs`` and ``docs/experiments.md``) holds three Parquet
tables and a ``summary.json``. :func:`load_runs` finds every complete run under the given paths (a
sweep directory holds many) and concatenates their tables, adding ``run``, ``method`` and ``seed``
columns so figures can group by method and average over seeds.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

SUMMARY = "summary.json"


@dataclass
class Run:
    """One complete run: its resolved config, summary and tables."""

    path: Path
    config: dict
    summary: dict
    rounds: pd.DataFrame
    device_rounds: pd.DataFrame
    events: pd.DataFrame


@dataclass
class Runs:
    """Several runs, their tables concatenated (each row tagged with run, method and seed)."""

    runs: list[Run]
    summaries: pd.DataFrame
    rounds: pd.DataFrame
    device_rounds: pd.DataFrame
    events: pd.DataFrame


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Every directory at or under ``paths`` that holds a complete run (a ``summary.json``), sorted."""
    found: set[Path] = set()
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such run directory")
        if (p / SUMMARY).is_file():
            found.add(p.resolve())
        found.update(q.parent.resolve() for q in p.rglob(SUMMARY))
    return sorted(found)


def _tag(df: pd.DataFrame, run: str, method: str, seed: int) -> pd.DataFrame:
    df = df.copy()
    df.insert(0, "seed", seed)
    df.insert(0, "method", method)
    df.insert(0, "run", run)
    return df


def load_run(path: str | Path) -> Run:
    """Read one run directory; a missing or unreadable file is an error naming it."""
    p = Path(path)
    summary_path = p / SUMMARY
    if not summary_path.is_file():
        raise FileNotFoundError(f"{p}: not a complete run directory (no {SUMMARY})")
    summary = json.loads(summary_path.read_text())
    config = tomllib.loads((p / "config.toml").read_text()) if (p / "config.toml").is_file() else {}
    method = summary.get("method", config.get("method", ""))
    seed = int(summary.get("seed", config.get("seed", 0)))
    tables = {}
    for name in ("rounds", "device_rounds", "events"):
        f = p / f"{name}.parquet"
        if not f.is_file():
            raise FileNotFoundError(f"{f}: missing table")
        tables[name] = _tag(pd.read_parquet(f), p.name, method, seed)
    return Run(p, config, summary, tables["rounds"], tables["device_rounds"], tables["events"])


def _variant(run: Run) -> str:
    """A sweep member's name without its seed: ``fedspine-s0-tau=10`` -> ``fedspine-tau=10``."""
    return re.sub(rf"-s{int(run.summary.get('seed', 0))}(?=-|$)", "", run.path.name, count=1)


def _label_variants(runs: list[Run]) -> None:
    """Where a method ran with several grid values, label each variant as its own "method".

    Figures group by ``method`` and pool seeds; without this, a sweep over (say) ``train.tau``
    would pool different τ as if they were seeds.
    """
    variants: dict[str, set[str]] = {}
    for r in runs:
        variants.setdefault(r.summary.get("method", ""), set()).add(_variant(r))
    for r in runs:
        method = r.summary.get("method", "")
        if len(variants[method]) > 1:
            label = _variant(r)
            r.summary = {**r.summary, "method": label}
            for df in (r.rounds, r.device_rounds, r.events):
                df["method"] = label


def load_runs(paths: list[str | Path], *, events: bool = True) -> Runs:
    """Load every complete run under ``paths``; ``events=False`` skips the (large) event logs."""
    dirs = find_runs(paths)
    if not dirs:
        raise FileNotFoundError(f"no complete run directory under {', '.join(str(p) for p in paths)}")
    runs = [load_run(d) for d in dirs]
    _label_variants(runs)
    summaries = pd.DataFrame([{"run": r.path.name, "path": str(r.path), **r.summary} for r in runs])

    def cat(frames: list[pd.DataFrame]) -> pd.DataFrame:
        frames = [f for f in frames if len(f)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    return Runs(
        runs=runs,
        summaries=summaries,
        rounds=cat([r.rounds for r in runs]),
        device_rounds=cat([r.device_rounds for r in runs]),
        events=cat([r.events for r in runs]) if events else pd.DataFrame(),
    )
