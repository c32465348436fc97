"""The SimPy engine: synchronous FL rounds replayed over device traces, in simulated time.

One server process runs the rounds; each selected device is one generator process that waits until
it is online, downloads its LoRA payload (latency, then bytes through its downlink series), checks
that its plan fits its RAM, computes its round's FLOPs through its compute series and uploads
(latency, then bytes through its uplink series). A device that goes offline before its upload ends
loses its work. The round closes when every selected device is done, or at the deadline (the rest
are late), or, with FedScale-style over-commitment (Lai et al., Oort, OSDI'21; FedScale, ICML'22),
when ``participants`` devices have finished (the rest are stragglers). FedSpine (arXiv 2501.02438)
measures waiting time as round end minus a device's end; :class:`RoundTiming` reports its mean.

The engine never sees training: a :class:`RoundDriver` (the server loop, or
:class:`FixedPlanDriver` for timing-only runs) turns device ids into :class:`~simfed.records.Plan`
objects and receives the :class:`~simfed.records.DeviceTiming` of each round; a cost model turns a
plan into work, bytes and memory (:class:`~simfed.timing.cost.PlanCost`).

Simulated time is exact: every phase end is computed by ``Series.finish_time`` from the exact start
and the engine schedules events at those absolute times (not ``now + delay``, which drifts by
round-off), so hand-computed event logs compare with ``==``. Ties at one instant are resolved by a
fixed rule (a device that finishes exactly at the deadline is on time; among devices finishing at
the same instant, population order decides), and each round's log is sorted by
(time, event kind, device position), so the vectorised path (:mod:`simfed.timing.fast`) can
reproduce it exactly.

Without transfer slots the engine looks up all selected devices' traces at once when a round starts
and its device processes only wait until those instants (:class:`Engine`, "batched"); with slots each
process looks up its own traces phase by phase. Both give identical results (docs/timing.md §6.1).
"""

from __future__ import annotations

import functools
import gc
import math
from dataclasses import dataclass, field
from heapq import heappush
from typing import TYPE_CHECKING, Mapping, Protocol, Sequence

import numpy as np
import simpy
from simpy.events import NORMAL

from simfed.records import Arm, DeviceTiming, Event, Outcome, Plan
from simfed.structure import next_sparsity
from simfed.timing.cost import PlanCost
from simfed.timing.traces import DeviceTrace, Population

if TYPE_CHECKING:
    from simfed.timing.packed import PackedPopulation

NAN = float("nan")
INF = math.inf

# Canonical order of events that share a time stamp (a device's phases, then the round's close).
EVENT_KINDS: tuple[str, ...] = (
    "round_start",
    "select",
    "online",
    "download_end",
    "oom",
    "compute_end",
    "upload_end",
    "offline",
    "late",
    "straggler",
    "unavailable",
    "round_end",
)
KIND_RANK: dict[str, int] = {k: i for i, k in enumerate(EVENT_KINDS)}
OUTCOME_EVENT = {Outcome.LATE: "late", Outcome.STRAGGLER: "straggler", Outcome.UNAVAILABLE: "unavailable"}

AVAILABILITY_MODES = ("interval", "end_instant")
_OK_CODE = tuple(Outcome).index(Outcome.OK)


class EngineError(RuntimeError):
    """A run that cannot proceed (e.g. a round that can never close)."""


class Costing(Protocol):
    """What the engine needs from a cost model: :class:`~simfed.timing.cost.CostModel` is one."""

    def plan_cost(self, plan: Plan) -> PlanCost: ...


class RoundDriver(Protocol):
    """The server side the engine talks to: plans in, timings out. It never sees traces."""

    def plans(self, round: int, now_s: float, device_ids: list[str]) -> list[Plan]: ...

    def round_done(self, round: int, timings: list[DeviceTiming], start_s: float, end_s: float) -> bool: ...


