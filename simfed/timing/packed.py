"""Vectorised replay of many devices' traces at once (the round model's vectorised path, simfed.timing.round.run_private).

:class:`simfed.timing.traces.Series` answers "when does this transfer / this computation end?"
exactly for one device with cumulative sums and a binary search. A timing-only run of 10^4–10^5
devices (DESIGN.md §7) asks the same question for every device of a round; doing it in a Python
loop costs microseconds per device. Here all devices' arrays are concatenated with offsets and the
binary search runs for every query at once (a *segmented* bisection: each query searches only its
own device's slice, all queries advance one halving step per numpy operation).

The arithmetic replicates the scalar code operation for operation (same phase wrapping via
:func:`~simfed.timing.traces.wrap_time`, same bisect sides, same evaluation order), so packed and
scalar answers are equal, not just close. Cyclic repetition past the period, zero-rate segments and
all-zero series (finish time ``inf``) behave as in the scalar replay. Devices that replay a shared
library series (:class:`~simfed.timing.traces.SeriesRef`) share one copy of it: the packed form
keeps each distinct base series once and per device only an index, an offset and a scale.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from itertools import chain
from typing import Sequence

import numpy as np

from simfed.timing.traces import Availability, Population, Series, SeriesRef

__all__ = ["PackedSeries", "PackedAvailability", "PackedPopulation"]


def _segmented_bisect(arr: np.ndarray, lo: np.ndarray, hi: np.ndarray, x: np.ndarray, *, right: bool) -> np.ndarray:
    """``bisect.bisect_right``/``bisect_left`` of ``x[q]`` in ``arr[lo[q]:hi[q]]`` for every query ``q``.

    Returns absolute indices into ``arr`` (in ``[lo, hi]``). ``O(log max_len)`` numpy passes.
    """
    lo = lo.astype(np.int64, copy=True)
    hi = hi.astype(np.int64, copy=True)
    if arr.size == 0:
        return lo
    last = arr.size - 1
    active = lo < hi
    while active.any():
        mid = (lo + hi) >> 1
        probe = arr[np.minimum(mid, last)]
        go_right = (probe <= x) if right else (probe < x)
        lo = np.where(active & go_right, mid + 1, lo)
        hi = np.where(active & ~go_right, mid, hi)
        active = lo < hi
    return lo


def _checked_guess(arr: np.ndarray, lo: np.ndarray, hi: np.ndarray, x: np.ndarray, guess: np.ndarray, *, right: bool) -> np.ndarray:
    """:func:`_segmented_bisect` started from a guessed answer: exact whatever the guess.

    A guess ``j`` is the answer iff ``arr[j-1] <= x < arr[j]`` (``<`` / ``>=`` for bisect_left),
    with the slice ends standing in for the missing neighbours; two gathers check every guess and
    only the wrong ones are searched. On a regular grid (per-second throughput traces) the
    proportional guess is almost always right, which saves the ~8 passes of a 200-step search.
    """
    j = np.minimum(np.maximum(guess, lo), hi)
    if arr.size == 0:
        return j
    last = arr.size - 1
    left = arr[np.clip(j - 1, 0, last)]
    here = arr[np.minimum(j, last)]
    if right:
        ok = ((j == lo) | (left <= x)) & ((j == hi) | (here > x))
    else:
        ok = ((j == lo) | (left < x)) & ((j == hi) | (here >= x))
    bad = np.flatnonzero(~ok)
    if bad.size:
        j[bad] = _segmented_bisect(arr, lo[bad], hi[bad], x[bad], right=right)
    return j


def _wrap(t: np.ndarray, period_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised :func:`simfed.timing.traces.wrap_time` (periods as floats)."""
    with np.errstate(invalid="ignore"):
        k = np.floor(t / period_s)
        u = t - k * period_s
    below = u < 0.0
    above = u >= period_s
    u = np.where(below | above, 0.0, u)
    k = np.where(above, k + 1.0, k)
    return k, u


