"""``simfed calibrate``: device profiles from measured step times and memory (:mod:`simfed.timing.calibrate`).

    simfed calibrate host --out PROFILE.json [--preset tiny] [--sparsities 0,0.25,0.5] [--ranks 2,8,32]
                          [--batch B] [--seq-len T] [--steps 12] [--passes 3] [--threads 1] [--clock cpu]
                          [--no-memory] [--device-type host] [--csv MEASUREMENTS.csv]
    simfed calibrate import MEASUREMENTS.csv --out PROFILE.json [--device-type T] [--usable-ram-bytes B]
    simfed calibrate apply TRACE_DIR PROFILE.json [PROFILE.json ...] --out NEW_TRACE_DIR

``host`` measures this machine (the accuracy layer's real model over a (sparsity, rank) grid), ``import`` reads a
CSV filled on a real board (columns: docs/timing.md §8), and both fit the cost model's throughput and
per-iteration overhead (and the memory overheads) and write a device profile. ``apply`` recalibrates a trace
directory's device type with a profile. Each prints the fit's errors per point.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser("calibrate", help="fit device profiles to measured step times and memory")
    sub = parser.add_subparsers(dest="calibrate_command", required=True)

    host = sub.add_parser("host", help="measure this host over a (sparsity, rank) grid and write its profile")
    host.add_argument("--out", required=True, help="profile file to write (JSON)")
    host.add_argument("--preset", default="tiny", help="model to run: tiny (default) or smollm2-135m")
    host.add_argument("--sparsities", default="0,0.25,0.5", help="comma-separated sparsities (default 0,0.25,0.5)")
    host.add_argument("--ranks", default="2,8,32", help="comma-separated LoRA ranks (default 2,8,32)")
    host.add_argument("--batch", type=int, default=None, help="sequences per step (default: the trainer's, 8)")
    host.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: the trainer's, 80)")
    host.add_argument("--steps", type=int, default=12, help="timed steps per point and pass (default 12)")
    host.add_argument("--passes", type=int, default=3, help="passes over the grid (default 3)")
    host.add_argument("--warmup", type=int, default=3, help="untimed steps before each point's timed ones (default 3)")
    host.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    host.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                      help="cpu: the process's CPU time (default; robust on a shared machine); wall: elapsed time")
    host.add_argument("--no-memory", action="store_true", help="do not measure peak memory")
    host.add_argument("--device-type", default="host", help="device type the profile is for (default host)")
    host.add_argument("--usable-ram-bytes", type=float, default=None, help="RAM a training process may use here")
    host.add_argument("--csv", default=None, help="also write the measurements as a CSV (the import format)")
    host.set_defaults(func=_host)

    imp = sub.add_parser("import", help="fit a profile to a CSV of step times (and memory) measured on a board")
    imp.add_argument("csv", help="measurement CSV (columns: docs/timing.md §8)")
    imp.add_argument("--out", required=True, help="profile file to write (JSON)")
    imp.add_argument("--device-type", default=None, help="the device type to profile when the CSV holds several")
    imp.add_argument("--usable-ram-bytes", type=float, default=None,
                     help="RAM a training process may use on the board (e.g. tegrastats' total less the idle use)")
    imp.set_defaults(func=_import)

    app = sub.add_parser("apply", help="recalibrate device types of a trace directory with profiles")
    app.add_argument("dir", help="trace directory to read")
    app.add_argument("profiles", nargs="+", help="profile files (one per device type)")
    app.add_argument("--out", required=True, help="trace directory to write")
    app.set_defaults(func=_apply)


def _floats(text: str, flag: str) -> list[float]:
    from simfed.cli import CliError

    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CliError(f"{flag}: expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise CliError(f"{flag}: expected at least one value, got {text!r}")
    return values


def _ints(text: str, flag: str) -> list[int]:
    from simfed.cli import CliError

    values = _floats(text, flag)
    if any(v != int(v) for v in values):
        raise CliError(f"{flag}: expected comma-separated integers, got {text!r}")
    return [int(v) for v in values]


def _report(profile) -> None:
    """The fitted constants and every point's errors."""
    fit = profile.fit
    mode = f" in power mode {profile.power_mode}" if profile.power_mode else ""
    print(f"device type {profile.device_type}{mode}: throughput {profile.throughput_flops / 1e9:.2f} GFLOP/s, "
          f"per-iteration overhead {profile.iteration_overhead_flops / 1e9:.3f} GFLOP "
          f"(= {1e3 * profile.iteration_overhead_flops / profile.throughput_flops:.2f} ms)"
          + ("" if fit.get("overhead_fitted", True) else " (one configuration: overhead not fitted)"))
    if profile.allocator_factor is not None:
        print(f"memory: allocator factor {profile.allocator_factor:.3f}, runtime {profile.runtime_bytes / 1e6:.1f} MB"
              + ("" if fit.get("allocator_factor_fitted", True) else " (one tensor size: factor not fitted)"))
    head = (f"{'preset':>13} {'batch':>9} {'s':>5} {'r':>3} {'GFLOP':>8} {'step ms':>9} {'fit ms':>9} {'err':>7}"
            f" | {'tensors MB':>10} {'peak MB':>9} {'fit MB':>9} {'err':>7}")
    print(head)
    for p in fit.get("points", []):
        row = (f"{p['preset']:>13} {p['batch']:>3} x {p['seq_len']:<3} {p['sparsity']:5.2f} {p['rank']:3d} "
               f"{p['flops'] / 1e9:8.3f} {1e3 * p['step_s']:9.2f} {1e3 * p['fitted_step_s']:9.2f} "
               f"{100 * (p['fitted_step_s'] / p['step_s'] - 1):+6.1f}%")
        if p.get("peak_bytes") is not None:
            row += (f" | {p['tensor_bytes'] / 1e6:10.2f} {p['peak_bytes'] / 1e6:9.2f} "
                    f"{p['fitted_peak_bytes'] / 1e6:9.2f} {100 * (p['fitted_peak_bytes'] / p['peak_bytes'] - 1):+6.1f}%")
        print(row)
    te = fit["time_error"]
    line = f"time: max |error| {100 * te['max_abs']:.1f}%, mean {100 * te['mean_abs']:.1f}%"
    if "time_error_leave_one_out" in fit:
        line += f" (leave-one-out max {100 * fit['time_error_leave_one_out']['max_abs']:.1f}%)"
    line += (f"; FLOPs alone (θ = {fit['pure_throughput_flops'] / 1e9:.2f} GFLOP/s, no overhead): "
             f"max {100 * fit['pure_time_error']['max_abs']:.1f}%")
    print(line)
    if "memory_error" in fit:
        me = fit["memory_error"]
        print(f"memory: max |error| {100 * me['max_abs']:.1f}%, mean {100 * me['mean_abs']:.1f}%")


