"""Device traces: piecewise-constant rate series, availability intervals, and a device's whole trace.

A trace is what the timing layer replays: per device, its compute throughput (FLOP/s) over time,
its downlink and uplink bandwidth (bytes/s) over time, a fixed latency, the intervals when it is
online, its RAM, and a type label. Every series is piecewise constant and repeats with its period,
so a finite measurement can drive an arbitrarily long simulation (as FedScale's availability trace
does with its 6-day cycle).

A device may also replay a shared *base* series with its own time offset and rate scale
(:class:`SeriesRef`): a trace library of a few hundred measured series (Mahimahi or 5G runs) then
serves a million devices, each starting at its own point of one of them, without a copy per device.

This module only holds the data and the exact maths on one series; reading and writing the
on-disk format lives in :mod:`simfed.timing.tracefile`, generators in
:mod:`simfed.timing.generators`, public-format importers in :mod:`simfed.timing.importers`.
"""

from __future__ import annotations

import bisect
import math
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from simfed.errors import SimfedError


class TraceError(SimfedError, ValueError):
    """A trace is malformed. The message names the file, the device and the field."""


def wrap_time(t: float, period_s: float) -> tuple[int, float]:
    """Split ``t`` into whole periods ``k`` and a phase ``u`` with ``0 <= u < period_s``.

    ``t - floor(t / period) * period`` can land a rounding error outside ``[0, period)`` when
    ``t`` is within an ulp of a period boundary; both the scalar and the packed replay clamp the
    same way so that they agree bit for bit.
    """
    k = math.floor(t / period_s)
    u = t - k * period_s
    if u < 0.0:
        u = 0.0
    elif u >= period_s:
        k += 1
        u = 0.0
    return k, u