@dataclass(frozen=True)
class EngineConfig:
    """How rounds are run.

    ``participants`` K: None selects every device each round (they wait until online); an integer
    samples ``int(K * overcommit)`` devices among those online at the round start (seeded by
    ``(seed, round)``) and closes the round when K have finished. ``deadline_s`` is counted from the
    selection instant. ``max_concurrent_transfers`` is the number of server-side transfer slots
    (downloads and uploads share them; None = no contention). ``availability`` is ``"interval"``
    (a device must stay online through its whole round) or ``"end_instant"`` (FedScale: only the
    instant its round would end is checked; a device offline then is dropped at selection).
    """

    participants: int | None = None
    overcommit: float = 1.0
    deadline_s: float | None = None
    max_concurrent_transfers: int | None = None
    seed: int = 0
    availability: str = "interval"
    start_s: float = 0.0
    log_events: bool = True

    def __post_init__(self) -> None:
        if self.participants is not None and (int(self.participants) != self.participants or self.participants < 1):
            raise ValueError(f"EngineConfig.participants must be a positive integer or None, got {self.participants!r}")
        if not (math.isfinite(self.overcommit) and self.overcommit >= 1.0):
            raise ValueError(f"EngineConfig.overcommit must be a finite number >= 1, got {self.overcommit!r}")
        if self.deadline_s is not None and not (math.isfinite(self.deadline_s) and self.deadline_s > 0):
            raise ValueError(f"EngineConfig.deadline_s must be a positive number or None, got {self.deadline_s!r}")
        if self.max_concurrent_transfers is not None and (
            int(self.max_concurrent_transfers) != self.max_concurrent_transfers or self.max_concurrent_transfers < 1
        ):
            raise ValueError(
                f"EngineConfig.max_concurrent_transfers must be a positive integer or None, got {self.max_concurrent_transfers!r}"
            )
        if self.availability not in AVAILABILITY_MODES:
            raise ValueError(f"EngineConfig.availability must be one of {AVAILABILITY_MODES}, got {self.availability!r}")
        if self.availability == "end_instant" and self.max_concurrent_transfers is not None:
            raise ValueError("EngineConfig: availability='end_instant' (FedScale) has no transfer contention; unset max_concurrent_transfers")
        if not math.isfinite(self.start_s):
            raise ValueError(f"EngineConfig.start_s must be finite, got {self.start_s!r}")

    def n_to_select(self, n_online: int) -> int:
        """How many devices to sample among ``n_online`` (with over-commitment)."""
        assert self.participants is not None
        return min(n_online, int(self.participants * self.overcommit + 1e-9))

    def quota(self, n_selected: int) -> int:
        """Finished devices that close the round early (all of them without over-commitment)."""
        return n_selected if self.participants is None else min(self.participants, n_selected)


def choose(config: EngineConfig, round_: int, online_idx: np.ndarray) -> np.ndarray:
    """Positions (sorted) of the devices sampled among the online ones, seeded by (seed, round)."""
    n = config.n_to_select(len(online_idx))
    rng = np.random.default_rng([config.seed, round_])
    return np.sort(rng.choice(np.asarray(online_idx, dtype=np.int64), size=n, replace=False))


@dataclass(frozen=True)
class RoundTiming:
    """One round as the server saw it. ``reason`` is ``all``, ``deadline`` or ``quota``."""

    round: int
    start_s: float  # the round began (the previous round's end)
    select_s: float  # participants were selected (later than start_s only when none was online)
    end_s: float
    reason: str
    n_selected: int
    n_ok: int
    n_late: int
    n_straggler: int
    n_offline: int
    n_unavailable: int
    n_oom: int
    mean_waiting_s: float  # mean of (end_s - device end) over the devices whose update was accepted

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


# Codes of the event log's columns (``EventLog``): one small integer per kind, in canonical order.
KIND_CODE: dict[str, int] = KIND_RANK
_SELECT = KIND_RANK["select"]
_KIND_BITS = 4  # a packed log key is (position + 1) << 4 | kind code
assert len(EVENT_KINDS) <= 1 << _KIND_BITS


class EventLog:
    """The event log as columns, one chunk per round; :class:`~simfed.records.Event` objects on demand.

    Building a quarter of a million ``Event`` objects (and sorting them) cost the engine as much as
    SimPy itself at 10^4 devices; a run that writes its log to a table, or never reads it, needs
    none. So the engine records each event as a (time, packed key) pair into a flat list while it
    runs, and the selection instant once per round (every selected device has a ``select`` event
    then); :meth:`columns` and :meth:`events` sort and expand on first use. Within a round the
    canonical order is (time, kind, population position), exactly that of :data:`EVENT_KINDS`.
    """

    def __init__(self, device_ids: Sequence[str]) -> None:
        self.device_ids = device_ids
        self._chunks: list[tuple] = []
        self._n = 0
        self._columns: dict[str, np.ndarray] | None = None
        self._events: list[Event] | None = None

    def add_round(
        self,
        round_: int,
        select_s: float,
        selected: np.ndarray,
        arms: Sequence[Arm] | None,
        time_s: np.ndarray,
        kind: np.ndarray,
        position: np.ndarray,
        details: Mapping[tuple[int, int], str],
    ) -> None:
        """One round's events: ``selected`` positions were selected at ``select_s`` playing ``arms``
        (aligned; None gives empty details); the other events are rows of ``time_s``/``kind``/
        ``position`` (-1 for server events); ``details`` maps (kind code, position) to a detail."""
        self._chunks.append((round_, float(select_s), np.asarray(selected, dtype=np.int64), arms, time_s, kind, position, details))
        self._n += len(selected) + len(time_s)
        self._columns = self._events = None

    def add_round_flat(
        self, round_: int, select_s: float, selected: np.ndarray, arms, flat: list, details: Mapping[tuple[int, int], str]
    ) -> None:
        """:meth:`add_round` from the engine's flat ``[time, key, time, key, ...]`` list."""
        a = np.array(flat, dtype=float).reshape(-1, 2)
        key = a[:, 1].astype(np.int64)
        self.add_round(round_, select_s, selected, arms, a[:, 0], key & ((1 << _KIND_BITS) - 1), (key >> _KIND_BITS) - 1, details)

    def __len__(self) -> int:
        return self._n

    def _sorted_chunks(self):
        for r, t_sel, selected, arms, t, kind, pos, details in self._chunks:
            n_sel = len(selected)
            tt = np.concatenate([np.full(n_sel, t_sel), np.asarray(t, dtype=float)])
            kk = np.concatenate([np.full(n_sel, _SELECT, dtype=np.int64), np.asarray(kind, dtype=np.int64)])
            pp = np.concatenate([selected, np.asarray(pos, dtype=np.int64)])
            order = np.lexsort((pp, kk, tt))
            yield r, selected, arms, tt[order], kk[order], pp[order], details

    def columns(self) -> dict[str, np.ndarray]:
        """The whole log as sorted arrays: ``time_s``, ``round``, ``position`` (-1: server), ``kind``
        (a code into :data:`EVENT_KINDS`). Details are only in :meth:`events`."""
        if self._columns is None:
            parts = [(t, np.full(len(t), r, dtype=np.int64), p, k) for r, _, _, t, k, p, _ in self._sorted_chunks()]
            if parts:
                cols = [np.concatenate(c) for c in zip(*parts)]
            else:
                cols = [np.empty(0), np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)]
            self._columns = dict(zip(("time_s", "round", "position", "kind"), cols))
        return self._columns

    def events(self) -> list[Event]:
        """The canonical log as :class:`~simfed.records.Event` records (built once, then cached)."""
        if self._events is None:
            ids = self.device_ids
            out: list[Event] = []
            gc_was_on = gc.isenabled()
            gc.disable()  # a quarter of a million records and no cycles: the collector's passes only cost time
            for r, selected, arms, t, k, p, details in self._sorted_chunks():
                sel_detail = dict(zip(selected.tolist(), map(arm_detail, arms))) if arms is not None else {}
                for ti, ki, pi in zip(t.tolist(), k.tolist(), p.tolist()):
                    if ki == _SELECT:
                        detail = sel_detail.get(pi, "")
                    else:
                        detail = details.get((ki, pi), "") if details else ""
                    out.append(Event(ti, r, ids[pi] if pi >= 0 else "", EVENT_KINDS[ki], detail))
            if gc_was_on:
                gc.enable()
            self._events = out
        return self._events