def _host(args: argparse.Namespace) -> int:
    from simfed.timing.calibrate import fit_profile, host_description, measure_host, write_measurements, write_profile

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    rows = measure_host(args.preset, batch=args.batch, seq_len=args.seq_len,
                        sparsities=_floats(args.sparsities, "--sparsities"), ranks=_ints(args.ranks, "--ranks"),
                        steps=args.steps, passes=args.passes, warmup=args.warmup, threads=args.threads,
                        clock=args.clock, memory=not args.no_memory, device_type=args.device_type, progress=progress)
    if args.csv:
        write_measurements(rows, args.csv)
    source = host_description(args.threads, args.clock)
    source.update({"preset": args.preset, "steps": args.steps, "passes": args.passes, "warmup": args.warmup})
    profile = fit_profile(rows, usable_ram_bytes=args.usable_ram_bytes, source=source)
    write_profile(profile, args.out)
    _report(profile)
    print(f"wrote {args.out}" + (f" and {args.csv}" if args.csv else ""))
    return 0


def _import(args: argparse.Namespace) -> int:
    from simfed.timing.calibrate import CalibrationError, fit_profile, read_measurements, write_profile

    rows = read_measurements(args.csv)
    try:
        profile = fit_profile(rows, args.device_type, usable_ram_bytes=args.usable_ram_bytes,
                              source={"kind": "import", "csv": str(args.csv)})
    except CalibrationError as exc:
        raise CalibrationError(f"{args.csv}: {exc}") from None
    write_profile(profile, args.out)
    _report(profile)
    print(f"wrote {args.out}")
    return 0


def _apply(args: argparse.Namespace) -> int:
    from simfed.timing.calibrate import apply_profiles, load_profile
    from simfed.timing.tracefile import read_population, write_population

    pop = read_population(args.dir)
    profiles = [load_profile(p) for p in args.profiles]
    out = apply_profiles(pop, profiles, names=list(args.profiles))
    write_population(out, args.out)
    for dtype, info in out.meta["calibrated"].items():
        ram = "" if info["usable_ram_bytes"] is None else f", RAM {info['usable_ram_bytes'] / 2**30:.2f} GiB"
        print(f"{dtype}: compute scaled by {info['scale']:.4g} (fastest level {info['throughput_flops'] / 1e9:.2f} "
              f"GFLOP/s{ram}) from {info['profile']}")
    print(f"wrote {len(out)} devices to {args.out}")
    return 0