@dataclass(frozen=True, eq=False)
class Series:
    """A piecewise-constant rate: ``values[i]`` holds on ``[times_s[i], times_s[i+1])``.

    The last value holds until ``period_s``; then the series starts again. ``times_s[0]`` must be 0.
    Construct with :meth:`make`, which validates and precomputes the cumulative sums that
    :meth:`finish_time` and :meth:`amount` search (exact, no stepping).
    """

    times_s: np.ndarray
    values: np.ndarray
    period_s: float
    _cum: list = field(repr=False)  # amount done from 0 to times_s[i], plus the per-period total last
    _times: list = field(repr=False)
    _vals: list = field(repr=False)

    @classmethod
    def make(cls, times_s, values, period_s: float | None = None, *, where: str = "series") -> "Series":
        """Validate and build. ``period_s`` defaults to the last time plus the median step.

        ``where`` names the file/device/field for error messages.
        """
        t = np.asarray(times_s, dtype=float).ravel()
        v = np.asarray(values, dtype=float).ravel()
        if t.size == 0:
            raise TraceError(f"{where}: empty series")
        if t.size != v.size:
            raise TraceError(f"{where}: {t.size} times but {v.size} values")
        if not np.all(np.isfinite(t)):
            raise TraceError(f"{where}: time is NaN or infinite at row {int(np.argmax(~np.isfinite(t)))}")
        if not np.all(np.isfinite(v)):
            raise TraceError(f"{where}: value is NaN or infinite at row {int(np.argmax(~np.isfinite(v)))}")
        if np.any(v < 0):
            raise TraceError(f"{where}: negative rate {v[v < 0][0]!r} at row {int(np.argmax(v < 0))}")
        if t[0] != 0.0:
            raise TraceError(f"{where}: first time must be 0, got {t[0]!r}")
        if t.size > 1 and np.any(np.diff(t) <= 0):
            i = int(np.argmax(np.diff(t) <= 0)) + 1
            raise TraceError(f"{where}: times not strictly increasing at row {i} ({t[i - 1]!r} then {t[i]!r})")
        if period_s is None:
            step = float(np.median(np.diff(t))) if t.size > 1 else 1.0
            period_s = float(t[-1] + step)
        period_s = float(period_s)
        if not (math.isfinite(period_s) and period_s > t[-1]):
            raise TraceError(f"{where}: period {period_s!r} must be finite and after the last time {t[-1]!r}")
        return cls._build(t, v, period_s)

    @classmethod
    def _build(cls, t: np.ndarray, v: np.ndarray, period_s: float, amounts: np.ndarray | None = None) -> "Series":
        """Precompute the cumulative sums of already-validated float arrays.

        The bulk loader (:mod:`simfed.timing.tracefile`) validates all devices' rows at once with
        numpy and then calls this directly, skipping :meth:`make`'s per-series checks; it may pass
        ``amounts`` (``v * segment durations``, computed for all devices at once), which is the
        same arithmetic as below and so gives identical sums.
        """
        if t.size == 1:  # one segment (a constant rate): the same sums without the array round trip
            a = float(amounts[0]) if amounts is not None else float(v[0] * (period_s - t[0]))
            return cls(t, v, period_s, [0.0, a], [float(t[0])], [float(v[0])])
        if amounts is None:
            amounts = v * np.diff(np.append(t, period_s))
        cum = np.concatenate([[0.0], np.cumsum(amounts)])
        return cls(t, v, period_s, cum.tolist(), t.tolist(), v.tolist())

    @classmethod
    def constant(cls, value: float, *, where: str = "series") -> "Series":
        return cls.make([0.0], [value], 1.0, where=where)

    @classmethod
    def constants(cls, values, *, where: str = "series") -> list["Series"]:
        """``[Series.constant(v) for v in values]``, validated at once (for 10^6 devices).

        Raises:
            TraceError: a value that is NaN, infinite or negative (``where`` and its position named).
        """
        v = np.asarray(values, dtype=float).ravel()
        bad = ~np.isfinite(v) | (v < 0)
        if bad.any():
            i = int(np.argmax(bad))
            raise TraceError(f"{where}: constant rate {float(v[i])!r} at position {i} must be finite and >= 0")
        zero = np.zeros(1)
        # what _build computes for one segment of period 1: amount v * (1 - 0), cumulative sums [0, amount]
        amounts = (v * 1.0).tolist()
        return [cls(zero, v[i : i + 1], 1.0, [0.0, a], [0.0], [x]) for i, (x, a) in enumerate(zip(v.tolist(), amounts))]

    @property
    def total_per_period(self) -> float:
        return self._cum[-1]

    def mean(self) -> float:
        return self._cum[-1] / self.period_s

    def rate_at(self, t: float) -> float:
        _, u = wrap_time(t, self.period_s)
        return self._vals[bisect.bisect_right(self._times, u) - 1]

    def cumulative(self, t: float) -> float:
        """Amount done from time 0 to ``t`` (cycling past the period)."""
        if t <= 0:
            return 0.0
        # wrap_time, inlined: this runs once per transfer and computation of every device-round
        period = self.period_s
        k = math.floor(t / period)
        u = t - k * period
        if u < 0.0:
            u = 0.0
        elif u >= period:
            k += 1
            u = 0.0
        cum = self._cum
        times = self._times
        i = bisect_right(times, u) - 1 if len(times) > 1 else 0
        return k * cum[-1] + cum[i] + self._vals[i] * (u - times[i])

    def amount(self, t0: float, t1: float) -> float:
        """Amount done between ``t0`` and ``t1`` (work in FLOPs, or bytes)."""
        return self.cumulative(t1) - self.cumulative(t0)

    def finish_time(self, t0: float, amount: float) -> float:
        """The exact time at which ``amount`` started at ``t0`` completes; ``inf`` if it never does."""
        if amount <= 0:
            return t0
        cum = self._cum
        total = cum[-1]
        if total <= 0:
            return math.inf
        times = self._times
        vals = self._vals
        period = self.period_s
        # self.cumulative(t0), inlined (same operations in the same order: results are identical)
        if t0 <= 0:
            done = 0.0
        else:
            k = math.floor(t0 / period)
            u = t0 - k * period
            if u < 0.0:
                u = 0.0
            elif u >= period:
                k += 1
                u = 0.0
            i = bisect_right(times, u) - 1 if len(times) > 1 else 0
            done = k * total + cum[i] + vals[i] * (u - times[i])
        target = done + amount
        k = math.floor(target / total)
        rem = target - k * total
        if rem <= 0.0:  # lands exactly on a period boundary: the earliest such time
            k -= 1
            rem = total
        elif rem > total:  # float round-off past the period's total (would divide by a zero rate)
            rem = total
        n = len(cum) - 1  # segments
        if n == 1:  # a constant rate (0 < rem <= total): the search below would land on segment 0
            i = 0
        else:
            i = bisect_left(cum, rem) - 1
            if i >= n:  # float round-off past the last cumulative value
                i = n - 1
        return k * period + times[i] + (rem - cum[i]) / vals[i]

    def next_change(self, t: float) -> float:
        """The earliest breakpoint strictly after ``t`` (s), where the rate may change; ``inf`` for one segment.

        Breakpoints are ``k * period_s + times_s[i]`` for every whole period ``k`` (computed with
        exactly that expression, so callers that step through segments themselves get the same
        floats). A breakpoint whose value equals the previous one still counts.
        """
        times = self._times
        n = len(times)
        if n == 1:
            return math.inf
        period = self.period_s
        k, u = wrap_time(t, period)
        i = bisect_right(times, u)
        while True:  # normally one pass; more only where k * period + times[i] rounds to <= t
            if i >= n:
                k += 1
                i = 0
            nxt = k * period + times[i]
            if nxt > t:
                return nxt
            i += 1


