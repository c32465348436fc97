"""``simfed traces``: generate, import and inspect device-trace directories.

    simfed traces generate NAME --out DIR [--devices N] [--seed S] [--duration-s D] [--set KEY=VALUE ...]
    simfed traces import FORMAT PATH --out DIR [--set KEY=VALUE ...]
    simfed traces show DIR

Generators and formats are the registries of :mod:`simfed.timing.generators` and
:mod:`simfed.timing.importers`; ``--set`` passes one of their keyword options (e.g.
``--set behave=client_behave_trace`` for ``fedscale``, ``--set efficiency=0.4`` for
``fedspine-testbed``). The output directory is written atomically in the format of
:mod:`simfed.timing.tracefile` (``traces/SCHEMA.md``).
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from simfed.cli import CliError


def register(subparsers) -> None:
    from simfed.timing.generators import GENERATORS
    from simfed.timing.importers import IMPORTERS

    parser = subparsers.add_parser("traces", help="generate, import and inspect device traces")
    sub = parser.add_subparsers(dest="traces_command", required=True)

    gen = sub.add_parser("generate", help="generate a seeded synthetic population")
    gen.add_argument("name", choices=sorted(GENERATORS))
    gen.add_argument("--out", required=True, help="output trace directory")
    gen.add_argument("--devices", type=int, default=None, help="number of devices (generator default if omitted)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--duration-s", type=float, default=3600.0, help="length of the generated series (cycled)")
    gen.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a generator option")
    gen.set_defaults(func=_generate)

    imp = sub.add_parser("import", help="import a public trace format")
    imp.add_argument("format", choices=sorted(IMPORTERS))
    imp.add_argument("path")
    imp.add_argument("--out", required=True, help="output trace directory")
    imp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an importer option")
    imp.set_defaults(func=_import)

    show = sub.add_parser("show", help="per-type summary of a trace directory")
    show.add_argument("dir")
    show.set_defaults(func=_show)


def _parse_value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _options(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise CliError(f"--set expects KEY=VALUE, got {pair!r}")
        out[key] = _parse_value(value)
    return out


def _generate(args: argparse.Namespace) -> int:
    from simfed.timing.generators import generate
    from simfed.timing.tracefile import write_population

    try:
        pop = generate(args.name, n_devices=args.devices, seed=args.seed, duration_s=args.duration_s, **_options(args.set))
    except TypeError as exc:
        raise CliError(f"generator {args.name!r}: {exc}") from None
    out = write_population(pop, args.out)
    print(f"wrote {len(pop)} devices ({args.name}, seed {args.seed}) to {out}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from simfed.timing.importers import import_traces
    from simfed.timing.tracefile import write_population

    pop = import_traces(args.format, args.path, **_options(args.set))
    out = write_population(pop, args.out)
    print(f"imported {len(pop)} devices ({args.format}) from {args.path} to {out}")
    return 0


def online_share(avail) -> float:
    """Fraction of its period a device is online (1.0 for always-online devices)."""
    if avail.is_always:
        return 1.0
    return sum(e - s for s, e in zip(avail.starts, avail.ends)) / avail.period_s


def summarize(population) -> list[dict]:
    """One row per device type: count and mean/min/max of each device's time-averaged rates."""
    rows = []
    for dtype in population.types():
        devs = [d for d in population.devices if d.device_type == dtype]
        cols = {
            "compute_gflops": np.array([d.compute_flops.mean() for d in devs]) / 1e9,
            "down_mbitps": np.array([d.down_bps.mean() for d in devs]) * 8 / 1e6,
            "up_mbitps": np.array([d.up_bps.mean() for d in devs]) * 8 / 1e6,
            "ram_gib": np.array([d.ram_bytes for d in devs]) / 1024**3,
            "latency_ms": np.array([d.latency_s for d in devs]) * 1e3,
            "online": np.array([online_share(d.availability) for d in devs]),
        }
        row = {"type": dtype, "count": len(devs)}
        for name, v in cols.items():
            row[name] = (float(v.mean()), float(v.min()), float(v.max()))
        rows.append(row)
    return rows


def _fmt(triple: tuple[float, float, float]) -> str:
    def f(x: float) -> str:
        return f"{x:.3g}" if math.isfinite(x) else str(x)

    mean, lo, hi = triple
    return f"{f(mean)} [{f(lo)}-{f(hi)}]"


def _show(args: argparse.Namespace) -> int:
    from simfed.timing.tracefile import read_population

    pop = read_population(args.dir)
    src = pop.meta.get("generator") or pop.meta.get("importer") or "unknown source"
    seed = f", seed {pop.meta['seed']}" if "seed" in pop.meta else ""
    print(f"{args.dir}: {len(pop)} devices ({src}{seed}); values: mean [min-max] of per-device time averages")
    headers = ["type", "count", "compute GFLOP/s", "down Mbit/s", "up Mbit/s", "RAM GiB", "latency ms", "online share"]
    keys = ["compute_gflops", "down_mbitps", "up_mbitps", "ram_gib", "latency_ms", "online"]
    table = [headers] + [[r["type"], str(r["count"])] + [_fmt(r[k]) for k in keys] for r in summarize(pop)]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0
