"""Mahimahi packet-delivery traces (Netravali et al., USENIX ATC'15; traces from Winstein et al. NSDI'13).

A Mahimahi link trace is a text file with one integer per line: a millisecond timestamp at which
one MTU-sized packet (1,500 bytes) may be delivered; a repeated timestamp means several packets in
that millisecond. Mahimahi replays the file in a loop, the last timestamp being the loop length.

The importer turns delivery opportunities into a piecewise-constant bytes/s series over bins of
``bin_s`` seconds (packets in the bin × 1,500 / the bin's length). The period is exactly the last
timestamp (Mahimahi's loop length): when that is not a whole number of bins the last bin is
shorter, so the bytes per loop and the mean rate are Mahimahi's own. One file is one direction: ``uplink=PATH`` adds the other one
(the Mahimahi convention is ``*.down`` / ``*.up`` pairs); without it the uplink repeats the downlink.
The result is a one-device population; compute and RAM come from options (documented defaults).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from simfed.errors import OptionError
from simfed.options import check_arguments, signature_table
from simfed.timing.importers._common import (
    DEFAULT_RAM_BYTES,
    NonNegative,
    Positive,
    PositiveOrNone,
    default_phone_flops,
    existing_file,
)
from simfed.timing.traces import DeviceTrace, Population, Series, TraceError

PACKET_BYTES = 1500.0


def read_delivery_series(path: str | os.PathLike, bin_s: float = 1.0) -> Series:
    """A Mahimahi trace as a bytes/s :class:`Series` over ``bin_s`` bins; period = the loop length.

    Raises:
        TraceError: a missing or malformed file (names the line).
        OptionError: ``bin_s`` not a positive number.
    """
    p = existing_file(path, "mahimahi")
    if not (isinstance(bin_s, (int, float)) and not isinstance(bin_s, bool) and math.isfinite(bin_s) and bin_s > 0):
        raise OptionError(f"mahimahi: bin_s: expected a number > 0, got {bin_s!r}")
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
    loop_s = float(ms[-1]) / 1000.0
    n_bins = max(1, int(math.ceil(ms[-1] / bin_ms - 1e-9)))
    # a delivery at exactly the loop length belongs to the last bin (Mahimahi's loop restarts after it)
    idx = np.minimum((ms / bin_ms).astype(np.int64), n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    starts = np.arange(n_bins) * bin_s
    lengths = np.diff(np.append(starts, loop_s))  # the last bin ends at the loop length
    rate = counts * PACKET_BYTES / lengths
    return Series.make(starts, rate, loop_s, where=str(p))


def import_mahimahi(
    path: str | os.PathLike,
    *,
    uplink: str | os.PathLike | None = None,
    bin_s: Positive = 1.0,
    flops: PositiveOrNone = None,
    ram_bytes: Positive = DEFAULT_RAM_BYTES,
    latency_s: NonNegative = 0.0,
    device_id: str | None = None,
) -> Population:
    """A one-device population from a Mahimahi trace (``uplink`` gives the other direction).

    The device id is ``device_id`` exactly as given, else the file's stem.

    Raises:
        OptionError: an option of the wrong type or out of its range (an empty ``device_id``).
        TraceError: a missing or malformed trace file.
    """
    check_arguments(OPTIONS, locals(), "mahimahi: ")
    if device_id is not None and not device_id:
        raise OptionError("mahimahi: device_id: expected a non-empty string, got ''")
    down = read_delivery_series(path, bin_s)
    up = read_delivery_series(uplink, bin_s) if uplink is not None else down
    flops = default_phone_flops() if flops is None else float(flops)
    name = device_id if device_id is not None else Path(path).stem
    dev = DeviceTrace(name, "mahimahi", Series.constant(flops), down, up, float(latency_s), float(ram_bytes))
    meta = {"importer": "mahimahi", "source": str(path), "uplink": None if uplink is None else str(uplink),
            "bin_s": bin_s, "flops": flops, "ram_bytes": ram_bytes}  # fmt: skip
    return Population((dev,), meta)


OPTIONS = signature_table(import_mahimahi, "importer 'mahimahi'", skip=("path",))