@dataclass(frozen=True, eq=False, slots=True)
class SeriesRef:
    """A base :class:`Series` replayed from its own time offset and at its own scale: ``rate(t) = scale * base(t + offset_s)``.

    This is how a device uses a series of a trace library (``traces/SCHEMA.md`` §1, *library*): many
    devices share one ``base`` object and differ only in ``offset_s`` (seconds into the base series
    at which the device's time 0 falls, as simulators assign a Mahimahi trace to a client with a
    random start offset) and ``scale`` (a dimensionless multiplier of the base rate). ``series_id``
    names the library series (``None``: the device's own rows, shifted and scaled the same way).

    Replay uses the base's cumulative sums, with ``C`` the base's cumulative amount
    (:meth:`Series.cumulative`) and ``c0 = C(offset_s)``:

    - ``cumulative(t) = scale * (C(t + offset_s) - c0)`` for ``t > 0`` (0 before),
    - ``finish_time(t0, a) = base.finish_time(max(t0, 0) + offset_s, a / scale) - offset_s``,
    - ``rate_at(t) = scale * base.rate_at(t + offset_s)``, ``next_change`` likewise shifted.

    :class:`simfed.timing.packed.PackedSeries` performs the same operations in the same order, so
    packed and scalar answers are equal bit for bit; with ``offset_s = 0`` and ``scale = 1`` every
    answer equals the base's own. The same device written out with the rotated and scaled rows of
    its own (:meth:`materialize`, today's per-device form) describes the same rate function, but its
    cumulative sums are summed in rotated order, so its answers agree only to float round-off
    (relative ~1e-15), not bit for bit.

    Raises:
        TraceError: ``offset_s`` not finite or negative, ``scale`` not finite or not positive.
    """

    base: Series
    offset_s: float = 0.0
    scale: float = 1.0
    series_id: str | None = None
    _c0: float = field(init=False, repr=False, default=0.0)
    _flat: "Series | None" = field(init=False, repr=False, default=None)

    @classmethod
    def _trusted(cls, base: Series, offset_s: float, scale: float, series_id: str | None, c0: float) -> "SeriesRef":
        """Build without checks, with ``c0 = base.cumulative(offset_s)`` computed by the caller.

        The bulk loader validates every offset and scale at once and computes all ``c0`` with
        :class:`simfed.timing.packed.PackedSeries` (equal to the scalar answer, bit for bit).
        """
        ref = object.__new__(cls)
        set_ = object.__setattr__
        set_(ref, "base", base)
        set_(ref, "offset_s", offset_s)
        set_(ref, "scale", scale)
        set_(ref, "series_id", series_id)
        set_(ref, "_c0", c0)
        set_(ref, "_flat", None)
        return ref

    def __post_init__(self) -> None:
        off, sc = float(self.offset_s), float(self.scale)
        name = f"library series {self.series_id!r}" if self.series_id is not None else "shifted series"
        if not (math.isfinite(off) and off >= 0.0):
            raise TraceError(f"{name}: offset {self.offset_s!r} must be a finite time >= 0")
        if not (math.isfinite(sc) and sc > 0.0):
            raise TraceError(f"{name}: scale {self.scale!r} must be a finite number > 0")
        object.__setattr__(self, "offset_s", off)
        object.__setattr__(self, "scale", sc)
        object.__setattr__(self, "_c0", self.base.cumulative(off))

    @property
    def period_s(self) -> float:
        return self.base.period_s

    @property
    def total_per_period(self) -> float:
        return self.scale * self.base.total_per_period

    def mean(self) -> float:
        return self.total_per_period / self.base.period_s

    def rate_at(self, t: float) -> float:
        return self.scale * self.base.rate_at(t + self.offset_s)

    def cumulative(self, t: float) -> float:
        """Amount done from time 0 to ``t`` (cycling past the period)."""
        if t <= 0:
            return 0.0
        return self.scale * (self.base.cumulative(t + self.offset_s) - self._c0)

    def amount(self, t0: float, t1: float) -> float:
        """Amount done between ``t0`` and ``t1`` (work in FLOPs, or bytes)."""
        return self.cumulative(t1) - self.cumulative(t0)

    def finish_time(self, t0: float, amount: float) -> float:
        """The time at which ``amount`` started at ``t0`` completes; ``inf`` if it never does."""
        if amount <= 0:
            return t0
        start = t0 if t0 > 0.0 else 0.0
        return self.base.finish_time(start + self.offset_s, amount / self.scale) - self.offset_s

    def next_change(self, t: float) -> float:
        """The earliest base breakpoint, in device time, strictly after ``t``; ``inf`` for one segment."""
        x = t + self.offset_s
        while True:  # normally one pass; more only where subtracting the offset rounds back to <= t
            nxt = self.base.next_change(x)
            out = nxt - self.offset_s
            if out > t:
                return out
            x = nxt

    def materialize(self) -> Series:
        """The same rate function as a plain :class:`Series`: the base rotated by the offset, values times the scale.

        Times are ``times_s[i] - u`` and ``(period - u) + times_s[i]`` for the phase ``u`` of the
        offset (exact for integer times and offsets); a breakpoint that rounds onto the next one is
        dropped. Computed on first use and cached.
        """
        flat = self._flat
        if flat is None:
            flat = _rotate(self.base, self.offset_s, self.scale)
            object.__setattr__(self, "_flat", flat)
        return flat

    # The per-device arrays, for code that walks a series' breakpoints itself (the shared-network
    # cursor in :mod:`simfed.timing.network`, summaries, writers of the flat form): the materialised form.
    @property
    def times_s(self) -> np.ndarray:
        return self.materialize().times_s

    @property
    def values(self) -> np.ndarray:
        return self.materialize().values

    @property
    def _times(self) -> list:
        return self.materialize()._times

    @property
    def _vals(self) -> list:
        return self.materialize()._vals

    @property
    def _cum(self) -> list:
        return self.materialize()._cum


