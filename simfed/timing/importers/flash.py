"""FLASH per-device network speed distributions (PKU-Chengxu/FLASH ``models/speed_distri.json``).

``{device_guid: {down_u, down_sigma, up_u, up_sigma}}``: mean and standard deviation of each
phone's download/upload speed in KB/s, where FLASH's KB is 1,024 bytes (it divides model bytes by
1024 and by the speed). FLASH draws Normal(u, sigma) per transfer and redraws negatives; the
importer draws the same distribution once per ``slot_s`` slot over ``duration_s`` (seeded), which
gives the replay a time-varying series with FLASH's per-device mean and spread. The series lasts
exactly ``duration_s``: when it is not a whole number of slots the last slot is shorter.

Device ids are the JSON object's keys exactly; a key that appears twice in the file is an error
(a JSON reader would silently keep the last one).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from simfed.options import Annotated, Range, check_arguments, signature_table
from simfed.timing.generators._sampling import positive_normal
from simfed.timing.importers._common import (
    DEFAULT_RAM_BYTES,
    NonNegative,
    Positive,
    PositiveOrNone,
    default_phone_flops,
    existing_file,
)
from simfed.timing.traces import DeviceTrace, Population, Series, TraceError

FIELDS = ("down_u", "down_sigma", "up_u", "up_sigma")


def _object_without_duplicates(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


class _DuplicateKey(Exception):
    pass


def import_flash(
    path: str | os.PathLike,
    *,
    seed: Annotated[int, Range(ge=0)] = 0,
    slot_s: Positive = 60.0,
    duration_s: Positive = 3600.0,
    flops: PositiveOrNone = None,
    ram_bytes: Positive = DEFAULT_RAM_BYTES,
    latency_s: NonNegative = 0.0,
) -> Population:
    """One device per entry of a FLASH ``speed_distri.json`` (module docstring).

    Raises:
        OptionError: an option of the wrong type or out of its range.
        TraceError: an unreadable file, a duplicate key, a missing or non-positive field.
    """
    check_arguments(OPTIONS, locals(), "flash: ")
    p = existing_file(path, "flash")
    try:
        data = json.loads(p.read_text(), object_pairs_hook=_object_without_duplicates)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TraceError(f"{p}: not valid JSON ({exc})") from None
    except _DuplicateKey as exc:
        raise TraceError(f"{p}: key {exc.args[0]!r} appears twice in one object (a JSON reader would silently keep "
                         "only the last)") from None
    if not isinstance(data, dict) or not data:
        raise TraceError(f"{p}: expected a non-empty object {{device_id: {{{', '.join(FIELDS)}}}}}")
    n_slots = max(1, math.ceil(duration_s / slot_s - 1e-9))
    flops = default_phone_flops() if flops is None else float(flops)
    rng = np.random.default_rng(int(seed))
    times = np.arange(n_slots) * slot_s  # the last slot ends at duration_s exactly
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
            DeviceTrace(did, "flash-wifi", Series.constant(flops), Series.make(times, down, duration_s),
                        Series.make(times, up, duration_s), float(latency_s), float(ram_bytes))  # fmt: skip
        )
    meta = {"importer": "flash", "source": str(p), "seed": int(seed), "slot_s": slot_s, "duration_s": duration_s,
            "flops": flops, "ram_bytes": ram_bytes, "units": "FLASH KB/s with KB = 1024 bytes (exact)"}  # fmt: skip
    return Population(tuple(devices), meta)


OPTIONS = signature_table(import_flash, "importer 'flash'", skip=("path",))