class EngineResult:
    """What a run returns: device timings, round timings and (when logged) the event log.

    ``events`` is built from the columnar :class:`EventLog` on first access (see there why);
    ``timings`` likewise from each round's timing columns where the run kept columns
    (:class:`~simfed.timing.fast.TimingRows`): the list is made on first access and cached.
    """

    def __init__(self, log: EventLog | None = None) -> None:
        self.rounds: list[RoundTiming] = []
        self.columns: list = []  # FastEngine(columns=True): one TimingColumns per round
        self.log = log
        self._timing_parts: list[Sequence[DeviceTiming]] = []
        self._timings: list[DeviceTiming] | None = None
        self._events: list[Event] | None = None

    def add_timings(self, part: Sequence[DeviceTiming]) -> None:
        """Append one round's device timings (a list, or a sequence that builds its records lazily)."""
        self._timing_parts.append(part)
        self._timings = None

    @property
    def timings(self) -> list[DeviceTiming]:
        if self._timings is None:
            out: list[DeviceTiming] = []
            for part in self._timing_parts:
                out.extend(part)
            self._timings = out
            self._timing_parts = [out]
        return self._timings

    @timings.setter
    def timings(self, value: list[DeviceTiming]) -> None:
        self._timings = list(value)
        self._timing_parts = [self._timings]

    @property
    def events(self) -> list[Event]:
        if self._events is None:
            self._events = self.log.events() if self.log is not None else []
        return self._events

    @events.setter
    def events(self, value: list[Event]) -> None:
        self._events = list(value)

    def __repr__(self) -> str:
        n_timings = sum(len(p) for p in self._timing_parts)
        return f"EngineResult({len(self.rounds)} rounds, {n_timings} device timings, {len(self.log or ())} events)"


def waiting_s(timing: DeviceTiming, round_end_s: float) -> float:
    """A device's idle time in a synchronous round: the round's end minus its own end."""
    return round_end_s - timing.end_s


def round_timing(
    round_: int, start_s: float, select_s: float, end_s: float, reason: str, timings: Sequence[DeviceTiming]
) -> RoundTiming:
    counts = {o: 0 for o in Outcome}
    waits = []
    for t in timings:
        counts[t.outcome] += 1
        if t.outcome is Outcome.OK:
            waits.append(end_s - t.end_s)
    wait_total = math.fsum(waits)  # exactly rounded: the same whatever the summation order
    n_ok = counts[Outcome.OK]
    return RoundTiming(
        round=round_,
        start_s=start_s,
        select_s=select_s,
        end_s=end_s,
        reason=reason,
        n_selected=len(timings),
        n_ok=n_ok,
        n_late=counts[Outcome.LATE],
        n_straggler=counts[Outcome.STRAGGLER],
        n_offline=counts[Outcome.OFFLINE],
        n_unavailable=counts[Outcome.UNAVAILABLE],
        n_oom=counts[Outcome.OOM],
        mean_waiting_s=wait_total / n_ok if n_ok else NAN,
    )