def _rotate(base: Series, offset_s: float, scale: float) -> Series:
    """``base`` started at ``offset_s`` and scaled: see :meth:`SeriesRef.materialize`."""
    period = base.period_s
    _, u = wrap_time(offset_s, period)
    t, v = base.times_s, base.values
    j = int(np.searchsorted(t, u, side="right")) - 1  # the segment holding the phase
    head_t = t[j + 1:] - u
    tail_idx = np.arange(j + 1) if t[j] < u else np.arange(j)
    times = np.concatenate([[0.0], head_t, (period - u) + t[tail_idx]])
    values = np.concatenate([[v[j]], v[j + 1:], v[tail_idx]]) * scale
    # float rounding may collapse a segment to zero length (equal neighbours) or put the last
    # breakpoint on the period: drop such empty segments (the earlier of two equal breakpoints)
    keep = np.append(times[1:] > times[:-1], times[-1] < period)
    times, values = times[keep], values[keep]
    return Series.make(times, values, period, where="materialised library series")


@dataclass(frozen=True, eq=False)
class Availability:
    """When a device is online: sorted, disjoint ``[start, end)`` intervals inside one period.

    ``always()`` is a device that never goes offline. Intervals repeat with ``period_s``.
    """

    starts: tuple[float, ...]
    ends: tuple[float, ...]
    period_s: float

    @classmethod
    def always(cls) -> "Availability":
        return cls((0.0,), (math.inf,), math.inf)

    @classmethod
    def make(cls, starts, ends, period_s: float, *, where: str = "availability") -> "Availability":
        s = [float(x) for x in starts]
        e = [float(x) for x in ends]
        if len(s) != len(e):
            raise TraceError(f"{where}: {len(s)} starts but {len(e)} ends")
        if not s:
            raise TraceError(f"{where}: no online interval (a device that is never online)")
        if not (math.isfinite(period_s) and period_s > 0):
            raise TraceError(f"{where}: period {period_s!r} must be a positive finite number")
        for i, (a, b) in enumerate(zip(s, e)):
            if not (math.isfinite(a) and math.isfinite(b)):
                raise TraceError(f"{where}: interval {i} has a NaN or infinite bound")
            if not (0 <= a < b <= period_s):
                raise TraceError(f"{where}: interval {i} [{a}, {b}) is empty or outside [0, {period_s}]")
            if i and a < e[i - 1]:
                raise TraceError(f"{where}: intervals not sorted or overlapping at interval {i} ({a} < {e[i - 1]})")
        return cls(tuple(s), tuple(e), float(period_s))

    def __post_init__(self) -> None:
        # Cached flags: the engine asks them for every device-round.
        object.__setattr__(self, "_always", math.isinf(self.period_s))
        object.__setattr__(self, "_wraps", (not self._always) and self.ends[-1] == self.period_s and self.starts[0] == 0.0)

    @property
    def is_always(self) -> bool:
        return self._always

    def _locate(self, t: float) -> tuple[int, float, int]:
        k, u = wrap_time(t, self.period_s)
        return k, u, bisect_right(self.starts, u) - 1

    def is_online(self, t: float) -> bool:
        if self._always:
            return True
        _, u, i = self._locate(t)
        return i >= 0 and u < self.ends[i]

    def next_online(self, t: float) -> float:
        """The earliest time >= ``t`` at which the device is online."""
        if self._always:
            return t
        k, u, i = self._locate(t)
        if i >= 0 and u < self.ends[i]:
            return t
        if i + 1 < len(self.starts):
            return k * self.period_s + self.starts[i + 1]
        return (k + 1) * self.period_s + self.starts[0]

    def offline_at(self, t: float) -> float:
        """When a device online at ``t`` next goes offline (``inf`` if never).

        An interval ending at the period's end that continues into one starting at 0 is one session.
        """
        if self._always:
            return math.inf
        k, u, i = self._locate(t)
        if not (i >= 0 and u < self.ends[i]):
            return t
        return self._session_end(k, i)

    def _session_end(self, k: int, i: int) -> float:
        """The end of the session holding interval ``i`` of period ``k`` (follows wraps at the boundary)."""
        end = k * self.period_s + self.ends[i]
        if self._wraps and i == len(self.starts) - 1:
            if len(self.starts) == 1:
                return math.inf
            end = (k + 1) * self.period_s + self.ends[0]
        return end

    def session(self, t: float) -> tuple[float, float]:
        """``(next_online(t), offline_at(next_online(t)))`` with one search when online at ``t``."""
        if self._always:
            return t, math.inf
        k, u, i = self._locate(t)
        if i >= 0 and u < self.ends[i]:
            return t, self._session_end(k, i)
        ready = k * self.period_s + self.starts[i + 1] if i + 1 < len(self.starts) else (k + 1) * self.period_s + self.starts[0]
        return ready, self.offline_at(ready)


