"""Device traces: piecewise-constant rate series, availability intervals, and a device's whole trace.

A trace is what the timing layer replays: per device, its compute throughput (FLOP/s) over time,
its downlink and uplink bandwidth (bytes/s) over time, a fixed latency, the intervals when it is
online, its RAM, and a type label. Every series is piecewise constant and repeats with its period,
so a finite measurement can drive an arbitrarily long simulation (as FedScale's availability trace
does with its 6-day cycle).

This module only holds the data and the exact maths on one series; reading and writing the
on-disk format lives in :mod:`simfed.timing.tracefile`, generators in
:mod:`simfed.timing.generators`, public-format importers in :mod:`simfed.timing.importers`.
"""

from __future__ import annotations

import bisect
import math
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field

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
        if amounts is None:
            amounts = v * np.diff(np.append(t, period_s))
        cum = np.concatenate([[0.0], np.cumsum(amounts)])
        return cls(t, v, period_s, cum.tolist(), t.tolist(), v.tolist())

    @classmethod
    def constant(cls, value: float, *, where: str = "series") -> "Series":
        return cls.make([0.0], [value], 1.0, where=where)

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
    compute_flops: Series  # effective training throughput, FLOP/s
    down_bps: Series  # downlink, bytes/s
    up_bps: Series  # uplink, bytes/s
    latency_s: float  # one-way latency added to every transfer
    ram_bytes: float
    availability: Availability = field(default_factory=Availability.always)
    ap: str = ""


@dataclass(frozen=True, eq=False)
class Population:
    """A set of device traces, the access points they share, and free-form provenance (generator, seed, sources)."""

    devices: tuple[DeviceTrace, ...]
    meta: dict = field(default_factory=dict)
    access_points: dict = field(default_factory=dict)  # name -> AccessPoint

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
