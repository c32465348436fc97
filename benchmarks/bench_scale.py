"""Benchmark (issue #14): a million devices on one machine -- each step at 10^4, 10^5 and 10^6 devices.

Every step runs in a fresh subprocess, one at a time. Wall time is measured around the process;
peak memory is the child's own ``ru_maxrss`` from ``os.wait4`` (the largest resident set that
process reached -- each step is one process, so this is the largest process of the step). The
table gives wall time, peak RSS, microseconds per unit of work (per device for generation and
loading, per device-round for runs) and the size of the trace directory.

Steps (in order; later ones use the directory that ``generate`` wrote):

- ``generate``: ``simfed traces generate phones --devices N --out DIR`` (chunked: phones are drawn
  and written 10^4 at a time; above 10^4 their network series come from the trace library);
- ``load``: ``read_population(DIR)`` and ``PackedPopulation.of(...)`` in a fresh process, what a
  run does before its first round (prints the read and pack times separately).

- ``uniform``, ``fedspine``: a 10-round timing-only ``simfed run`` of the method on the generated population
  (all devices take part in every round; events logged for a 1 % sample above 10^4 devices), its wall time
  per device-round.

A step is one :class:`Step` in :func:`steps_for`: a name, the command for ``(n_devices, trace_dir, work_dir)``,
and the units of work.

Run: ``python benchmarks/bench_scale.py [--sizes 1e4,1e5,1e6] [--steps generate,load] [--format csv]
[--set library_size=300] [--work DIR] [--keep]``. The 10^6 steps take minutes and several GB: run them alone on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SIMFED = [sys.executable, "-c", "import sys; from simfed.cli import main; sys.exit(main())"]

LOAD = """
import json, sys, time
t0 = time.perf_counter()
from simfed.timing.tracefile import read_population
from simfed.timing.packed import PackedPopulation
t1 = time.perf_counter()
pop = read_population(sys.argv[1])
t2 = time.perf_counter()
packed = PackedPopulation.of(pop)
t3 = time.perf_counter()
base = sum(s.times_s.size for s in (packed.compute_flops, packed.down_bps, packed.up_bps))
print(json.dumps({"import_s": t1 - t0, "read_s": t2 - t1, "pack_s": t3 - t2, "devices": len(pop),
                  "packed_breakpoints": int(base)}))
"""


@dataclass(frozen=True)
class Step:
    """One measured command. ``command(n, trace_dir, work_dir)`` is its argv; ``units(n)`` the work it does."""

    name: str
    command: Callable[[int, Path, Path], list[str]]
    units: Callable[[int], int]
    unit: str = "device"
    writes_traces: bool = False
    keys: tuple[str, ...] | None = None  # which fields of the JSON the command prints to show (None: all)


def _generate(fmt: str, sets: list[str]) -> Callable[[int, Path, Path], list[str]]:
    extra = [a for kv in sets for a in ("--set", kv)]
    return lambda n, trace_dir, work: SIMFED + ["traces", "generate", "phones", "--devices", str(n), "--seed", "0",
                                                "--out", str(trace_dir), "--format", fmt] + extra


#: The run summary's fields the table shows.
RUN_KEYS = ("rounds", "mean_round_s")
#: Rounds of the run steps, and the share of devices whose events they log (``engine.log_sample``).
RUN_ROUNDS = 10
RUN_CONFIG = """name = "scale"
mode = "timing"
method = "{method}"
seed = 0
s_star = 0.5
rounds = {rounds}

[traces]
dir = "{trace_dir}"

[model]
preset = "tiny"
timing_preset = "smollm2-135m"

[train]
local_iters = 10
tau = 5

[engine]
log_sample = {log_sample}