DUPLEX_MODES = ("full", "half")


@dataclass(frozen=True)
class AccessPoint:
    """A shared access point (a Wi-Fi AP, a cell): every device on it shares its capacity.

    ``duplex`` is ``"full"`` (separate capacities per direction: ``downlink_bps`` for what its devices
    download, ``uplink_bps`` for what they upload) or ``"half"`` (one capacity, ``downlink_bps``, shared by
    both directions, as on one Wi-Fi channel; ``uplink_bps`` is then ignored). Capacities in bytes/s.
    """

    name: str
    downlink_bps: float
    uplink_bps: float
    duplex: str = "full"

    def __post_init__(self) -> None:
        if self.duplex not in DUPLEX_MODES:
            raise TraceError(f"access point {self.name!r}: duplex must be one of {DUPLEX_MODES}, got {self.duplex!r}")
        for what, v in (("downlink", self.downlink_bps), ("uplink", self.uplink_bps)):
            if not (v > 0 and math.isfinite(v)):
                raise TraceError(f"access point {self.name!r}: {what} capacity must be a positive finite rate, got {v!r}")


@dataclass(frozen=True, eq=False)
class DeviceTrace:
    """Everything the timing layer knows about one device.

    ``ap`` names the access point the device shares (:class:`AccessPoint`, in
    ``Population.access_points``); ``""`` is a private link (its own series alone decide its transfers).
    """

    device_id: str
    device_type: str
    compute_flops: "Series | SeriesRef"  # effective training throughput, FLOP/s
    down_bps: "Series | SeriesRef"  # downlink, bytes/s
    up_bps: "Series | SeriesRef"  # uplink, bytes/s
    latency_s: float  # one-way latency added to every transfer
    ram_bytes: float
    availability: Availability = field(default_factory=Availability.always)
    ap: str = ""


