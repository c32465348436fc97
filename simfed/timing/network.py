"""Flow-level shared network: concurrent transfers share link capacities max-min fairly.

The model
---------
This is the flow-level ("fluid") model that SimGrid calls CM02 (Casanova and Marchal, *A Network
Model for Simulation of Grid Application*, LIP research report 2002-40), reduced to its sharing
rule: no latency, no TCP window bound, no cross-traffic, equal weights. A transfer is a *flow*
that moves ``nbytes`` bytes across a set of *links*; at every instant the active flows' rates are
the **max-min fair allocation** (Bertsekas and Gallager, *Data Networks*, 2nd ed., section 6.5.2):

- each link ``l`` has a capacity ``c_l`` in bytes/s (``math.inf``: it constrains nothing);
- a flow ``f`` may also have a *cap* ``b_f(t)``: a :class:`~simfed.timing.traces.Series` of
  bytes/s over absolute simulated time (in simfed, the device's own trace rate, i.e. the device's
  private last-hop link);
- the rates ``x_f`` satisfy ``sum_{f crosses l} x_f <= c_l`` and ``0 <= x_f <= b_f(t)``, and no
  rate can be raised without lowering a rate that is no larger. They are what *progressive
  filling* gives: raise every unfrozen flow's rate together (the "water level"); a flow freezes
  when it reaches its cap, and all flows crossing a link freeze when that link is full.

The allocation is piecewise constant in time: it is recomputed when a flow starts, completes or
is aborted, and when an active flow's cap changes value (at the series' breakpoints). Between
those events every flow progresses linearly, so a flow's completion time is exact:
``clock + remaining / rate``. A flow of size 0 completes at its start; a flow whose cap is 0
progresses at rate 0 until its cap changes (one whose cap is 0 over its whole period never
completes and schedules no events); a flow that crosses no finite-capacity link and has no cap
would have an infinite rate, which is an error.

Duplex. Links carry no direction: a *half-duplex* access point (uploads and downloads share one
capacity; SimGrid's ``SHARED`` policy) is one link crossed by both directions' flows; a
*full-duplex* one (SimGrid's ``SPLITDUPLEX``) is two links, one per direction. The same holds for
the server's link.

Algorithm and cost
------------------
Only the flows connected (through shared finite-capacity links) to a link that an event touched
are re-solved. For those, each link's *saturation level* -- the water level ``lam`` at which
``sum_{unfrozen f on l} min(b_f, lam) = c_l - (rates already frozen on l)`` -- is found by
vectorised passes over the link's ``k`` flows (equal share, then flows capped below it keep their
cap and the rest share the remainder, until no further cap falls below; ``O(k)`` per pass, a few
passes in practice since each pass's gain shrinks by the number of flows still unfrozen; an
``O(k log k)`` sort after 16, as a safety net); the link with the lowest level freezes its
flows at that level (or their caps), and so on, one link at a time. Freezing only raises the
levels of the links that share flows with it, so their old levels are kept as lower bounds and
recomputed only when they come first (a heap), e.g. a server link shared by all APs is mostly
recomputed once per solve, not once per AP. Flows that cross no link and have only a
cap are not solved at all: their completion time is the cap series' own exact
:meth:`~simfed.timing.traces.Series.finish_time`. Events at one instant are batched: ``start`` and
``abort`` only mark links, and the solve runs once, when the next query (``next_time``,
``advance``, ``rate``, ``remaining``) or a later time needs it.

Rounding. A flow whose computed completion lies within ``TIME_RTOL * max(1, |t|)`` seconds
after ``t`` is reported as complete at ``t`` (ties that exact arithmetic would give, apart from
rounding), so no byte residue creates an extra event.

Cross-checked against SimGrid 3.32's CM02 model in ``tests/timing/test_network_simgrid.py``.
"""

from __future__ import annotations

import math
import operator
from bisect import bisect_right
from collections.abc import Hashable, Iterable, Sequence
from heapq import heappop, heappush
from typing import NamedTuple

import numpy as np

from simfed.timing.traces import Series, wrap_time

__all__ = ["TIME_RTOL", "FlowNetwork", "FlowSpec", "NetworkError", "simulate"]

TIME_RTOL = 1e-12
"""Relative time tolerance (of ``max(1, |t|)`` seconds) under which a completion counts as at ``t``."""