[policy.method_params]
rounds_to_target = 5
"""


def _run(method: str) -> Callable[[int, Path, Path], list[str]]:
    """A 10-round timing-only ``simfed run`` of ``method`` on the generated population (every device, every round;
    events logged for 1 % of the devices above 10^4, all below)."""
    def command(n: int, trace_dir: Path, work: Path) -> list[str]:
        config = work / f"run-{method}-{n}.toml"
        config.write_text(RUN_CONFIG.format(method=method, rounds=RUN_ROUNDS, trace_dir=trace_dir,
                                            log_sample=1.0 if n <= 10_000 else 0.01))
        return SIMFED + ["run", str(config), "--out", str(work / f"run-{method}-{n}"), "--fresh", "--no-progress"]
    return command


def steps_for(fmt: str, sets: list[str] = ()) -> list[Step]:
    """The steps, in order. ``sets`` are ``KEY=VALUE`` generator options."""
    return [
        Step("generate", _generate(fmt, list(sets)), lambda n: n, writes_traces=True),
        Step("load", lambda n, trace_dir, work: [sys.executable, "-c", LOAD, str(trace_dir)], lambda n: n),
        Step("uniform", _run("uniform"), lambda n: n * RUN_ROUNDS, unit="device-round", keys=RUN_KEYS),
        Step("fedspine", _run("fedspine"), lambda n: n * RUN_ROUNDS, unit="device-round", keys=RUN_KEYS),
    ]



@dataclass
class Result:
    step: str
    n: int
    wall_s: float
    peak_rss_bytes: int
    units: int
    unit: str
    returncode: int
    trace_bytes: int | None
    detail: dict
    tail: str


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def measure(step: Step, n: int, trace_dir: Path, work: Path) -> Result:
    """Run ``step`` for ``n`` devices in a subprocess; its wall time and its own peak RSS (``os.wait4``)."""
    out, err = work / f"{step.name}-{n}.out", work / f"{step.name}-{n}.err"
    argv = step.command(n, trace_dir, work)
    with open(out, "wb") as fo, open(err, "wb") as fe:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=fo, stderr=fe, env={**os.environ, "OMP_NUM_THREADS": "1"})
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = out.read_text(errors="replace")
    detail = {}
    lines = text.splitlines()
    for i in range(len(lines) - 1, -1, -1):  # the last JSON object printed (one line, or a run's indented summary)
        if lines[i].startswith("{"):
            try:
                detail = json.loads("\n".join(lines[i:]))
            except json.JSONDecodeError:
                detail = {}
            break
    if step.keys is not None:
        detail = {k: detail[k] for k in step.keys if k in detail}
    tail = (text + err.read_text(errors="replace")).strip().splitlines()[-3:]
    return Result(step.name, n, wall, usage.ru_maxrss * 1024, step.units(n), step.unit, proc.returncode,
                  _dir_bytes(trace_dir) if step.writes_traces else None, detail, " | ".join(tail))


def _row(r: Result) -> str:
    per = r.wall_s / r.units * 1e6 if r.units else float("nan")
    size = f"{r.trace_bytes / 1e6:9.1f}" if r.trace_bytes is not None else f"{'':>9}"
    extra = " ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.detail.items())
    status = "" if r.returncode == 0 else f"  FAILED (exit {r.returncode}): {r.tail}"
    return (f"{r.step:<10} {r.n:>9,d} {r.wall_s:9.1f} {r.peak_rss_bytes / 1e9:8.2f} {per:12.1f} {r.unit:<13}"
            f"{size}  {extra}{status}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1e4,1e5,1e6", help="comma-separated device counts")
    ap.add_argument("--steps", default=None, help="comma-separated step names (default: all)")
    ap.add_argument("--format", choices=("csv", "parquet"), default="csv", help="table format of the traces")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a phones option, e.g. library_size=300 (a library also below 10^4 devices)")
    ap.add_argument("--work", default=None, help="working directory (default: a temporary one, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the generated trace directories")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    sizes = [int(float(s)) for s in args.sizes.split(",") if s]
    steps = steps_for(args.format, args.set)
    if args.steps:
        wanted = args.steps.split(",")
        unknown = sorted(set(wanted) - {s.name for s in steps})
        if unknown:
            ap.error(f"unknown step {unknown[0]!r} (known: {', '.join(s.name for s in steps)})")
        steps = [s for s in steps if s.name in wanted]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"{'step':<10} {'devices':>9} {'wall s':>9} {'peak GB':>8} {'us per unit':>12} {'unit':<13}{'disk MB':>9}")
    results = []
    try:
        for n in sizes:
            trace_dir = work / f"phones-{n}"
            for step in steps:
                r = measure(step, n, trace_dir, work)
                results.append(r)
                print(_row(r), flush=True)
                if r.returncode != 0:
                    break
            if not args.keep:
                shutil.rmtree(trace_dir, ignore_errors=True)
    finally:
        if args.json:
            Path(args.json).write_text(json.dumps([r.__dict__ for r in results], indent=1) + "\n")
        if not args.work and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r.returncode == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