@functools.lru_cache(maxsize=4096)
def arm_detail(arm: Arm) -> str:
    """The ``select`` event's detail (cached: a run plays few distinct arms)."""
    return f"p={arm.p:g} r={arm.r}"


def sorted_events(log: list[tuple]) -> list[Event]:
    """Turn (time, kind rank, position, round, device_id, kind, detail) tuples into the canonical log."""
    # (time, kind rank, position) is unique within a round (a device logs each kind at most once),
    # so plain tuple order is the canonical order and never compares the trailing strings.
    log.sort()
    return [Event(e[0], e[3], e[4], e[5], e[6]) for e in log]


def check_plans(plans: list[Plan], round_: int, ids: list[str]) -> None:
    if len(plans) != len(ids):
        raise ValueError(f"driver.plans for round {round_}: {len(plans)} plans for {len(ids)} devices")
    for i, (p, d) in enumerate(zip(plans, ids)):
        if p.device_id != d or p.round != round_:
            raise ValueError(
                f"driver.plans for round {round_}: plan {i} is for device {p.device_id!r} round {p.round}, expected {d!r} round {round_}"
            )


_new_event = object.__new__


class _Env(simpy.Environment):
    """A SimPy environment that can schedule an event at an exact absolute time."""

    def at(self, time_s: float) -> simpy.Event:
        # Same as Timeout(delay=time_s - now) but without the round-off of now + (time_s - now).
        # Event.__init__ inlined (as simpy's own Timeout does): this runs for every phase of every device.
        ev = _new_event(simpy.Event)
        ev.env = self
        ev.callbacks = []
        ev._ok = True
        ev._value = None
        heappush(self._queue, (time_s, NORMAL, next(self._eid), ev))
        return ev

    def until(self, time_s: float) -> simpy.Event:
        """An event at ``time_s``, or one that never fires when ``time_s`` is infinite."""
        return self.at(time_s) if time_s < INF else simpy.Event(self)


class _Dev:
    """One device's state in one round (written by its process, read by the server at close)."""

    __slots__ = ("pos", "key", "trace", "plan", "cost", "start", "ready", "dl_end", "c_end", "u_end", "term", "outcome", "proc")

    def __init__(self, pos: int, trace: DeviceTrace, plan: Plan, cost: PlanCost, start: float) -> None:
        self.pos, self.trace, self.plan, self.cost, self.start = pos, trace, plan, cost, start
        self.key = (pos + 1) << _KIND_BITS  # the log key of this device's events, before the kind code
        self.ready = self.dl_end = self.c_end = self.u_end = NAN
        self.term = NAN  # when its participation ended by itself (finished, OOM, dropped)
        self.outcome: Outcome | None = None  # OK here means "finished"; the close may make it a straggler
        self.proc = None


class _Round:
    """Counters of one round, the events that close it, and its event log (flat ``[time, key, ...]``)."""

    __slots__ = ("n", "quota", "done", "finished", "all_done", "quota_hit", "log", "details", "r", "closed")

    def __init__(self, env: _Env, r: int, n: int, quota: int, log: list | None) -> None:
        self.r, self.n, self.quota = r, n, quota
        self.done = self.finished = 0
        self.all_done = simpy.Event(env)
        self.quota_hit = simpy.Event(env)
        self.log = log
        self.details: dict[tuple[int, int], str] = {}
        self.closed = False

    def terminal(self, finished: bool) -> None:
        if self.closed:
            return
        self.done += 1
        if finished:
            self.finished += 1
            if self.finished == self.quota and not self.quota_hit.triggered:
                self.quota_hit.succeed()
        if self.done == self.n and not self.all_done.triggered:
            self.all_done.succeed()


_ONLINE, _DL_END, _OOM, _C_END, _U_END, _OFFLINE = (KIND_RANK[k] for k in ("online", "download_end", "oom", "compute_end", "upload_end", "offline"))
_ROUND_START, _ROUND_END = KIND_RANK["round_start"], KIND_RANK["round_end"]
_SERVER_KEY = 0  # position -1


def _waits(tl) -> np.ndarray:
    """The instants each device process of the batched engine waits for, one row per device.

    Columns: online, download end, compute end, upload end, exactly the waits of the scalar
    process (:meth:`Engine._device`): a phase ending after the device's session ends is replaced by
    the drop at ``off`` and nothing follows; a phase of zero length, or one not reached (after an
    out-of-memory stop, a drop or a phase that never ends), is NaN; FedScale's ``end_instant`` mode
    drops a device at its selection (no wait at all) when it would be offline at its end instant.
    """
    nan = np.nan
    ready, off, dl, ce, ue = tl.ready, tl.off, tl.dl, tl.ce, tl.ue
    reach_c = ~tl.drop_dl & ~tl.oom & (dl < INF)
    reach_u = reach_c & ~tl.drop_c & (ce < INF)
    w = np.empty((len(ready), 4))
    w[:, 0] = np.where(ready > tl.start, ready, nan)
    w[:, 1] = np.where(tl.drop_dl, off, np.where(dl > ready, dl, nan))
    w[:, 2] = np.where(reach_c, np.where(tl.drop_c, off, np.where(ce > dl, ce, nan)), nan)
    w[:, 3] = np.where(reach_u, np.where(tl.drop_u, off, np.where(ue > ce, ue, nan)), nan)
    w[tl.gone_now] = nan
    return w