@dataclass(frozen=True, eq=False)
class PackedSeries:
    """Many series as arrays; query ``i`` refers to entry ``idx[i]`` of the input list.

    Each distinct base series (a :class:`Series` object, or the ``base`` of a :class:`SeriesRef`) is
    stored once, however many entries use it: a population of 10^6 devices that reference 300
    library series holds 300 series plus four numbers per device (base index, offset, scale and
    ``c0``, the base's cumulative amount at the offset). Entries that are plain series have offset 0
    and scale 1; if every entry is plain (``shifted`` False) the offset arithmetic is skipped.
    """

    times_s: np.ndarray  # all base breakpoints, base series after base series
    values: np.ndarray  # the rate on each breakpoint's segment
    cum: np.ndarray  # each base series' cumulative sums (n+1 entries per series), concatenated
    t_start: np.ndarray  # base b's breakpoints are times_s[t_start[b]:t_start[b] + n[b]]
    n: np.ndarray
    c_start: np.ndarray  # base b's cumulative sums are cum[c_start[b]:c_start[b] + n[b] + 1]
    base_period_s: np.ndarray  # per base series
    base_total: np.ndarray  # per base series: amount per period
    base: np.ndarray  # per entry: index of its base series
    offset_s: np.ndarray  # per entry (SeriesRef.offset_s; 0 for a plain series)
    scale: np.ndarray  # per entry (SeriesRef.scale; 1 for a plain series)
    c0: np.ndarray  # per entry: the base's cumulative amount at the offset
    period_s: np.ndarray  # per entry
    total_per_period: np.ndarray  # per entry: scale * the base's amount per period
    shifted: bool  # some entry has a non-zero offset or a scale other than 1

    @classmethod
    def from_series(cls, series: Sequence["Series | SeriesRef"]) -> "PackedSeries":
        if len(series) == 0:
            raise ValueError("PackedSeries needs at least one series")
        m = len(series)
        slot: dict[int, int] = {}  # id(base Series) -> base index
        bases: list[Series] = []
        base_of = np.empty(m, dtype=np.int64)
        offset = np.zeros(m, dtype=float)
        scale = np.ones(m, dtype=float)
        c0 = np.zeros(m, dtype=float)
        for i, s in enumerate(series):
            if type(s) is SeriesRef:
                b = s.base
                offset[i], scale[i], c0[i] = s.offset_s, s.scale, s._c0
            else:
                b = s
            k = slot.get(id(b))
            if k is None:
                k = slot[id(b)] = len(bases)
                bases.append(b)
            base_of[i] = k
        n = np.array([s.times_s.size for s in bases], dtype=np.int64)
        t_start = np.concatenate([[0], np.cumsum(n)[:-1]]).astype(np.int64)
        c_start = t_start + np.arange(len(bases), dtype=np.int64)
        # times_s/values are the float arrays the lists were made from (Series._build), so joining
        # them is exact and avoids converting 10^6 list items one series at a time; the cumulative
        # sums exist only as lists and are streamed into one array.
        times = np.concatenate([s.times_s for s in bases]).astype(float, copy=False)
        values = np.concatenate([s.values for s in bases]).astype(float, copy=False)
        cum = np.fromiter(chain.from_iterable(s._cum for s in bases), dtype=float, count=int(n.sum()) + len(bases))
        b_period = np.array([s.period_s for s in bases], dtype=float)
        b_total = cum[c_start + n]
        shifted = bool((offset != 0.0).any() or (scale != 1.0).any())
        return cls(times, values, cum, t_start, n, c_start, b_period, b_total, base_of, offset, scale, c0,
                   b_period[base_of], scale * b_total[base_of], shifted)

    def __len__(self) -> int:
        return int(self.base.size)

    def mean(self) -> np.ndarray:
        """Each entry's mean rate over its period."""
        return self.total_per_period / self.period_s

    # ---- one base series per query (the scalar Series arithmetic, operation for operation)

    def _segment(self, b: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Absolute index of the segment holding phase ``u`` (``bisect_right(times, u) - 1``)."""
        ts = self.t_start[b]
        n = self.n[b]
        with np.errstate(invalid="ignore", over="ignore"):
            # the segment u would fall in if the breakpoints were evenly spaced (checked, so only a hint)
            guess = ts + 1 + np.nan_to_num(np.floor(u / self.base_period_s[b] * n), nan=0.0, posinf=0.0, neginf=0.0).astype(np.int64)
        i = _checked_guess(self.times_s, ts, ts + n, u, guess, right=True) - 1
        return np.maximum(i, ts)  # u >= 0 == first time, so only a defensive clamp

    def _base_rate(self, b: np.ndarray, t: np.ndarray) -> np.ndarray:
        _, u = _wrap(t, self.base_period_s[b])
        return self.values[self._segment(b, u)]

    def _base_cumulative(self, b: np.ndarray, t: np.ndarray) -> np.ndarray:
        k, u = _wrap(t, self.base_period_s[b])
        i = self._segment(b, u)
        ci = self.c_start[b] + (i - self.t_start[b])
        out = k * self.base_total[b] + self.cum[ci] + self.values[i] * (u - self.times_s[i])
        return np.where(t <= 0, 0.0, out)

    def _base_finish(self, b: np.ndarray, t0: np.ndarray, amount: np.ndarray) -> np.ndarray:
        out = np.array(t0, dtype=float, copy=True)
        total_all = self.base_total[b]
        never = (amount > 0) & (total_all <= 0)
        out[never] = np.inf
        q = np.flatnonzero((amount > 0) & (total_all > 0))
        if q.size == 0:
            return out
        d = b[q]
        total = total_all[q]
        target = self._base_cumulative(d, t0[q]) + amount[q]
        k = np.floor(target / total)
        rem = target - k * total
        boundary = rem <= 0.0  # lands exactly on a period boundary: the earliest such time
        k = np.where(boundary, k - 1.0, k)
        rem = np.where(boundary | (rem > total), total, rem)
        cs = self.c_start[d]
        j = _segmented_bisect(self.cum, cs, cs + self.n[d] + 1, rem, right=False)
        i_local = np.minimum(j - cs - 1, self.n[d] - 1)
        i = self.t_start[d] + i_local
        out[q] = k * self.base_period_s[d] + self.times_s[i] + (rem - self.cum[cs + i_local]) / self.values[i]
        return out

    # ---- per entry: through the entry's offset and scale (SeriesRef's arithmetic)

    def rate_at(self, idx, t) -> np.ndarray:
        idx, t = np.broadcast_arrays(np.asarray(idx, dtype=np.int64), np.asarray(t, dtype=float))
        b = self.base[idx]
        if not self.shifted:
            return self._base_rate(b, t)
        return self.scale[idx] * self._base_rate(b, t + self.offset_s[idx])

    def cumulative(self, idx, t) -> np.ndarray:
        """Amount done from 0 to ``t`` by entry ``idx`` (cycling past the period)."""
        idx, t = np.broadcast_arrays(np.asarray(idx, dtype=np.int64), np.asarray(t, dtype=float))
        b = self.base[idx]
        if not self.shifted:
            return self._base_cumulative(b, t)
        out = self.scale[idx] * (self._base_cumulative(b, t + self.offset_s[idx]) - self.c0[idx])
        return np.where(t <= 0, 0.0, out)

    def amount(self, idx, t0, t1) -> np.ndarray:
        """Amount done between ``t0`` and ``t1`` (FLOPs or bytes), per query."""
        return self.cumulative(idx, t1) - self.cumulative(idx, t0)

    def finish_time(self, idx, t0, amount) -> np.ndarray:
        """When ``amount`` started at ``t0`` on entry ``idx`` completes; ``inf`` if never."""
        idx, t0, amount = np.broadcast_arrays(
            np.asarray(idx, dtype=np.int64), np.asarray(t0, dtype=float), np.asarray(amount, dtype=float)
        )
        b = self.base[idx]
        if not self.shifted:
            return self._base_finish(b, t0, amount)
        off = self.offset_s[idx]
        start = np.where(t0 > 0.0, t0, 0.0) + off
        out = self._base_finish(b, start, amount / self.scale[idx]) - off
        return np.where(amount > 0, out, t0)


@dataclass(frozen=True, eq=False)
class PackedAvailability:
    """Many :class:`Availability` concatenated, with vectorised ``is_online``/``next_online``/``offline_at``."""

    starts: np.ndarray
    ends: np.ndarray
    s_start: np.ndarray  # device d's intervals are starts[s_start[d]:s_start[d] + n[d]]
    n: np.ndarray
    period_s: np.ndarray  # 1.0 placeholder where always (masked)
    always: np.ndarray  # bool: never goes offline
    wraps: np.ndarray  # bool: the last interval ends at the period and the first starts at 0 (one session)

    @classmethod
    def from_availabilities(cls, avails: Sequence[Availability]) -> "PackedAvailability":
        if len(avails) == 0:
            raise ValueError("PackedAvailability needs at least one device")
        always = np.array([a.is_always for a in avails], dtype=bool)
        n = np.array([0 if a.is_always else len(a.starts) for a in avails], dtype=np.int64)
        s_start = np.concatenate([[0], np.cumsum(n)[:-1]]).astype(np.int64)
        starts = np.array([x for a in avails if not a.is_always for x in a.starts], dtype=float)
        ends = np.array([x for a in avails if not a.is_always for x in a.ends], dtype=float)
        period = np.array([1.0 if a.is_always else a.period_s for a in avails], dtype=float)
        wraps = np.array(
            [(not a.is_always) and a.ends[-1] == a.period_s and a.starts[0] == 0.0 for a in avails], dtype=bool
        )
        return cls(starts, ends, s_start, n, period, always, wraps)

    def __len__(self) -> int:
        return int(self.n.size)

    def _locate(self, idx: np.ndarray, t: np.ndarray):
        k, u = _wrap(t, self.period_s[idx])
        ss = self.s_start[idx]
        i = _segmented_bisect(self.starts, ss, ss + self.n[idx], u, right=True) - 1
        safe_i = np.clip(i, 0, max(self.ends.size - 1, 0))
        inside = (~self.always[idx]) & (i >= ss) & (u < (self.ends[safe_i] if self.ends.size else u))
        online = self.always[idx] | inside
        return k, u, i, online

    def is_online(self, idx, t) -> np.ndarray:
        idx, t = np.broadcast_arrays(np.asarray(idx, dtype=np.int64), np.asarray(t, dtype=float))
        return self._locate(idx, t)[3]

    def next_online(self, idx, t) -> np.ndarray:
        """The earliest time >= ``t`` at which each queried device is online."""
        idx, t = np.broadcast_arrays(np.asarray(idx, dtype=np.int64), np.asarray(t, dtype=float))
        k, _, i, online = self._locate(idx, t)
        out = np.array(t, dtype=float, copy=True)
        q = np.flatnonzero(~online)
        if q.size:
            d = idx[q]
            p = self.period_s[d]
            has_next = i[q] + 1 < self.s_start[d] + self.n[d]
            nxt = np.where(has_next, i[q] + 1, self.s_start[d])
            out[q] = np.where(has_next, k[q] * p, (k[q] + 1.0) * p) + self.starts[nxt]
        return out

    def offline_at(self, idx, t) -> np.ndarray:
        """When each queried device, online at ``t``, next goes offline (``t`` if offline, ``inf`` if never)."""
        idx, t = np.broadcast_arrays(np.asarray(idx, dtype=np.int64), np.asarray(t, dtype=float))
        k, _, i, online = self._locate(idx, t)
        out = np.array(t, dtype=float, copy=True)
        out[self.always[idx]] = np.inf
        q = np.flatnonzero(online & ~self.always[idx])
        if q.size:
            d = idx[q]
            p = self.period_s[d]
            first = self.s_start[d]
            at_last = i[q] == first + self.n[d] - 1
            wrap = at_last & self.wraps[d]
            end = np.where(wrap, (k[q] + 1.0) * p + self.ends[first], k[q] * p + self.ends[i[q]])
            out[q] = np.where(wrap & (self.n[d] == 1), np.inf, end)
        return out


@dataclass(frozen=True, eq=False)
class PackedPopulation:
    """A :class:`Population` as arrays: position ``i`` is ``population.devices[i]``."""

    device_ids: tuple[str, ...]
    device_types: np.ndarray  # str
    compute_flops: PackedSeries  # FLOP/s
    down_bps: PackedSeries  # bytes/s
    up_bps: PackedSeries  # bytes/s
    latency_s: np.ndarray
    ram_bytes: np.ndarray
    availability: PackedAvailability

    @classmethod
    def of(cls, population: Population) -> "PackedPopulation":
        """The packed form of ``population``, built once per population object and then cached.

        Packing 10^4 devices costs a few tenths of a second, more than several rounds of lookups;
        engines built on the same population (a sweep, a benchmark's repeats) share one packing.
        ``Population`` and its traces are frozen, so the cache can never go stale; it holds the
        population weakly and is dropped with it.
        """
        packed = _PACKED.get(population)
        if packed is None:
            packed = _PACKED[population] = cls.from_population(population)
        return packed

    @classmethod
    def from_population(cls, population: Population) -> "PackedPopulation":
        devs = population.devices
        return cls(
            device_ids=tuple(d.device_id for d in devs),
            device_types=np.array([d.device_type for d in devs], dtype=object),
            compute_flops=PackedSeries.from_series([d.compute_flops for d in devs]),
            down_bps=PackedSeries.from_series([d.down_bps for d in devs]),
            up_bps=PackedSeries.from_series([d.up_bps for d in devs]),
            latency_s=np.array([d.latency_s for d in devs], dtype=float),
            ram_bytes=np.array([d.ram_bytes for d in devs], dtype=float),
            availability=PackedAvailability.from_availabilities([d.availability for d in devs]),
        )

    def __len__(self) -> int:
        return len(self.device_ids)


_PACKED: "weakref.WeakKeyDictionary[Population, PackedPopulation]" = weakref.WeakKeyDictionary()
