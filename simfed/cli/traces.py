"""``simfed traces``: generate, import and inspect device-trace directories.

    simfed traces generate NAME --out DIR [--devices N] [--seed S] [--duration-s D] [--set KEY=VALUE ...] [--format F]
    simfed traces import FORMAT PATH --out DIR [--set KEY=VALUE ...] [--format F]
    simfed traces convert SRC DST [--format csv|parquet]
    simfed traces show DIR

Generators and formats are the registries of :mod:`simfed.timing.generators` and
:mod:`simfed.timing.importers`; ``--set`` passes one of their keyword options (e.g.
``--set behave=client_behave_trace`` for ``fedscale``, ``--set efficiency=0.4`` for
``fedspine-testbed``), read as the type the option declares (a string option keeps its text:
``--set device_id=007`` stays ``"007"``). An unknown option or a value out of range is one line
naming it and what is accepted. The output directory is written atomically in the format of
:mod:`simfed.timing.tracefile` (``traces/SCHEMA.md``), its tables as CSV or Parquet (``--format``).
A generator whose module also defines ``stream`` (same options, returning a
:class:`~simfed.timing.traces.PopulationStream`; ``phones`` does) is written chunk by chunk through
:class:`~simfed.timing.tracefile.TraceWriter`, so its memory does not grow with ``--devices``.
``convert`` reads and validates a directory and writes it in the other table format (or ``--format``).
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from simfed.cli import CliError

FORMATS = ("csv", "parquet")  # simfed.timing.tracefile.TABLE_FORMATS (not imported here: keeps the CLI start light)


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
    gen.add_argument("--format", choices=FORMATS, default="csv", help="table format of the output (default csv)")
    gen.set_defaults(func=_generate)

    imp = sub.add_parser("import", help="import a public trace format")
    imp.add_argument("format", choices=sorted(IMPORTERS))
    imp.add_argument("path")
    imp.add_argument("--out", required=True, help="output trace directory")
    imp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an importer option")
    imp.add_argument("--format", dest="table_format", choices=FORMATS, default="csv",
                     help="table format of the output directory (default csv)")
    imp.set_defaults(func=_import)

    conv = sub.add_parser("convert", help="rewrite a trace directory as CSV or Parquet tables")
    conv.add_argument("src", help="trace directory to read")
    conv.add_argument("dst", help="trace directory to write")
    conv.add_argument("--format", choices=FORMATS, default=None,
                      help="table format of DST (default: the one SRC is not in)")
    conv.set_defaults(func=_convert)

    show = sub.add_parser("show", help="per-type summary of a trace directory")
    show.add_argument("dir")
    show.set_defaults(func=_show)


def _texts(pairs: list[str]) -> dict[str, str]:
    """``["a=1", "b-c=x"]`` -> ``{"a": "1", "b_c": "x"}`` (values stay text until their option reads them)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise CliError(f"--set expects KEY=VALUE, got {pair!r}")
        if key in out:
            raise CliError(f"--set {key}: given twice ({out[key]!r} and {value!r})")
        out[key] = value
    return out


def _generate(args: argparse.Namespace) -> int:
    from simfed.timing.generators import generate, generator_options
    from simfed.timing.tracefile import write_population

    table = generator_options(args.name).providing(n_devices="--devices", seed="--seed", duration_s="--duration-s")
    options = table.parse(_texts(args.set))
    # the three flags are options of every generator: check them with the same declarations
    flags = {name: table.options[name].check(value, flag) for name, flag, value in (
        ("n_devices", "--devices", args.devices), ("seed", "--seed", args.seed),
        ("duration_s", "--duration-s", args.duration_s))}  # fmt: skip
    stream = _streaming(args.name)
    if stream is None:
        pop = generate(args.name, **flags, **options)
        out = write_population(pop, args.out, format=args.format)
        n = len(pop)
    else:
        from simfed.timing.tracefile import TraceWriter

        chunks = stream(**flags, **options)
        with TraceWriter(args.out, format=args.format, meta=chunks.meta, access_points=chunks.access_points,
                         library=chunks.library) as writer:
            for chunk in chunks.chunks():
                writer.add(chunk)
        writer.warn_zero_rates(f"generator {args.name!r}")
        out, n = writer.path, chunks.n_devices
    print(f"wrote {n} devices ({args.name}, seed {args.seed}) to {out}")
    return 0


def _streaming(name: str):
    """The ``stream`` function of generator ``name``'s module, if it has one (else None)."""
    import sys

    from simfed.timing.generators import GENERATORS

    module = sys.modules.get(GENERATORS[name].__module__)
    return getattr(module, "stream", None)


def _convert(args: argparse.Namespace) -> int:
    from simfed.timing.tracefile import convert_directory, table_format

    out = convert_directory(args.src, args.dst, format=args.format)
    print(f"converted {args.src} to {out} ({table_format(out)})")
    return 0


def _import(args: argparse.Namespace) -> int:
    from simfed.timing.importers import import_traces, importer_options
    from simfed.timing.tracefile import write_population

    options = importer_options(args.format).parse(_texts(args.set))
    pop = import_traces(args.format, args.path, **options)
    out = write_population(pop, args.out, format=args.table_format)
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