class Engine:
    """Runs synchronous rounds over a population with SimPy (see the module docstring).

    Two ways to look up the traces, with identical results:

    - *batched* (the default when there are no transfer slots): nothing couples two devices, so at
      the selection instant every selected device's phase ends are computed at once from the packed
      population (:func:`simfed.timing.fast.device_timelines`; :meth:`PackedPopulation.of
      <simfed.timing.packed.PackedPopulation.of>` packs a population once and caches it); each
      device process then only waits, in simulated time, until each precomputed absolute instant,
      and reports when it is done. SimPy still decides when the round closes (all done, K-th
      finish, deadline); what each device had reached by then follows from its timeline and the
      close instant (:func:`~simfed.timing.fast.close_round`), the log and the device timings are
      kept as columns and become records on first access.
    - *scalar* (with transfer slots, or ``batched=False``): each device process looks up its own
      series at each phase, because with contention a phase's start depends on the other devices.

    Per device-round the batched way spends a few microseconds beyond SimPy's own event handling;
    the scalar way about 30 (trace lookups over 10^4 scattered objects, records); see
    docs/timing.md §6.
    """

    def __init__(
        self,
        population: Population,
        cost: Costing,
        config: EngineConfig,
        driver: RoundDriver,
        *,
        batched: bool = True,
        packed: "PackedPopulation | None" = None,
    ) -> None:
        if len(population) == 0:
            raise ValueError("Engine: the population has no devices")
        ids = [d.device_id for d in population.devices]
        if len(set(ids)) != len(ids):
            raise ValueError("Engine: device ids in the population are not unique")
        self.population = population
        self.devices = population.devices
        self.device_ids = ids
        self.cost = cost
        self.config = config
        self.driver = driver
        self.batched = bool(batched) and config.max_concurrent_transfers is None
        if packed is not None and tuple(packed.device_ids) != tuple(ids):
            raise ValueError("Engine: `packed` is not the packed form of this population (device ids differ)")
        self._packed = packed  # PackedPopulation, or None: PackedPopulation.of(population) when first needed

    @property
    def packed(self) -> "PackedPopulation":
        """The packed population of the batched lookups (built on first use, cached per population)."""
        if self._packed is None:
            from simfed.timing.packed import PackedPopulation

            self._packed = PackedPopulation.of(self.population)
        return self._packed

    # ------------------------------------------------------------------ public
    def run(self, max_rounds: int) -> EngineResult:
        """Run up to ``max_rounds`` rounds (fewer if the driver's ``round_done`` returns False)."""
        if max_rounds < 0:
            raise ValueError(f"max_rounds must be >= 0, got {max_rounds}")
        env = _Env(initial_time=self.config.start_s)
        result = EngineResult(EventLog(self.device_ids) if self.config.log_events else None)
        state: dict = {}
        if self.batched:
            self.packed  # noqa: B018 -- pack (or fetch the cached packing) before the clock-sensitive loop
        proc = env.process(self._server(env, max_rounds, result, state))
        # The run allocates millions of short-lived objects and no lasting reference cycles (a
        # device process ends, freeing its frame, by the close of its round): the cyclic garbage
        # collector's passes would only cost time, so it is paused for the run.
        gc_was_on = gc.isenabled()
        gc.disable()
        try:
            env.run(until=proc)
        except RuntimeError as exc:
            if proc.triggered or isinstance(exc, EngineError):
                raise
            rs: _Round = state["round"]
            raise EngineError(
                f"round {rs.r} can never close: {rs.n - rs.done} device(s) never finish "
                "(zero throughput or never online) and no deadline is set"
            ) from None
        finally:
            if gc_was_on:
                gc.enable()
        return result

    # ------------------------------------------------------------------ server
    def _select(self, r: int, t: float) -> tuple[float, np.ndarray]:
        cfg = self.config
        n = len(self.devices)
        if cfg.participants is None:
            return t, np.arange(n)
        online = [i for i, d in enumerate(self.devices) if d.availability.is_online(t)]
        if not online:
            t = min(d.availability.next_online(t) for d in self.devices)
            online = [i for i, d in enumerate(self.devices) if d.availability.is_online(t)]
        return t, choose(cfg, r, np.asarray(online, dtype=np.int64))

    def _server(self, env: _Env, max_rounds: int, result: EngineResult, state: dict):
        round_ = self._round_batched if self.batched else self._round_scalar
        t = self.config.start_s
        for r in range(max_rounds):
            t_end, go_on = yield from round_(env, r, t, result, state)
            t = t_end
            if not go_on:
                break

    def _wait_for_close(self, env: _Env, rs: "_Round", t_sel: float):
        """Until the round closes: every device done, the quota of finishes, or the deadline.

        Returns (close instant, reason). Every event of the closing instant happens first.
        """
        closers = [rs.all_done, rs.quota_hit]
        if self.config.deadline_s is not None:
            closers.append(env.at(t_sel + self.config.deadline_s))
        yield env.any_of(closers)
        yield env.at(env.now)  # let every event of this instant happen before closing
        rs.closed = True
        reason = "all" if rs.all_done.triggered else "quota" if rs.quota_hit.triggered else "deadline"
        return env.now, reason

    def _round_batched(self, env: _Env, r: int, t: float, result: EngineResult, state: dict):
        """One round with the traces looked up for all selected devices at once (no transfer slots)."""
        from simfed.timing import fast

        cfg, pk = self.config, self.packed
        t_sel, chosen = fast.select_positions(cfg, pk, r, t)
        if t_sel > t:
            yield env.at(t_sel)
        ids_all = self.device_ids
        ids = [ids_all[i] for i in chosen.tolist()]
        plans = self.driver.plans(r, t_sel, ids)
        check_plans(plans, r, ids)
        tl = fast.device_timelines(pk, cfg.availability, chosen, t_sel, *fast.cost_columns(list(map(self.cost.plan_cost, plans))))
        quota = cfg.quota(len(ids))
        rs = _Round(env, r, len(ids), quota, None)
        state["round"] = rs
        process, device = env.process, self._device_waits
        procs = [process(device(env, w, rs, f)) for w, f in zip(_waits(tl).tolist(), tl.fin.tolist())]
        t_end, reason = yield from self._wait_for_close(env, rs, t_sel)
        for k in np.flatnonzero(tl.term > t_end).tolist():  # still running: its work is discarded
            procs[k].interrupt("round closed")
        cols = fast.close_round(r, tl, t_end, reason, quota)
        rt = fast.round_timing_columns(r, t, t_sel, t_end, reason, cols)
        if result.log is not None:
            fast.log_round(result.log, pk.ram_bytes, r, t, t_sel, reason, rt, cols, [p.arm for p in plans])
        timings = fast.TimingRows(cols, ids_all)
        result.add_timings(timings)
        result.rounds.append(rt)
        return t_end, self.driver.round_done(r, timings, rt.start_s, t_end)

    def _round_scalar(self, env: _Env, r: int, t: float, result: EngineResult, state: dict):
        """One round with per-device, per-phase trace lookups (needed with transfer slots)."""
        cfg = self.config
        slots = state.get("slots")
        if slots is None and cfg.max_concurrent_transfers:
            slots = state["slots"] = simpy.Resource(env, capacity=cfg.max_concurrent_transfers)
        device_proc = self._device_end_instant if cfg.availability == "end_instant" else self._device
        devices, ids_all, plan_cost, process = self.devices, self.device_ids, self.cost.plan_cost, env.process
        log: list | None = [t, _ROUND_START] if result.log is not None else None
        t_sel, chosen = self._select(r, t)
        if t_sel > t:
            yield env.at(t_sel)
        chosen_l = chosen.tolist()
        ids = [ids_all[i] for i in chosen_l]
        plans = self.driver.plans(r, t_sel, ids)
        check_plans(plans, r, ids)
        rs = _Round(env, r, len(ids), cfg.quota(len(ids)), log)
        state["round"] = rs
        devs = []
        for i, plan in zip(chosen_l, plans):
            d = _Dev(i, devices[i], plan, plan_cost(plan), t_sel)
            d.proc = process(device_proc(env, d, rs, slots))
            devs.append(d)
        t_end, reason = yield from self._wait_for_close(env, rs, t_sel)
        timings = self._close(devs, rs, r, t_end, reason, log)
        rt = round_timing(r, t, t_sel, t_end, reason, timings)
        if log is not None:
            log += (t_end, _ROUND_END)
            rs.details[(_ROUND_END, -1)] = f"reason={reason} ok={rt.n_ok}/{rt.n_selected}"
            result.log.add_round_flat(r, t_sel, chosen, [p.arm for p in plans], log, rs.details)
        result.add_timings(timings)
        result.rounds.append(rt)
        return t_end, self.driver.round_done(r, timings, rt.start_s, t_end)

    def _close(self, devs: list[_Dev], rs: _Round, r: int, t_end: float, reason: str, log: list | None) -> list[DeviceTiming]:
        if rs.finished > rs.quota:  # over-commitment: finishers beyond the first K are stragglers
            finishers = sorted((d for d in devs if d.outcome is Outcome.OK), key=lambda d: (d.u_end, d.pos))
            for d in finishers[rs.quota :]:
                d.outcome = Outcome.STRAGGLER
                if log is not None:
                    log += (t_end, d.key | KIND_RANK["straggler"])
        timings = []
        append = timings.append
        for d in devs:
            out = d.outcome
            end = d.term
            if out is None:
                end = t_end
                if d.ready != d.ready:  # nan: never came online
                    out = Outcome.UNAVAILABLE
                else:
                    out = Outcome.LATE if reason == "deadline" else Outcome.STRAGGLER
                d.outcome = out
                if log is not None:
                    log += (t_end, d.key | KIND_RANK[OUTCOME_EVENT[out]])
                d.proc.interrupt("round closed")
            elif out is Outcome.STRAGGLER:
                end = t_end
            pc = d.cost
            append(
                DeviceTiming(
                    r, d.trace.device_id, out, d.start, d.ready, d.dl_end, d.c_end, d.u_end, end,
                    pc.flops, pc.down_bytes, pc.up_bytes, pc.memory_bytes,
                )
            )
        return timings

    # ------------------------------------------------------------------ devices
    @staticmethod
    def _device_waits(env: _Env, waits: list, rs: "_Round", finished: bool):
        """One device's round when its phase ends are known in advance (the batched lookups).

        ``waits`` are the absolute instants at which its phases end, in order (NaN: a phase that
        takes no time, so there is nothing to wait for; ``inf``: one that never ends); the device is
        done after the last one. The round's close interrupts it if it is still waiting then.
        """
        at = env.at
        try:
            for t in waits:
                if t < INF:
                    yield at(t)
                elif t == INF:
                    yield simpy.Event(env)  # never fires: only the round's close ends this wait
        except simpy.Interrupt:
            return
        rs.terminal(finished)

    def _device(self, env: _Env, d: _Dev, rs: _Round, slots):
        """One device's round: online, download, (OOM check), compute, upload; drop when offline.

        The hot loop of a timing run: trace lookups go straight to the device's series, and a
        logged event is two appends (time, key) to the round's flat log.
        """
        tr = d.trace
        pc = d.cost
        log = rs.log
        at = env.at
        key = d.key
        try:
            start = d.start
            ready, off = tr.availability.session(start)
            if ready > start:
                yield at(ready)
            d.ready = ready
            if log is not None:
                log += (ready, key | _ONLINE)
            # download
            if slots is None:
                t = tr.down_bps.finish_time(ready + tr.latency_s, pc.down_bytes)
                if t > off:
                    yield at(off)
                    return self._drop(d, rs, off)
                if t > ready:
                    yield at(t) if t < INF else simpy.Event(env)
            else:
                t = yield from self._transfer(env, slots, tr.down_bps, tr.latency_s, pc.down_bytes, off)
                if t is None:
                    return self._drop(d, rs, off)
            d.dl_end = t
            if log is not None:
                log += (t, key | _DL_END)
            if pc.memory_bytes > tr.ram_bytes:
                d.term, d.outcome = t, Outcome.OOM
                if log is not None:
                    log += (t, key | _OOM)
                    rs.details[(_OOM, d.pos)] = f"need={pc.memory_bytes:.0f}B ram={tr.ram_bytes:.0f}B"
                rs.terminal(False)
                return
            # compute
            t0 = t
            t = tr.compute_flops.finish_time(t0, pc.flops)
            if t > off:
                yield at(off)
                return self._drop(d, rs, off)
            if t > t0:
                yield at(t) if t < INF else simpy.Event(env)
            d.c_end = t
            if log is not None:
                log += (t, key | _C_END)
            # upload
            if slots is None:
                t0 = t
                t = tr.up_bps.finish_time(t0 + tr.latency_s, pc.up_bytes)
                if t > off:
                    yield at(off)
                    return self._drop(d, rs, off)
                if t > t0:
                    yield at(t) if t < INF else simpy.Event(env)
            else:
                t = yield from self._transfer(env, slots, tr.up_bps, tr.latency_s, pc.up_bytes, off)
                if t is None:
                    return self._drop(d, rs, off)
            d.u_end = d.term = t
            d.outcome = Outcome.OK
            if log is not None:
                log += (t, key | _U_END)
            rs.terminal(True)
        except simpy.Interrupt:
            return

    def _drop(self, d: _Dev, rs: _Round, off: float) -> None:
        d.term, d.outcome = off, Outcome.OFFLINE
        if rs.log is not None:
            rs.log += (off, d.key | _OFFLINE)
        rs.terminal(False)

    def _transfer(self, env: _Env, slots: simpy.Resource, series, latency_s: float, nbytes: float, off: float):
        """Take a server transfer slot, then move ``nbytes``; the end time, or None if dropped."""
        req = slots.request()
        try:
            if not req.triggered:
                if off < INF:
                    yield req | env.at(off)
                else:
                    yield req
            if not req.triggered:
                return None  # went offline while queued for a slot
            start = env.now
            end = series.finish_time(start + latency_s, nbytes)
            if end > off:
                yield env.at(off)
                return None
            if end > start:
                yield env.until(end)
            return end
        finally:
            if req.triggered:
                slots.release(req)
            else:
                req.cancel()

    def _device_end_instant(self, env: _Env, d: _Dev, rs: _Round, slots=None):
        """FedScale's availability rule: phases run back to back; only the end instant is checked."""
        tr, pc, log, key = d.trace, d.cost, rs.log, d.key
        try:
            d.ready = t = d.start
            if log is not None:
                log += (t, key | _ONLINE)
            dl = tr.down_bps.finish_time(t + tr.latency_s, pc.down_bytes)
            oom = pc.memory_bytes > tr.ram_bytes
            if not oom:
                ce = tr.compute_flops.finish_time(dl, pc.flops) if dl < INF else INF
                ue = tr.up_bps.finish_time(ce + tr.latency_s, pc.up_bytes) if ce < INF else INF
                if ue < INF and not tr.availability.is_online(ue):
                    return self._drop(d, rs, d.start)
            if dl > t:
                yield env.until(dl)
            d.dl_end = dl
            if log is not None:
                log += (dl, key | _DL_END)
            if oom:
                d.term, d.outcome = dl, Outcome.OOM
                if log is not None:
                    log += (dl, key | _OOM)
                    rs.details[(_OOM, d.pos)] = f"need={pc.memory_bytes:.0f}B ram={tr.ram_bytes:.0f}B"
                rs.terminal(False)
                return
            if ce > dl:
                yield env.until(ce)
            d.c_end = ce
            if log is not None:
                log += (ce, key | _C_END)
            if ue > ce:
                yield env.until(ue)
            d.u_end = d.term = ue
            d.outcome = Outcome.OK
            if log is not None:
                log += (ue, key | _U_END)
            rs.terminal(True)
        except simpy.Interrupt:
            return


