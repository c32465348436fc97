"""FLASH per-device network speed distributions (PKU-Chengxu/FLASH ``models/speed_distri.json``).

``{device_guid: {down_u, down_sigma, up_u, up_sigma}}``: mean and standard deviation of each
phone's download/upload speed in KB/s, where FLASH's KB is 1,024 bytes (it divides model bytes by
1024 and by the speed). FLASH draws Normal(u, sigma) per transfer and redraws negatives; the
importer draws the same distribution once per ``slot_s`` slot over ``duration_s`` (seeded), which
gives the replay a time-varying series with FLASH's per-device mean and spread.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from simfed.timing.generators._sampling import positive_normal
from simfed.timing.importers._common import DEFAULT_RAM_BYTES, default_phone_flops, existing_file, positive_option
from simfed.timing.traces import DeviceTrace, Population, Series, TraceError

FIELDS = ("down_u", "down_sigma", "up_u", "up_sigma")


def import_flash(
    path: str | os.PathLike,
    *,
    seed: int = 0,
    slot_s: float = 60.0,
    duration_s: float = 3600.0,
    flops: float | None = None,
    ram_bytes: float = DEFAULT_RAM_BYTES,
    latency_s: float = 0.0,
) -> Population:
    p = existing_file(path, "flash")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TraceError(f"{p}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not data:
        raise TraceError(f"{p}: expected a non-empty object {{device_id: {{{', '.join(FIELDS)}}}}}")
    slot_s = positive_option("slot_s", slot_s, "flash")
    duration_s = positive_option("duration_s", duration_s, "flash")
    n_slots = int(round(duration_s / slot_s))
    if n_slots < 1:
        raise TraceError(f"flash: duration_s {duration_s} is shorter than one slot of {slot_s} s")
    flops = default_phone_flops() if flops is None else positive_option("flops", flops, "flash")
    ram_bytes = positive_option("ram_bytes", ram_bytes, "flash")
    rng = np.random.default_rng(int(seed))
    times = np.arange(n_slots) * slot_s
    devices = []
    for did in sorted(data):
        entry = data[did]
        if not isinstance(entry, dict):
            raise TraceError(f"{p}: device {did!r}: entry must be an object with {', '.join(FIELDS)}")
        vals = {}
        for f in FIELDS:
            if f not in entry:
                raise TraceError(f"{p}: device {did!r}: missing field {f!r}")
            try:
                vals[f] = float(entry[f])
            except (TypeError, ValueError):
                raise TraceError(f"{p}: device {did!r}: field {f!r} is not a number ({entry[f]!r})") from None
            if not math.isfinite(vals[f]) or vals[f] < 0 or (f.endswith("_u") and vals[f] == 0):
                raise TraceError(f"{p}: device {did!r}: field {f!r} must be finite and positive, got {entry[f]!r}")
        down = positive_normal(rng, np.full(n_slots, vals["down_u"]), vals["down_sigma"]) * 1024.0
        up = positive_normal(rng, np.full(n_slots, vals["up_u"]), vals["up_sigma"]) * 1024.0
        devices.append(
            DeviceTrace(did, "flash-wifi", Series.constant(flops), Series.make(times, down, n_slots * slot_s),
                        Series.make(times, up, n_slots * slot_s), float(latency_s), ram_bytes)  # fmt: skip
        )
    meta = {"importer": "flash", "source": str(p), "seed": int(seed), "slot_s": slot_s, "duration_s": duration_s,
            "flops": flops, "ram_bytes": ram_bytes}  # fmt: skip
    return Population(tuple(devices), meta)
