"""Sweeps: methods × seeds × a parameter grid, each member one run directory.

The sweep is the ``[sweep]`` table of an ordinary run config (see :mod:`simfed.config`). Members run
on a local process pool by default, or on Dask distributed (an existing scheduler, or a
``LocalCluster`` started here): the same file runs on either, as DESIGN §7 asks. A member that raises
is reported (``error.txt`` in its directory and a ``failed`` status) without losing the others; a
member whose worker process dies is retried alone once, so one crash cannot take the pool's other
members with it. A sweep re-run skips members whose run directory is complete, and resumes members
that left a checkpoint.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import multiprocessing
import re
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from simfed import config as config_mod
from simfed.config import RunConfig
from simfed.experiments.outputs import RunDir, atomic_write_json, atomic_write_text


@dataclass
class Member:
    """One point of a sweep: its directory name, the swept values and its resolved config."""

    name: str
    values: dict[str, Any]
    config: RunConfig


@dataclass
class MemberResult:
    name: str
    status: str  # done | skipped (already complete) | failed | crashed
    error: str = ""
    wall_s: float = 0.0
    summary: dict = field(default_factory=dict)


def _slug(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(value)).strip("_") or "x"


def expand(cfg: RunConfig) -> list[Member]:
    """Every member of the sweep, in a fixed order (methods, then seeds, then the grid's product)."""
    methods = cfg.sweep.methods or [cfg.method]
    seeds = cfg.sweep.seeds or [cfg.seed]
    keys = sorted(cfg.sweep.grid)
    grids = list(itertools.product(*(cfg.sweep.grid[k] for k in keys))) if keys else [()]
    base = config_mod.to_dict(cfg)
    base["sweep"] = {}
    base_cfg = config_mod.from_dict(base)
    members: list[Member] = []
    seen: set[str] = set()
    for method, seed, point in itertools.product(methods, seeds, grids):
        values: dict[str, Any] = {"method": method, "seed": seed, **dict(zip(keys, point))}
        name = "-".join([_slug(method), f"s{seed}"] + [f"{_slug(k.split('.')[-1])}={_slug(v)}" for k, v in zip(keys, point)])
        if name in seen:
            raise config_mod.ConfigError(f"sweep: two members would share the directory {name!r}")
        seen.add(name)
        members.append(Member(name, values, config_mod.with_values(base_cfg, values)))
    return members


def run_member(config_toml: str, out_dir: str) -> MemberResult:
    """Run (or resume) one member; never raises: a failure is returned and written to ``error.txt``.

    Takes the config as TOML text so it pickles to any worker. Top-level so process pools can import it.
    """
    import tomllib

    from simfed.experiments.runner import run_config

    name = Path(out_dir).name
    t0 = time.perf_counter()
    try:
        cfg = config_mod.from_dict(tomllib.loads(config_toml))
        summary = run_config(cfg, out_dir, progress=False)
        return MemberResult(name, "done", wall_s=time.perf_counter() - t0, summary=summary)
    except Exception as exc:  # reported, never lost: the sweep goes on with the others
        tb = traceback.format_exc()
        try:
            atomic_write_text(Path(out_dir) / "error.txt", tb)
        except OSError:
            pass
        return MemberResult(name, "failed", error=f"{type(exc).__name__}: {exc}", wall_s=time.perf_counter() - t0)


def _member_args(members: list[Member], out: Path) -> list[tuple[str, str]]:
    return [(config_mod.dumps(m.config), str(out / m.name)) for m in members]


def _run_pool(members: list[Member], out: Path, workers: int, report: Callable[[MemberResult], None]) -> list[MemberResult]:
    """A spawn-context process pool (no fork of a parent that may hold torch threads).

    Each member sets its own torch threads (config key ``torch_threads``, default 1).
    """
    ctx = multiprocessing.get_context("spawn")
    results: list[MemberResult] = []
    pending = list(zip(members, _member_args(members, out)))
    crashed: list[tuple[Member, tuple[str, str]]] = []
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = {pool.submit(run_member, toml, d): (m, (toml, d)) for m, (toml, d) in pending}
        for fut in cf.as_completed(futures):
            m, args = futures[fut]
            try:
                res = fut.result()
            except cf.process.BrokenProcessPool:
                crashed.append((m, args))
                continue
            except Exception as exc:  # e.g. the task could not be sent to or run in the worker
                res = MemberResult(m.name, "failed", error=f"{type(exc).__name__}: {exc}")
            results.append(res)
            report(res)
    for m, (toml, d) in crashed:  # retry alone: only the member that kills its worker is lost
        with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            try:
                res = pool.submit(run_member, toml, d).result()
            except cf.process.BrokenProcessPool as exc:
                res = MemberResult(m.name, "crashed", error=f"worker process died: {exc}")
            except Exception as exc:
                res = MemberResult(m.name, "failed", error=f"{type(exc).__name__}: {exc}")
        results.append(res)
        report(res)
    return results


def _run_dask(members: list[Member], out: Path, report: Callable[[MemberResult], None], *, scheduler: str = "",
              dask_local: int = 0, dask_processes: bool = True) -> list[MemberResult]:
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError as exc:  # pragma: no cover - depends on the extra
        raise config_mod.ConfigError("Dask sweeps need the 'dist' extra: pip install 'dask[distributed]'") from exc
    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        cluster = LocalCluster(n_workers=dask_local, threads_per_worker=1, processes=dask_processes,
                               dashboard_address=None)
        client = Client(cluster)
    results: list[MemberResult] = []
    try:
        futures = {}
        for m, (toml, d) in zip(members, _member_args(members, out)):
            fut = client.submit(run_member, toml, d, key=f"simfed-{m.name}-{time.time_ns()}", pure=False)
            futures[fut.key] = (fut, m)
        for fut in as_completed([f for f, _ in futures.values()]):
            m = futures[fut.key][1]
            try:
                res = fut.result()
            except Exception as exc:  # the worker died or the task was lost
                res = MemberResult(m.name, "crashed", error=f"{type(exc).__name__}: {exc}")
            results.append(res)
            report(res)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return results


def run_sweep(cfg: RunConfig, out_dir: str | Path, *, workers: int = 0, scheduler: str = "", dask_local: int = 0,
              dask_processes: bool = True, echo: Callable[[str], None] | None = print) -> list[MemberResult]:
    """Run every member of ``cfg``'s sweep into ``out_dir/<member>``; returns one result per member.

    ``workers`` sizes the local process pool (0 = one per CPU, at most the members left; 1 runs
    in-process, which is what tests and debugging want). ``scheduler`` (an address) or
    ``dask_local`` (a worker count) runs on Dask instead. ``out_dir/sweep.json`` records every
    member's status.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    members = expand(cfg)
    say = echo or (lambda _msg: None)
    results: dict[str, MemberResult] = {}
    todo: list[Member] = []
    for m in members:
        rd = RunDir(out / m.name)
        if rd.is_complete() and rd.recorded_config() == config_mod.dumps(m.config):
            results[m.name] = MemberResult(m.name, "skipped", summary=rd.read_summary())
        else:
            todo.append(m)
    say(f"sweep: {len(members)} members, {len(members) - len(todo)} already complete, {len(todo)} to run")

    def report(res: MemberResult) -> None:
        results[res.name] = res
        line = f"  {res.name}: {res.status}" + (f" ({res.error})" if res.error else f" in {res.wall_s:.1f} s")
        say(line)
        _write_status(out, members, results)

    if todo:
        if scheduler or dask_local:
            _run_dask(todo, out, report, scheduler=scheduler, dask_local=dask_local, dask_processes=dask_processes)
        else:
            n = workers or min(len(todo), multiprocessing.cpu_count())
            if n <= 1:
                for m, (toml, d) in zip(todo, _member_args(todo, out)):
                    report(run_member(toml, d))
            else:
                _run_pool(todo, out, min(n, len(todo)), report)
    _write_status(out, members, results)
    return [results[m.name] for m in members if m.name in results]


def _write_status(out: Path, members: list[Member], results: dict[str, MemberResult]) -> None:
    atomic_write_json(out / "sweep.json", {
        "members": [
            {"name": m.name, "values": m.values, "status": results[m.name].status if m.name in results else "pending",
             "error": results[m.name].error if m.name in results else ""}
            for m in members
        ]
    })
