"""Mahimahi packet-delivery traces (Netravali et al., USENIX ATC'15; traces from Winstein et al. NSDI'13).

A Mahimahi link trace is a text file with one integer per line: a millisecond timestamp at which
one MTU-sized packet (1,500 bytes) may be delivered; a repeated timestamp means several packets in
that millisecond. Mahimahi replays the file in a loop, the last timestamp being the loop length.

The importer turns delivery opportunities into a piecewise-constant bytes/s series over bins of
``bin_s`` seconds (packets in the bin × 1,500 / ``bin_s``); the period is the last timestamp
rounded up to whole bins. One file is one direction: ``uplink=PATH`` adds the other one
(the Mahimahi convention is ``*.down`` / ``*.up`` pairs); without it the uplink repeats the downlink.
The result is a one-device population; compute and RAM come from options (documented defaults).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from simfed.timing.importers._common import DEFAULT_RAM_BYTES, default_phone_flops, existing_file, positive_option
from simfed.timing.traces import DeviceTrace, Population, Series, TraceError

PACKET_BYTES = 1500.0


def read_delivery_series(path: str | os.PathLike, bin_s: float = 1.0) -> Series:
    """A Mahimahi trace as a bytes/s :class:`Series` over ``bin_s`` bins."""
    p = existing_file(path, "mahimahi")
    bin_s = positive_option("bin_s", bin_s, "mahimahi")
    lines = p.read_text().split()
    if not lines:
        raise TraceError(f"{p}: empty Mahimahi trace (expected one integer millisecond timestamp per line)")
    try:
        ms = np.array([int(x) for x in lines], dtype=np.int64)
    except ValueError:
        bad = next(i for i, x in enumerate(lines) if not x.lstrip("-").isdigit())
        raise TraceError(f"{p}: line {bad + 1}: {lines[bad]!r} is not an integer millisecond timestamp") from None
    if (ms < 0).any():
        raise TraceError(f"{p}: line {int(np.argmax(ms < 0)) + 1}: negative timestamp {int(ms[ms < 0][0])}")
    if ms.size > 1 and (np.diff(ms) < 0).any():
        i = int(np.argmax(np.diff(ms) < 0)) + 1
        raise TraceError(f"{p}: line {i + 1}: timestamps go backwards ({int(ms[i - 1])} then {int(ms[i])})")
    if ms[-1] <= 0:
        raise TraceError(f"{p}: the last timestamp must be > 0 ms (it is the loop length)")
    bin_ms = bin_s * 1000.0
    n_bins = int(math.ceil(ms[-1] / bin_ms))
    # a delivery at exactly the loop length belongs to the last bin (Mahimahi's loop restarts after it)
    idx = np.minimum((ms / bin_ms).astype(np.int64), n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    rate = counts * PACKET_BYTES / bin_s
    return Series.make(np.arange(n_bins) * bin_s, rate, n_bins * bin_s, where=str(p))


def import_mahimahi(
    path: str | os.PathLike,
    *,
    uplink: str | os.PathLike | None = None,
    bin_s: float = 1.0,
    flops: float | None = None,
    ram_bytes: float = DEFAULT_RAM_BYTES,
    latency_s: float = 0.0,
    device_id: str | None = None,
) -> Population:
    down = read_delivery_series(path, bin_s)
    up = read_delivery_series(uplink, bin_s) if uplink is not None else down
    flops = default_phone_flops() if flops is None else positive_option("flops", flops, "mahimahi")
    ram_bytes = positive_option("ram_bytes", ram_bytes, "mahimahi")
    name = device_id or Path(path).stem
    dev = DeviceTrace(name, "mahimahi", Series.constant(flops), down, up, float(latency_s), ram_bytes)
    meta = {"importer": "mahimahi", "source": str(path), "uplink": None if uplink is None else str(uplink),
            "bin_s": bin_s, "flops": flops, "ram_bytes": ram_bytes}  # fmt: skip
    return Population((dev,), meta)