class FixedPlanDriver:
    """Timing-only driver: every device plays one fixed arm; nominal sparsity follows ``next_sparsity``.

    A device's sparsity advances only when its round ends OK (its pruned update was accepted);
    otherwise it retries from the same sparsity. ``arms`` overrides the arm per device id.
    """

    def __init__(
        self,
        arm: Arm,
        s_star: float,
        local_iters: int,
        tau: int,
        s_start: float = 0.0,
        arms: Mapping[str, Arm] | None = None,
    ) -> None:
        if not (0.0 <= s_start <= s_star < 1.0):
            raise ValueError(f"FixedPlanDriver: need 0 <= s_start <= s_star < 1, got s_start={s_start}, s_star={s_star}")
        if local_iters < 1 or tau < 1:
            raise ValueError(f"FixedPlanDriver: local_iters and tau must be >= 1, got {local_iters}, {tau}")
        self.arm, self.s_star, self.local_iters, self.tau, self.s_start = arm, s_star, local_iters, tau, s_start
        self.arms = dict(arms or {})
        self.sparsity: dict[str, float] = {}
        self._pending: dict[str, float] = {}
        self._sp_arr: np.ndarray | None = None

    def plans(self, round: int, now_s: float, device_ids: list[str]) -> list[Plan]:
        out = []
        pending = self._pending
        pending.clear()
        for did in device_ids:
            arm = self.arms.get(did, self.arm)
            sb = self.sparsity.get(did, self.s_start)
            sa = next_sparsity(sb, arm.p, self.s_star)
            pending[did] = sa
            out.append(Plan(round, did, arm, sb, sa, self.local_iters, self.tau))
        return out

    def round_done(self, round: int, timings: list[DeviceTiming], start_s: float, end_s: float) -> bool:
        from simfed.timing.fast import TimingRows

        sparsity, pending = self.sparsity, self._pending
        if isinstance(timings, TimingRows):  # the batched engine's columns: no records needed
            ids, cols = timings.device_ids, timings.columns
            for p in cols.positions[cols.outcome == _OK_CODE].tolist():
                sparsity[ids[p]] = pending[ids[p]]
            return True
        for t in timings:
            if t.outcome is Outcome.OK:
                sparsity[t.device_id] = pending[t.device_id]
        return True

    # the column protocol of simfed.timing.fast.FastEngine(columns=True); use one protocol per driver
    def plan_columns(self, round: int, now_s: float, positions: np.ndarray, device_ids: Sequence[str]):
        from simfed.timing.fast import PlanColumns

        n = len(device_ids)
        if self._sp_arr is None or len(self._sp_arr) != n:
            self._sp_arr = np.full(n, float(self.s_start))
            self._p_arr = np.full(n, float(self.arm.p))
            self._r_arr = np.full(n, int(self.arm.r), dtype=np.int64)
            if self.arms:  # the per-device overrides (few): found by id, not by a pass over every device
                where = {d: i for i, d in enumerate(device_ids)}
                for d, arm in self.arms.items():
                    if d in where:
                        self._p_arr[where[d]], self._r_arr[where[d]] = arm.p, arm.r
        sb = self._sp_arr[positions]
        # next_sparsity, elementwise
        sa = np.where(sb < self.s_star, np.minimum(sb + np.maximum(self._p_arr[positions], 0.0), self.s_star), sb)
        self._pending_cols = (positions, sa)
        m = len(positions)
        return PlanColumns(sb, sa, self._r_arr[positions], np.full(m, self.local_iters), np.full(m, self.tau))

    def round_done_columns(self, round: int, timings, start_s: float, end_s: float) -> bool:
        positions, sa = self._pending_cols
        ok = timings.outcome == _OK_CODE
        self._sp_arr[positions[ok]] = sa[ok]
        return True