@dataclass(frozen=True, eq=False)
class Population:
    """A set of device traces, the access points they share, and free-form provenance (generator, seed, sources).

    ``library`` holds the trace library's base series by kind and name (``{"downlink": {"cell-000":
    Series, ...}, ...}``; kinds ``compute``, ``downlink``, ``uplink``): devices use them through
    :class:`SeriesRef` objects whose ``series_id`` is the name. It may list series no device uses;
    writers also collect the bases of the devices' references.
    """

    devices: tuple[DeviceTrace, ...]
    meta: dict = field(default_factory=dict)
    access_points: dict = field(default_factory=dict)  # name -> AccessPoint
    library: dict = field(default_factory=dict)  # kind -> {series_id: Series}

    def __post_init__(self) -> None:
        for d in self.devices:
            if d.ap and d.ap not in self.access_points:
                raise TraceError(f"device {d.device_id!r}: access point {d.ap!r} is not declared "
                                 f"(known: {', '.join(sorted(self.access_points)) or 'none'})")

    def __len__(self) -> int:
        return len(self.devices)

    def by_id(self) -> dict[str, DeviceTrace]:
        return {d.device_id: d for d in self.devices}

    def types(self) -> list[str]:
        return sorted({d.device_type for d in self.devices})


@dataclass(frozen=True, eq=False)
class PopulationStream:
    """A population delivered chunk by chunk, so that 10^6 devices never need to be in memory at once.

    ``chunks()`` yields tuples of :class:`DeviceTrace` (each call starts again and yields the same
    devices); ``meta``, ``access_points`` and ``library`` are those of the whole population.
    :class:`simfed.timing.tracefile.TraceWriter` writes one chunk at a time; :meth:`population`
    collects them all.
    """

    chunks: "Callable[[], Iterator[tuple[DeviceTrace, ...]]]"
    n_devices: int
    meta: dict = field(default_factory=dict)
    access_points: dict = field(default_factory=dict)
    library: dict = field(default_factory=dict)

    def population(self) -> Population:
        """All chunks as one :class:`Population`."""
        devices = tuple(d for chunk in self.chunks() for d in chunk)
        return Population(devices, self.meta, self.access_points, self.library)
