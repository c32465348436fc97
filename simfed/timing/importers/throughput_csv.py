"""Per-second throughput CSVs in the 5Gophers layout (Narayanan et al., WWW'20; CC BY 4.0).

Rows are seconds (``seq_num``), throughput columns end in ``throughput_mbps`` (Mbit/s):

- ``01-Throughput/data.csv``: ``protocol, carrier, num_tcp_conn, server_location, run_num, seq_num,
  throughput_mbps`` — one device per run (carrier × connections × server × run);
- ``03-User-Mobility/car-driving-trace-*.csv``: ``seq_num`` plus one ``<Carrier>_throughput_mbps``
  column per carrier — one device per carrier column;
- ``03-User-Mobility/walking-trace.csv``: one ``throughput_mbps`` column — one device.

Each device's downlink is its series (time = ``seq_num`` − first ``seq_num``; period = last + 1 s),
cycled by the replay. 5Gophers measured no uplink: the uplink is the downlink × ``up_ratio``
(default 0.16, the up/down mean ratio of Mahimahi's AT&T LTE traces). Latency defaults to half
the carrier's median 5Gophers RTT (Sprint 60.7, T-Mobile 93.3, Verizon 82.0 ms), else ``latency_s``.

Device ids are built from the run's key fields and column names as written in the file (a run
number ``01`` stays ``01``: fields are read as text); two runs that would get the same id are an error.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from simfed.options import check_arguments, signature_table
from simfed.timing.importers._common import (
    DEFAULT_RAM_BYTES,
    NonNegativeOrNone,
    Positive,
    PositiveOrNone,
    default_phone_flops,
    existing_file,
    unique_ids,
)
from simfed.timing.traces import DeviceTrace, Population, Series, TraceError

MEDIAN_RTT_MS = {"sprint": 60.7, "tmobile": 93.3, "t-mobile": 93.3, "verizon": 82.0}
RUN_KEYS = ["protocol", "carrier", "num_tcp_conn", "server_location", "run_num"]
UP_RATIO = 0.16


def import_throughput_csv(
    path: str | os.PathLike,
    *,
    up_ratio: Positive = UP_RATIO,
    flops: PositiveOrNone = None,
    ram_bytes: Positive = DEFAULT_RAM_BYTES,
    latency_s: NonNegativeOrNone = None,
) -> Population:
    """One device per run (or carrier column) of a 5Gophers-style CSV (module docstring).

    Raises:
        OptionError: an option of the wrong type or out of its range.
        TraceError: an unreadable file, a missing column, a bad value (names the line), colliding ids.
    """
    check_arguments(OPTIONS, locals(), "throughput-csv: ")
    p = existing_file(path, "throughput-csv")
    try:
        # every field as text: identifiers keep their spelling; numbers are converted column by column below
        frame = pd.read_csv(p, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise TraceError(f"{p}: cannot parse as CSV ({exc})") from None
    if "seq_num" not in frame.columns:
        raise TraceError(f"{p}: missing column 'seq_num' (seconds); has: {', '.join(map(str, frame.columns))}")
    value_cols = [c for c in frame.columns if str(c).lower().endswith("throughput_mbps")]
    if not value_cols:
        raise TraceError(f"{p}: no '*throughput_mbps' column; has: {', '.join(map(str, frame.columns))}")
    flops = default_phone_flops() if flops is None else float(flops)
    keys = [k for k in RUN_KEYS if k in frame.columns] if "run_num" in frame.columns else []
    groups = frame.groupby(keys, sort=False) if keys else [((), frame)]
    devices = []
    sources = []  # what each device comes from, for the message when two would share an id
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        seq = pd.to_numeric(g["seq_num"], errors="coerce").to_numpy(float)
        label = "-".join(str(k) for k in key)
        if np.isnan(seq).any():
            r = int(g.index[np.argmax(np.isnan(seq))])
            raise TraceError(f"{p}: line {r + 2}: field 'seq_num' is not a number")
        if seq.size > 1 and (np.diff(seq) <= 0).any():
            r = int(g.index[int(np.argmax(np.diff(seq) <= 0)) + 1])
            raise TraceError(f"{p}: line {r + 2}: run {label or 'all'!r}, field 'seq_num' not strictly increasing")
        t = seq - seq[0]
        carrier = str(dict(zip(keys, key)).get("carrier", "")).lower()
        for col in value_cols:
            mbps = pd.to_numeric(g[col], errors="coerce").to_numpy(float)
            bad = np.isnan(mbps) | (mbps < 0)
            if bad.any():
                r = int(g.index[np.argmax(bad)])
                value = g[col].iloc[int(np.argmax(bad))]
                raise TraceError(f"{p}: line {r + 2}: field {col!r} must be a non-negative number, got {value!r}")
            col_carrier = carrier or str(col).lower().replace("_throughput_mbps", "").replace("throughput_mbps", "")
            name = "-".join(x for x in [label, "" if col == "throughput_mbps" else col_carrier] if x) or p.stem
            rate = mbps * 1e6 / 8.0
            down = Series.make(t, rate, t[-1] + 1.0, where=f"{p}: {name}")
            up = Series.make(t, rate * up_ratio, t[-1] + 1.0, where=f"{p}: {name}")
            lat = latency_s if latency_s is not None else MEDIAN_RTT_MS.get(col_carrier, 0.0) / 2000.0
            dtype = col_carrier.strip("_") or "cellular"
            device_id = f"{p.stem}-{name}" if name != p.stem else name
            devices.append(DeviceTrace(device_id, dtype, Series.constant(flops), down, up, float(lat), float(ram_bytes)))
            sources.append(f"{', '.join(f'{k}={v}' for k, v in zip(keys, key)) or 'the file'} column {col}")
    unique_ids([d.device_id for d in devices], sources, str(p), "runs")
    meta = {"importer": "throughput-csv", "source": str(p), "up_ratio": up_ratio, "flops": flops, "ram_bytes": ram_bytes}
    return Population(tuple(devices), meta)


OPTIONS = signature_table(import_throughput_csv, "importer 'throughput-csv'", skip=("path",))