_INF = math.inf
_LEVEL_PASSES = 16  # water-level passes before the sorted form (see FlowNetwork._level)


class NetworkError(ValueError):
    """Bad input to the flow network: the message names the flow/link and what was wrong."""


def _tol(t: float) -> float:
    return TIME_RTOL * max(1.0, abs(t))


class _Flow:
    """An active flow's bookkeeping (its numbers live in :class:`FlowNetwork`'s slot arrays)."""

    __slots__ = ("key", "slot", "seq", "nbytes", "t0", "links", "pos", "cap", "k", "i", "cap_only")

    def __init__(self, key, slot, seq, nbytes, t0, links, cap) -> None:
        self.key = key
        self.slot = slot
        self.seq = seq
        self.nbytes = nbytes
        self.t0 = t0
        self.links = links  # finite-capacity links, sorted; () for zero-size and cap-only flows
        self.pos: list[int] = []  # position of the slot in each link's slot array
        self.cap = cap
        self.k = 0  # cap cursor: period number and segment index of the cap's current value
        self.i = 0
        self.cap_only = False


class FlowNetwork:
    """Max-min fair sharing of links among flows, advanced event by event (see the module docstring).

    Parameters
    ----------
    capacities:
        ``L`` link capacities in bytes/s, each ``> 0``; ``math.inf`` for a link that constrains
        nothing. Links are indexed ``0 .. L-1``.
    names:
        Optional ``L`` link names, used in error messages.

    Calls must come in non-decreasing simulated time (seconds); the clock starts at 0. ``start``
    and ``abort`` at a time ``t`` later than the clock require that no event is pending before
    ``t`` (``t <= next_time()``); ``advance(t)`` moves the clock and reports completions.

    Raises
    ------
    NetworkError
        (a ``ValueError``) on a non-positive or NaN capacity, a names list of the wrong length, and
        in the methods on bad arguments; ``KeyError`` for a key that is not an active flow.
    """

    def __init__(self, capacities: Sequence[float], names: Sequence[str] | None = None) -> None:
        caps = []
        for i, c in enumerate(capacities):
            try:
                c = float(c)
            except (TypeError, ValueError):
                raise NetworkError(f"link {i}: capacity {c!r} is not a number") from None
            if not c > 0:  # also rejects NaN
                raise NetworkError(f"link {i}: capacity must be > 0 bytes/s (math.inf for unconstrained), got {c!r}")
            caps.append(c)
        if names is None:
            names = [f"link{i}" for i in range(len(caps))]
        else:
            names = [str(n) for n in names]
            if len(names) != len(caps):
                raise NetworkError(f"{len(names)} link names for {len(caps)} capacities")
        self._names = names
        self._capacity = np.array(caps, dtype=float)
        self._finite = [math.isfinite(c) for c in caps]
        n_links = len(caps)
        self._lslots = [np.empty(16, dtype=np.int64) for _ in range(n_links)]
        self._lcount = [0] * n_links
        # _adj[l][m]: how many active flows cross both finite links l and m (entries at 0 are deleted)
        self._adj: list[dict[int, int]] = [{} for _ in range(n_links)]
        self._flows: dict[Hashable, _Flow] = {}
        self._by_slot: list[_Flow | None] = []
        self._free: list[int] = []
        self._hi = 0
        n = 64
        self._rem = np.zeros(n)  # bytes left at _tl (flows on links)
        self._tl = np.zeros(n)  # time of the last rate change
        self._rate = np.zeros(n)  # bytes/s since _tl
        self._ct = np.full(n, _INF)  # completion time at the current rate
        self._nc = np.full(n, _INF)  # next cap breakpoint (flows on links with a cap)
        self._bound = np.full(n, _INF)  # current cap value (inf: no cap)
        self._newrate = np.zeros(n)  # solver scratch
        self._frozen = np.zeros(n, dtype=bool)  # solver scratch
        self._clock = 0.0
        self._seq = 0
        self._dirty: set[int] = set()  # finite links whose component must be re-solved at the clock

    # ------------------------------------------------------------------ public API

    @property
    def now(self) -> float:
        """The clock (s): the time of the latest call."""
        return self._clock

    def __len__(self) -> int:
        """The number of active flows (started, not yet reported complete or aborted)."""
        return len(self._flows)

    def __contains__(self, key: object) -> bool:
        return key in self._flows

    def start(self, t: float, key: Hashable, nbytes: float, links: Sequence[int], cap: Series | None = None) -> None:
        """Start flow ``key`` at time ``t`` (s): ``nbytes`` bytes across the links ``links``.

        ``cap`` bounds the flow's rate by its value at each instant (bytes/s, periodic over
        absolute time). Links of infinite capacity are accepted and constrain nothing. A
        zero-size flow is reported complete by ``advance(t)``.

        Raises ``NetworkError`` for a time before the clock or after a pending event, a key that
        is already active or unhashable, a negative/NaN/infinite size, an unknown or repeated link
        index, a cap that is not a ``Series``, or a flow with no finite link and no cap.
        """
        try:
            hash(key)
        except TypeError:
            raise NetworkError(f"flow key {key!r} is not hashable") from None
        if key in self._flows:
            raise NetworkError(f"flow {key!r} is already active (started at t={self._flows[key].t0!r})")
        try:
            size = float(nbytes)
        except (TypeError, ValueError):
            raise NetworkError(f"flow {key!r}: size {nbytes!r} is not a number") from None
        if not (math.isfinite(size) and size >= 0):
            raise NetworkError(f"flow {key!r}: size must be a finite number of bytes >= 0, got {nbytes!r}")
        if cap is not None and not isinstance(cap, Series):
            raise NetworkError(
                f"flow {key!r}: cap must be a simfed.timing.traces.Series or None, got {type(cap).__name__}"
            )
        n_links = len(self._finite)
        seen: set[int] = set()
        for raw in links:
            try:
                li = operator.index(raw)
            except TypeError:
                raise NetworkError(f"flow {key!r}: link index {raw!r} is not an integer") from None
            if not 0 <= li < n_links:
                raise NetworkError(f"flow {key!r}: unknown link index {li} (the network has links 0..{n_links - 1})")
            if li in seen:
                raise NetworkError(f"flow {key!r}: link {li} ({self._names[li]!r}) listed twice")
            seen.add(li)
        eff = tuple(sorted(li for li in seen if self._finite[li]))
        if not eff and cap is None:
            raise NetworkError(
                f"flow {key!r} crosses no finite-capacity link and has no cap: its rate would be infinite"
            )
        t = self._move_clock(t, f"start of flow {key!r}")

        slot = self._alloc()
        f = _Flow(key, slot, self._seq, size, t, (), cap)
        self._seq += 1
        self._flows[key] = f
        self._by_slot[slot] = f
        self._rem[slot] = size
        self._tl[slot] = t
        self._rate[slot] = 0.0
        self._nc[slot] = _INF
        self._bound[slot] = _INF
        if size == 0.0:
            self._ct[slot] = t
        elif not eff:
            f.cap_only = True
            self._ct[slot] = cap.finish_time(t, size)
        else:
            self._ct[slot] = _INF
            if cap is not None and cap.total_per_period <= 0.0:
                self._bound[slot] = 0.0  # never moves: no cap events (they would never end)
            elif cap is not None:
                k, u = wrap_time(t, cap.period_s)
                f.k, f.i = k, bisect_right(cap._times, u) - 1  # the segment rate_at(t) reads
                self._bound[slot] = cap._vals[f.i]
                nxt = self._cap_next(f)
                while nxt <= t:  # k * period + times[i] rounded to <= t: that segment holds from t
                    self._cap_step(f)
                    self._bound[slot] = cap._vals[f.i]
                    nxt = self._cap_next(f)
                self._nc[slot] = nxt
            f.links = eff
            self._attach(f)
            self._dirty.update(eff)

    def abort(self, t: float, key: Hashable) -> None:
        """Remove active flow ``key`` at time ``t`` (s) (its device went offline); frees its share.

        A flow due to complete at ``t`` but not yet reported by ``advance`` is removed too.
        Raises ``KeyError`` for a key that is not active, ``NetworkError`` for a bad time.
        """
        if key not in self._flows:
            raise KeyError(f"abort: no active flow {key!r}")
        self._move_clock(t, f"abort of flow {key!r}")
        self._remove(self._flows[key])

    def next_time(self) -> float:
        """The earliest pending completion or cap change (s) at the current rates; ``inf`` if none."""
        self._flush()
        hi = self._hi
        if hi == 0:
            return _INF
        return float(min(self._ct[:hi].min(), self._nc[:hi].min()))

    def advance(self, t: float) -> list[Hashable]:
        """Move the clock to ``t`` (s), ``now <= t <= next_time()``; return the flows complete at ``t``.

        The keys come in start order. Cap changes at ``t`` take effect. Raises ``NetworkError``
        when ``t`` is before the clock or after the next pending event.
        """
        t = self._check_t(t, "advance")
        nt = self.next_time()
        if t > nt + _tol(nt):
            raise NetworkError(f"advance to t={t!r} skips a pending event at t={nt!r}")
        hi = self._hi
        done = np.flatnonzero(self._ct[:hi] <= t + _tol(t))
        changing = np.flatnonzero(self._nc[:hi] <= t)
        self._clock = t
        finished = sorted((self._by_slot[s] for s in done.tolist()), key=operator.attrgetter("seq"))
        for f in finished:
            self._remove(f)
        bound = self._bound
        for s in changing.tolist():
            f = self._by_slot[s]
            if f is None:  # completed just now
                continue
            old = bound[s]
            nxt = self._nc[s]
            while nxt <= t:
                self._cap_step(f)
                nxt = self._cap_next(f)
            new = f.cap._vals[f.i]
            self._nc[s] = nxt
            if new != old:
                bound[s] = new
                self._dirty.update(f.links)
        return [f.key for f in finished]

    def rate(self, key: Hashable) -> float:
        """The current rate (bytes/s) of active flow ``key``. Raises ``KeyError`` if not active."""
        f = self._get(key)
        self._flush()
        if f.nbytes == 0.0:
            return 0.0
        if f.cap_only:
            return f.cap.rate_at(self._clock) if self._clock < self._ct[f.slot] else 0.0
        return float(self._rate[f.slot])

    def remaining(self, key: Hashable) -> float:
        """Bytes that active flow ``key`` still has to move at the clock. Raises ``KeyError`` if not active."""
        f = self._get(key)
        self._flush()
        s = f.slot
        t = self._clock
        if self._ct[s] <= t + _tol(t):
            return 0.0
        if f.cap_only:
            return max(0.0, f.nbytes - f.cap.amount(f.t0, t))
        return max(0.0, float(self._rem[s] - self._rate[s] * (t - self._tl[s])))

    # ------------------------------------------------------------------ internals

    def _get(self, key: Hashable) -> _Flow:
        try:
            return self._flows[key]
        except KeyError:
            raise KeyError(f"no active flow {key!r}") from None

    def _check_t(self, t: float, what: str) -> float:
        try:
            t = float(t)
        except (TypeError, ValueError):
            raise NetworkError(f"{what}: time {t!r} is not a number") from None
        if not math.isfinite(t):
            raise NetworkError(f"{what}: time must be finite, got {t!r}")
        if t < self._clock:
            raise NetworkError(f"{what} at t={t!r} is before the clock t={self._clock!r}")
        return t

    def _move_clock(self, t: float, what: str) -> float:
        t = self._check_t(t, what)
        if t > self._clock:
            nt = self.next_time()  # solves what is pending at the old clock
            if t > nt + _tol(nt):
                raise NetworkError(f"{what} at t={t!r} skips a pending event at t={nt!r}: call advance({nt!r}) first")
            self._clock = t
        return t

    def _alloc(self) -> int:
        if self._free:
            return self._free.pop()
        s = self._hi
        self._hi += 1
        self._by_slot.append(None)
        if s >= self._rem.size:
            n = 2 * self._rem.size
            for name, fill in (("_rem", 0.0), ("_tl", 0.0), ("_rate", 0.0), ("_ct", _INF), ("_nc", _INF),
                               ("_bound", _INF), ("_newrate", 0.0)):
                old = getattr(self, name)
                new = np.full(n, fill)
                new[: old.size] = old
                setattr(self, name, new)
            self._frozen = np.zeros(n, dtype=bool)
        return s

    @staticmethod
    def _cap_next(f: _Flow) -> float:
        """Time of the breakpoint after the cap cursor's segment (the arithmetic of Series.next_change)."""
        cap = f.cap
        times = cap._times
        if len(times) == 1:
            return _INF
        i = f.i + 1
        if i == len(times):
            return (f.k + 1) * cap.period_s + times[0]
        return f.k * cap.period_s + times[i]

    @staticmethod
    def _cap_step(f: _Flow) -> None:
        f.i += 1
        if f.i == len(f.cap._times):
            f.i = 0
            f.k += 1

    def _attach(self, f: _Flow) -> None:
        s = f.slot
        for li in f.links:
            n = self._lcount[li]
            arr = self._lslots[li]
            if n == arr.size:
                grown = np.empty(2 * n, dtype=np.int64)
                grown[:n] = arr
                self._lslots[li] = arr = grown
            arr[n] = s
            f.pos.append(n)
            self._lcount[li] = n + 1
        for a in f.links:
            adj = self._adj[a]
            for b in f.links:
                if b != a:
                    adj[b] = adj.get(b, 0) + 1

    def _remove(self, f: _Flow) -> None:
        s = f.slot
        for li, p in zip(f.links, f.pos):
            arr = self._lslots[li]
            last = self._lcount[li] - 1
            moved = int(arr[last])
            arr[p] = moved
            self._lcount[li] = last
            if moved != s:
                mf = self._by_slot[moved]
                mf.pos[mf.links.index(li)] = p
            self._dirty.add(li)
        for a in f.links:
            adj = self._adj[a]
            for b in f.links:
                if b != a:
                    c = adj[b] - 1
                    if c:
                        adj[b] = c
                    else:
                        del adj[b]
        self._rem[s] = 0.0
        self._rate[s] = 0.0
        self._ct[s] = _INF
        self._nc[s] = _INF
        self._bound[s] = _INF
        self._by_slot[s] = None
        self._free.append(s)
        del self._flows[f.key]

    def _flush(self) -> None:
        """Re-solve, at the clock, the components of the links marked since the last solve."""
        if not self._dirty:
            return
        seeds = self._dirty
        self._dirty = set()
        comp = set(seeds)
        stack = list(seeds)
        adj = self._adj
        while stack:
            for m in adj[stack.pop()]:
                if m not in comp:
                    comp.add(m)
                    stack.append(m)
        links = [li for li in sorted(comp) if self._lcount[li]]
        if not links:
            return
        arrs = [self._lslots[li][: self._lcount[li]] for li in links]
        if len(arrs) == 1:
            slots = arrs[0]
        else:
            mark = np.zeros(self._hi, dtype=bool)
            for a in arrs:
                mark[a] = True
            slots = np.flatnonzero(mark)
        self._solve(links, arrs, slots)
        self._apply(slots)

    def _solve(self, links: list[int], arrs: list[np.ndarray], slots: np.ndarray) -> None:
        """Max-min rates of the flows ``slots`` on ``links`` into ``self._newrate`` (progressive filling).

        Links are taken in increasing order of their level from a heap. Freezing a link's flows
        (at rates <= its level) can only raise the level of a link sharing flows with it, so such
        a link's level is kept as a lower bound, marked stale, and recomputed only when it reaches
        the top of the heap.
        """
        bound = self._bound
        nr = self._newrate
        frozen = self._frozen
        frozen[slots] = False
        capacity = self._capacity
        adj = self._adj
        local = {li: j for j, li in enumerate(links)}
        n = len(links)
        level = [0.0] * n  # lower bounds until computed
        stale = [True] * n
        live = [True] * n
        heap = [(0.0, j) for j in range(n)]  # already a heap
        while heap:
            lam, j = heappop(heap)
            if not live[j] or lam != level[j]:
                continue  # done, or an outdated entry
            if stale[j]:
                stale[j] = False
                o = arrs[j]
                fz = frozen[o]
                if fz.any():
                    if fz.all():
                        live[j] = False
                        continue
                    residual = capacity[links[j]] - nr[o[fz]].sum()
                    u = o[~fz]
                else:
                    residual = capacity[links[j]]
                    u = o
                lam = self._level(bound[u], residual)
                if lam == _INF:  # never fills, and levels only rise
                    live[j] = False
                else:
                    level[j] = lam
                    heappush(heap, (lam, j))
                continue
            o = arrs[j]
            u = o[~frozen[o]]
            nr[u] = np.minimum(bound[u], lam)
            frozen[u] = True
            live[j] = False
            for m in adj[links[j]]:
                jm = local.get(m)
                if jm is not None:
                    stale[jm] = True
        left = slots[~frozen[slots]]
        nr[left] = bound[left]  # caps bind before any link fills (finite: checked at start)

    @staticmethod
    def _level(b: np.ndarray, residual: float) -> float:
        """The level ``lam`` with ``sum(min(b, lam)) == residual`` for caps ``b`` (any order); inf if none.

        Iterative water-filling: start from the equal share ``residual / m``; flows whose cap is
        below the level keep their cap and the others share what is left, which raises the level;
        repeat until no further cap falls below it (the level only rises, so this ends, normally
        within a few passes). After ``_LEVEL_PASSES`` passes it switches to the sorted form: with
        ``P[j]`` the sum of the ``j`` smallest caps, ``g[j] = P[j] + (m - j) * b[j]`` is the total at
        level ``b[j]``, and the first ``j`` with ``g[j] >= residual`` gives
        ``lam = (residual - P[j]) / (m - j)``.
        """
        if residual <= 0.0:
            return 0.0
        m = b.size
        lam = residual / m
        count = 0
        for _ in range(_LEVEL_PASSES):
            below = b < lam
            c = int(np.count_nonzero(below))
            if c == count:
                return float(lam)
            if c == m:  # every cap below the level: the caps' sum does not fill the link
                total = b.sum()
                return _INF if total < residual else float(b.max())
            count = c
            lam = (residual - b[below].sum()) / (m - c)
        b = np.sort(b)
        pre = np.empty(m)
        pre[0] = 0.0
        np.cumsum(b[:-1], out=pre[1:])
        g = pre + (m - np.arange(m)) * b
        ok = g >= residual
        j = int(ok.argmax())
        if not ok[j]:
            return _INF
        return float((residual - pre[j]) / (m - j))

    def _apply(self, slots: np.ndarray) -> None:
        """Make the solved rates current at the clock for the flows whose rate changed."""
        t = self._clock
        old = self._rate[slots]
        new = self._newrate[slots]
        changed = old != new
        if not changed.any():
            return
        s = slots[changed]
        old = old[changed]
        new = new[changed]
        rem = self._rem[s] - old * (t - self._tl[s])
        rem[self._ct[s] <= t + _tol(t)] = 0.0  # due now: no residue
        np.maximum(rem, 0.0, out=rem)
        with np.errstate(divide="ignore", invalid="ignore"):
            ct = t + rem / new
        ct[rem <= 0.0] = t
        self._rem[s] = rem
        self._tl[s] = t
        self._rate[s] = new
        self._ct[s] = ct


