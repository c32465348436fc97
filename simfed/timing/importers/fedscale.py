"""FedScale device traces (SymbioticLab/FedScale ``benchmark/dataset/data/device_info/``).

Two pickled dicts, described in FedScale's dataset README and ``client_metadata.py``:

- ``client_device_capacity``: ``{client_id: {'computation': ms per sample, 'communication': kbit/s}}``
  (500,000 clients; compute = AI-Benchmark *inference* latency per sample, bandwidth from MobiPerf).
  simfed needs a throughput, so ``FLOP/s = flops_per_sample / (ms / 1000)``, where
  ``flops_per_sample`` is the inference cost of the reference model the latency refers to
  (default 0.6 GFLOP: MobileNet-V2 at 224×224, 300 M multiply-adds as its paper reports; pass your
  own). FedScale uses one scalar bandwidth for both directions; so does the import (kbit = 1000 bit).
- ``client_behave_trace``: ``{client_id: {'duration', 'active': [s], 'inactive': [s], 'finish_time': s,
  'model'}}`` (107,749 clients): online in ``[active[i], inactive[i]]``, cyclic with period
  ``finish_time`` (FedScale tests ``t % finish_time``). Intervals reaching past ``finish_time`` are
  clipped to it and zero-length ones dropped; clients with no online time left are skipped (counted
  in the population's provenance).

FedScale pairs the two files independently (client k gets behaviour entry ``k % len``); so does
the importer when both are given. The files are not in the repository (39 MB / 26 MB,
"research purpose only"); users pass their own copies.
"""

from __future__ import annotations

import math
import os

import numpy as np

from simfed.timing.importers._common import (
    DEFAULT_RAM_BYTES,
    existing_file,
    load_plain_pickle,
    positive_option,
)
from simfed.timing.traces import Availability, DeviceTrace, Population, Series, TraceError

DEFAULT_FLOPS_PER_SAMPLE = 0.6e9
KBIT_BYTES = 1000.0 / 8.0


def read_capacity(path: str | os.PathLike) -> dict[str, tuple[float, float]]:
    """``{client_id: (ms_per_sample, kbit_per_s)}`` with every entry validated."""
    p = existing_file(path, "fedscale client_device_capacity")
    data = load_plain_pickle(p, "FedScale client_device_capacity")
    if not isinstance(data, dict) or not data:
        raise TraceError(f"{p}: expected a non-empty dict {{client_id: {{'computation', 'communication'}}}}")
    out = {}
    for cid, entry in data.items():
        if not isinstance(entry, dict):
            raise TraceError(f"{p}: client {cid!r}: entry must be a dict, got {type(entry).__name__}")
        for key in ("computation", "communication"):
            if key not in entry:
                raise TraceError(f"{p}: client {cid!r}: missing field {key!r}")
            try:
                v = float(entry[key])
            except (TypeError, ValueError):
                raise TraceError(f"{p}: client {cid!r}: field {key!r} is not a number ({entry[key]!r})") from None
            if not (math.isfinite(v) and v > 0):
                raise TraceError(f"{p}: client {cid!r}: field {key!r} must be positive and finite, got {v!r}")
        out[str(cid)] = (float(entry["computation"]), float(entry["communication"]))
    return out


def read_behave(path: str | os.PathLike) -> tuple[dict[str, Availability], dict[str, str], int]:
    """``({client_id: Availability}, {client_id: model}, n_skipped)`` from a behaviour trace."""
    p = existing_file(path, "fedscale client_behave_trace")
    data = load_plain_pickle(p, "FedScale client_behave_trace")
    if not isinstance(data, dict) or not data:
        raise TraceError(f"{p}: expected a non-empty dict {{client_id: {{'active', 'inactive', 'finish_time', ...}}}}")
    out, models, skipped = {}, {}, 0
    for cid, entry in data.items():
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
        if not keep.any():
            skipped += 1
            continue
        out[str(cid)] = Availability.make(act[keep], ina[keep], period, where=where)
        models[str(cid)] = str(entry.get("model", ""))
    if not out:
        raise TraceError(f"{p}: no client has any online time")
    return out, models, skipped


