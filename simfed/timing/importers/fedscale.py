"""FedScale device traces (SymbioticLab/FedScale ``benchmark/dataset/data/device_info/``).

Two pickled dicts, described in FedScale's dataset README and ``client_metadata.py``:

- ``client_device_capacity``: ``{client_id: {'computation': ms per sample, 'communication': kbit/s}}``
  (500,000 clients; compute = AI-Benchmark *inference* latency per sample, bandwidth from MobiPerf).
  simfed needs a throughput, so ``FLOP/s = flops_per_sample / (ms / 1000)``, where
  ``flops_per_sample`` is the inference cost of the reference model the latency refers to
  (default 0.6 GFLOP: MobileNet-V2 at 224×224, 300 M multiply-adds as its paper reports; pass your
  own). FedScale uses one scalar bandwidth for both directions; so does the import.
  **Units as FedScale defines them**: its aggregator sizes the model as
  ``sys.getsizeof(pickle.dumps(model)) / 1024 * 8`` "kbit" (``aggregator.py``), so one FedScale
  kbit is 1,024 bits = 128 bytes, and a client's transfer time ``kbit / communication`` is
  reproduced exactly by ``communication × 128`` bytes/s (not × 125, a 2.4 % difference).
- ``client_behave_trace``: ``{client_id: {'duration', 'active': [s], 'inactive': [s], 'finish_time': s,
  'model'}}`` (107,749 clients): online in ``[active[i], inactive[i]]``, cyclic with period
  ``finish_time`` (FedScale tests ``t % finish_time``). Intervals reaching past ``finish_time`` are
  clipped to it and zero-length ones dropped; clients with no online time left are dropped, with a
  warning giving their count (also in the population's provenance, ``skipped_never_online``).

**Pairing, as FedScale does it** (``aggregator.py: client_register_handler``,
``client_manager.py: register_client``): FedScale's simulated client ``c`` (``c = 1, 2, …`` in
registration order) reads the capacity entry whose *key* is ``c mod P`` and the behaviour entry at
*position* ``c mod B`` of the behaviour file (P, B = number of entries). Hence:

- ``fedscale`` (one device per capacity entry): the entry with integer key ``c`` is client ``c``'s
  profile and gets behaviour entry ``c mod B``. Pairing needs integer keys (FedScale's own file
  numbers its clients from 1); other keys are an error when ``behave`` is given.
- ``fedscale-behave`` (one device per behaviour entry): the entry at position ``j`` belongs to
  client ``c = j`` (``c = B`` for ``j = 0``), whose capacity is the entry with key ``c mod P``;
  a missing key (FedScale would fall back to a default profile of 1 ms and 1 kbit/s) is an error.

Device ids are the source's keys as text (``str(key)``), never re-numbered; two keys that give the
same text (``7`` and ``"7"``) are an error. The files are not in the repository (39 MB / 26 MB,
"research purpose only"); users pass their own copies.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass

import numpy as np

from simfed.timing.importers._common import (
    DEFAULT_RAM_BYTES,
    Count,
    NonNegative,
    Positive,
    PositiveOrNone,
    existing_file,
    load_plain_pickle,
    report_dropped,
    unique_ids,
)
from simfed.options import check_arguments, signature_table
from simfed.timing.traces import Availability, DeviceTrace, Population, Series, TraceError

DEFAULT_FLOPS_PER_SAMPLE = 0.6e9
KBIT_BYTES = 1024.0 / 8.0  # FedScale's "kbit": bytes / 1024 * 8 (aggregator.py), i.e. 128 bytes


@dataclass(frozen=True)
class Capacity:
    """One ``client_device_capacity`` entry: its key as stored, its device id, and its two values."""

    key: object
    device_id: str
    ms_per_sample: float
    kbit_per_s: float


@dataclass(frozen=True)
class Behaviour:
    """One ``client_behave_trace`` entry; ``availability`` is None for a client never online."""

    key: object
    device_id: str
    availability: Availability | None
    model: str


def _int_key(key: object) -> int | None:
    return int(key) if isinstance(key, numbers.Integral) and not isinstance(key, bool) else None


def read_capacity(path: str | os.PathLike) -> list[Capacity]:
    """Every entry of a capacity pickle, in file order, validated (ids unique as text)."""
    p = existing_file(path, "fedscale client_device_capacity")
    data = load_plain_pickle(p, "FedScale client_device_capacity")
    if not isinstance(data, dict) or not data:
        raise TraceError(f"{p}: expected a non-empty dict {{client_id: {{'computation', 'communication'}}}}")
    ids = unique_ids((str(k) for k in data), data, str(p), "client keys")
    out = []
    for did, (cid, entry) in zip(ids, data.items()):
        if not isinstance(entry, dict):
            raise TraceError(f"{p}: client {cid!r}: entry must be a dict, got {type(entry).__name__}")
        values = []
        for key in ("computation", "communication"):
            if key not in entry:
                raise TraceError(f"{p}: client {cid!r}: missing field {key!r}")
            try:
                v = float(entry[key])
            except (TypeError, ValueError):
                raise TraceError(f"{p}: client {cid!r}: field {key!r} is not a number ({entry[key]!r})") from None
            if not (math.isfinite(v) and v > 0):
                raise TraceError(f"{p}: client {cid!r}: field {key!r} must be positive and finite, got {v!r}")
            values.append(v)
        out.append(Capacity(cid, did, values[0], values[1]))
    return out


def read_behave(path: str | os.PathLike) -> list[Behaviour]:
    """Every entry of a behaviour pickle, in file order (the position FedScale pairs by), validated."""
    p = existing_file(path, "fedscale client_behave_trace")
    data = load_plain_pickle(p, "FedScale client_behave_trace")
    if not isinstance(data, dict) or not data:
        raise TraceError(f"{p}: expected a non-empty dict {{client_id: {{'active', 'inactive', 'finish_time', ...}}}}")
    ids = unique_ids((str(k) for k in data), data, str(p), "client keys")
    out = []
    for did, (cid, entry) in zip(ids, data.items()):
        where = f"{p}: client {cid!r}"
        if not isinstance(entry, dict):
            raise TraceError(f"{where}: entry must be a dict, got {type(entry).__name__}")
        for key in ("active", "inactive", "finish_time"):
            if key not in entry:
                raise TraceError(f"{where}: missing field {key!r}")
        try:
            act = np.asarray(entry["active"], dtype=float).ravel()
            ina = np.asarray(entry["inactive"], dtype=float).ravel()
            period = float(entry["finish_time"])
        except (TypeError, ValueError):
            raise TraceError(f"{where}: 'active', 'inactive' and 'finish_time' must be numbers (seconds)") from None
        if act.size != ina.size:
            raise TraceError(f"{where}: {act.size} 'active' times but {ina.size} 'inactive' times")
        if not (math.isfinite(period) and period > 0):
            raise TraceError(f"{where}: field 'finish_time' must be a positive number of seconds, got {period!r}")
        if not (np.isfinite(act).all() and np.isfinite(ina).all()):
            raise TraceError(f"{where}: 'active'/'inactive' contain NaN or infinite times")
        if (act < 0).any() or (ina < act).any():
            i = int(np.argmax((act < 0) | (ina < act)))
            raise TraceError(f"{where}: interval {i} [{act[i]}, {ina[i]}] is negative or ends before it starts")
        if act.size > 1 and (act[1:] < ina[:-1]).any():
            i = int(np.argmax(act[1:] < ina[:-1])) + 1
            raise TraceError(f"{where}: intervals not sorted or overlapping at interval {i} ({act[i]} < {ina[i - 1]})")
        ina = np.minimum(ina, period)
        keep = ina > act
        avail = Availability.make(act[keep], ina[keep], period, where=where) if keep.any() else None
        out.append(Behaviour(cid, did, avail, str(entry.get("model", ""))))
    if all(b.availability is None for b in out):
        raise TraceError(f"{p}: no client has any online time")
    return out


def _rates(cap: Capacity, flops_per_sample: float) -> tuple[float, float]:
    """(FLOP/s, bytes/s) of a capacity entry: the reference sample cost over its latency; FedScale kbit."""
    return flops_per_sample / (cap.ms_per_sample / 1000.0), cap.kbit_per_s * KBIT_BYTES


def _device(did: str, dtype: str, rates: tuple[float, float], avail: Availability, *, ram_bytes: float,
            latency_s: float) -> DeviceTrace:
    """A device with constant compute and one bandwidth for both directions (FedScale's model)."""
    flops, bw_bps = rates
    bw = Series.constant(bw_bps)
    return DeviceTrace(did, dtype, Series.constant(flops), bw, bw, float(latency_s), float(ram_bytes), avail)


UNITS_NOTE = "communication: FedScale kbit/s, 1 kbit = 1024 bit = 128 bytes (aggregator.py sizes models as bytes/1024*8)"


def import_capacity(
    path: str | os.PathLike,
    *,
    behave: str | os.PathLike | None = None,
    flops_per_sample: Positive = DEFAULT_FLOPS_PER_SAMPLE,
    ram_bytes: Positive = DEFAULT_RAM_BYTES,
    latency_s: NonNegative = 0.0,
    limit: Count = None,
) -> Population:
    """One device per capacity entry, in file order (at most ``limit``); availability from ``behave``.

    With ``behave``, the entry with integer key ``c`` gets behaviour entry ``c mod B`` (FedScale's
    pairing, module docstring); devices paired with a never-online entry are dropped with a warning.

    Raises:
        OptionError: an option of the wrong type or out of its range.
        TraceError: an unreadable or invalid file, ids that collide, non-integer keys with ``behave``.
    """
    check_arguments(CAPACITY_OPTIONS, locals(), "fedscale: ")
    fmt = "fedscale"
    caps = read_capacity(path)
    meta = {
        "importer": fmt, "source": str(path), "behave": None if behave is None else str(behave),
        "flops_per_sample": flops_per_sample, "ram_bytes": ram_bytes, "skipped_never_online": 0, "units": UNITS_NOTE,
    }  # fmt: skip
    if behave is None:
        devices = [_device(c.device_id, fmt, _rates(c, flops_per_sample), Availability.always(), ram_bytes=ram_bytes,
                           latency_s=latency_s) for c in caps[:limit]]  # fmt: skip
        return Population(tuple(devices), meta)
    beh = read_behave(behave)
    devices = []
    seen = 0
    for c in caps:
        if limit is not None and len(devices) == limit:
            break
        seen += 1
        client = _int_key(c.key)
        if client is None:
            raise TraceError(f"{path}: client key {c.key!r} is not an integer: FedScale pairs client c with behaviour "
                             f"entry c mod {len(beh)}, so pairing with {behave} needs integer client ids")
        b = beh[client % len(beh)]
        if b.availability is not None:
            devices.append(_device(c.device_id, b.model or fmt, _rates(c, flops_per_sample), b.availability,
                                   ram_bytes=ram_bytes, latency_s=latency_s))  # fmt: skip
    meta["pairing"] = "client c (capacity key c) gets behaviour entry c mod B (FedScale)"
    meta["skipped_never_online"] = seen - len(devices)
    report_dropped(fmt, seen - len(devices), seen,
                   f"their paired behaviour entry in {behave} is never online")
    if not devices:
        raise TraceError(f"{path}: every client is paired with a never-online behaviour entry of {behave}")
    return Population(tuple(devices), meta)


def import_behave(
    path: str | os.PathLike,
    *,
    capacity: str | os.PathLike | None = None,
    flops_per_sample: Positive = DEFAULT_FLOPS_PER_SAMPLE,
    flops: PositiveOrNone = None,
    bandwidth_bps: PositiveOrNone = None,
    ram_bytes: Positive = DEFAULT_RAM_BYTES,
    latency_s: NonNegative = 0.0,
    limit: Count = None,
) -> Population:
    """One device per behaviour entry, in file order (at most ``limit``; device type = its phone ``model``).

    Compute and bandwidth come from ``capacity`` (FedScale's pairing: the entry at position j is
    client c = j, or B for j = 0, whose capacity key is c mod P) or, without it, from the constant
    ``flops`` (FLOP/s) and ``bandwidth_bps`` (bytes/s) options, which are then required.
    Never-online entries are dropped with a warning.

    Raises:
        OptionError: an option of the wrong type or out of its range.
        TraceError: an unreadable or invalid file, ids that collide, a missing capacity entry, or
            neither ``capacity`` nor ``flops`` and ``bandwidth_bps``.
    """
    check_arguments(BEHAVE_OPTIONS, locals(), "fedscale-behave: ")
    fmt = "fedscale-behave"
    if capacity is None and (flops is None or bandwidth_bps is None):
        raise TraceError(f"{fmt}: a behaviour trace has no compute or bandwidth: pass capacity=PATH, or flops= and bandwidth_bps=")
    beh = read_behave(path)
    n_entries = len(beh)
    caps = {_int_key(c.key): c for c in read_capacity(capacity)} if capacity is not None else None
    meta = {
        "importer": fmt, "source": str(path), "capacity": None if capacity is None else str(capacity),
        "flops_per_sample": flops_per_sample, "ram_bytes": ram_bytes, "units": UNITS_NOTE,
    }  # fmt: skip
    devices = []
    seen = 0
    for j, b in enumerate(beh):
        if limit is not None and len(devices) == limit:
            break
        seen += 1
        if b.availability is None:
            continue
        if caps is None:
            rates = (float(flops), float(bandwidth_bps))
        else:
            client = j if j > 0 else n_entries
            key = client % len(caps)
            if key not in caps:
                raise TraceError(f"{capacity}: no capacity entry with key {key}: behaviour entry {b.key!r} (position {j}) is "
                                 f"FedScale client {client}, which reads capacity key {client} mod {len(caps)} = {key}")
            rates = _rates(caps[key], flops_per_sample)
        devices.append(_device(b.device_id, b.model or "fedscale", rates, b.availability, ram_bytes=ram_bytes,
                               latency_s=latency_s))  # fmt: skip
    if caps is None:
        meta["bandwidth_bps"] = bandwidth_bps
        meta["flops"] = flops
    else:
        meta["pairing"] = "behaviour entry j is client c = j (B for j = 0); capacity key c mod P (FedScale)"
    meta["skipped_never_online"] = seen - len(devices)
    report_dropped(fmt, seen - len(devices), seen,
                   "never online (no interval inside [0, finish_time))")
    return Population(tuple(devices), meta)


CAPACITY_OPTIONS = signature_table(import_capacity, "importer 'fedscale'", skip=("path",))
BEHAVE_OPTIONS = signature_table(import_behave, "importer 'fedscale-behave'", skip=("path",))