class FlowSpec(NamedTuple):
    """One transfer for :func:`simulate`: ``nbytes`` bytes over ``links`` from ``start_s`` (s)."""

    key: Hashable
    start_s: float
    nbytes: float
    links: Sequence[int]
    cap: Series | None = None


def simulate(
    flows: Iterable[FlowSpec | tuple], capacities: Sequence[float], names: Sequence[str] | None = None
) -> dict[Hashable, float]:
    """End time (s) of every flow with a known start time; ``inf`` for one that never completes.

    ``flows`` are :class:`FlowSpec` or tuples ``(key, start_s, nbytes, links[, cap])``; flows
    starting at the same time start in the given order. Raises ``NetworkError`` on a repeated
    key, a negative start time, and whatever :meth:`FlowNetwork.start` rejects.
    """
    specs = [f if isinstance(f, FlowSpec) else FlowSpec(*f) for f in flows]
    keys: set = set()
    for f in specs:
        if f.key in keys:
            raise NetworkError(f"simulate: flow key {f.key!r} appears twice")
        keys.add(f.key)
    order = sorted(range(len(specs)), key=lambda i: float(specs[i].start_s))
    net = FlowNetwork(capacities, names)
    ends: dict[Hashable, float] = {}
    i = 0
    while True:
        nt = net.next_time()
        ts = float(specs[order[i]].start_s) if i < len(order) else _INF
        if nt == _INF and ts == _INF:
            break
        if nt <= ts:
            for key in net.advance(nt):
                ends[key] = nt
        else:
            f = specs[order[i]]
            net.start(ts, f.key, f.nbytes, f.links, f.cap)
            i += 1
    return {f.key: ends.get(f.key, _INF) for f in specs}