def _assemble(ids, rates, availabilities, types, *, ram_bytes: float, latency_s: float) -> tuple[DeviceTrace, ...]:
    """Devices from parallel lists: ``rates[k] = (FLOP/s, bytes/s)``, one bandwidth for both directions."""
    out = []
    for cid, (flops, bw_bps), avail, dtype in zip(ids, rates, availabilities, types):
        bw = Series.constant(bw_bps)
        out.append(DeviceTrace(cid, dtype, Series.constant(flops), bw, bw, latency_s, ram_bytes, avail))
    return tuple(out)


def import_capacity(
    path: str | os.PathLike,
    *,
    behave: str | os.PathLike | None = None,
    flops_per_sample: float = DEFAULT_FLOPS_PER_SAMPLE,
    ram_bytes: float = DEFAULT_RAM_BYTES,
    latency_s: float = 0.0,
    limit: int | None = None,
) -> Population:
    """One device per capacity entry; availability from ``behave`` if given (paired by index)."""
    fmt = "fedscale"
    flops_per_sample = positive_option("flops_per_sample", flops_per_sample, fmt)
    ram_bytes = positive_option("ram_bytes", ram_bytes, fmt)
    caps = read_capacity(path)
    beh, models, skipped = read_behave(behave) if behave is not None else (None, {}, 0)
    meta = {
        "importer": fmt, "source": str(path), "behave": None if behave is None else str(behave),
        "flops_per_sample": flops_per_sample, "ram_bytes": ram_bytes, "skipped_never_online": skipped,
    }  # fmt: skip
    ids = list(caps)[: None if limit is None else int(limit)]
    rates = [(flops_per_sample / (caps[c][0] / 1000.0), caps[c][1] * KBIT_BYTES) for c in ids]
    if beh is None:
        avails, types = [Availability.always()] * len(ids), ["fedscale"] * len(ids)
    else:
        keys = list(beh)
        avails = [beh[keys[k % len(keys)]] for k in range(len(ids))]
        types = [models[keys[k % len(keys)]] or "fedscale" for k in range(len(ids))]
    return Population(_assemble(ids, rates, avails, types, ram_bytes=ram_bytes, latency_s=float(latency_s)), meta)


def import_behave(
    path: str | os.PathLike,
    *,
    capacity: str | os.PathLike | None = None,
    flops_per_sample: float = DEFAULT_FLOPS_PER_SAMPLE,
    flops: float | None = None,
    bandwidth_bps: float | None = None,
    ram_bytes: float = DEFAULT_RAM_BYTES,
    latency_s: float = 0.0,
    limit: int | None = None,
) -> Population:
    """One device per behaviour entry (device type = its phone ``model``).

    Compute and bandwidth come from ``capacity`` (paired by index) or, without it, from the
    constant ``flops`` (FLOP/s) and ``bandwidth_bps`` (bytes/s) options, which are then required.
    """
    fmt = "fedscale-behave"
    ram_bytes = positive_option("ram_bytes", ram_bytes, fmt)
    beh, models, skipped = read_behave(path)
    caps = read_capacity(capacity) if capacity is not None else None
    if caps is None and (flops is None or bandwidth_bps is None):
        raise TraceError(f"{fmt}: a behaviour trace has no compute or bandwidth: pass capacity=PATH, or flops= and bandwidth_bps=")
    meta = {
        "importer": fmt, "source": str(path), "capacity": None if capacity is None else str(capacity),
        "flops_per_sample": flops_per_sample, "ram_bytes": ram_bytes, "skipped_never_online": skipped,
    }  # fmt: skip
    if caps is None:
        flops_per_sample = positive_option("flops", flops, fmt)
        meta["bandwidth_bps"] = positive_option("bandwidth_bps", bandwidth_bps, fmt)
    else:
        flops_per_sample = positive_option("flops_per_sample", flops_per_sample, fmt)
    ids = list(beh)[: None if limit is None else int(limit)]
    if caps is None:
        rates = [(flops_per_sample, meta["bandwidth_bps"])] * len(ids)
    else:
        keys = list(caps)
        rates = [caps[keys[k % len(keys)]] for k in range(len(ids))]
        rates = [(flops_per_sample / (ms / 1000.0), kbps * KBIT_BYTES) for ms, kbps in rates]
    avails = [beh[c] for c in ids]
    types = [models[c] or "fedscale" for c in ids]
    return Population(_assemble(ids, rates, avails, types, ram_bytes=ram_bytes, latency_s=float(latency_s)), meta)
