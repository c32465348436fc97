"""The round model: a device's phases and a round's closing rules, written once.

A synchronous FL round (FedSpine, arXiv 2501.02438; DESIGN.md §1) as simfed times it:

1. **Selection** (:func:`select_positions`): every device, or FedScale-style over-commitment (Lai et al., Oort,
   OSDI'21; FedScale, ICML'22): ``int(K * overcommit)`` devices sampled among those online at the round's start,
   seeded by ``(seed, round)``. If none is online the selection waits for the first device to come online.
2. **A device's phases** (:func:`device_phases`): wait until online → download its payload (latency, then the
   bytes) → memory check (out of memory: it stops) → compute the round's FLOPs through its compute trace →
   upload (latency, then the bytes). A device whose online session ends before its upload does loses its work
   (``offline``, at the instant it went offline). FedScale's ``end_instant`` availability checks only the
   instant the device's round would end and drops it at its selection if it would be offline then.
3. **The close** (:func:`close_time`, :func:`close_round`): every selected device done, or the deadline (the rest
   are late), or, with over-commitment, the K-th finish (finishers beyond the first K, by finish time then
   population position, are stragglers). Phases that end at or before the close happened; a device that
   finishes exactly at the deadline is on time.

The phases are one generator, :func:`device_phases`, written over numpy arrays. It yields a
:class:`Transfer` request for each download and upload and receives their end times: the engine's vectorised
path (:func:`run_private`) runs it once for all selected devices and answers every transfer from the devices'
own bandwidth series (:func:`private_transfer`: exact, no contention); the SimPy path
(:mod:`simfed.timing.contention`) runs one instance per device and answers transfers through shared links and
transfer slots, in simulated time. Both write the same :class:`Timelines`, which the one close rule reads, so
the two paths give identical tables and event logs wherever nothing is shared (tests/timing/test_paths.py).

Simulated time is exact: every phase end comes from ``finish_time`` on the exact start, and ties at one instant
are broken by a fixed rule (population order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Generator, Mapping, Sequence

import numpy as np

from simfed.errors import SimfedError
from simfed.records import OK_CODE, OUTCOME_CODE, OUTCOMES, Arm, DeviceTiming, Outcome, Plan, PlanBatch
from simfed.timing.cost import PlanCost
from simfed.timing.packed import PackedPopulation

INF = math.inf
NAN = float("nan")

_OK = OK_CODE

AVAILABILITY_MODES = ("interval", "end_instant")
DOWN, UP = "down", "up"


class EngineError(SimfedError, RuntimeError):
    """A run that cannot proceed (e.g. a round that can never close). The message names the devices."""


# ------------------------------------------------------------------------------------------ the rules


@dataclass(frozen=True)
class EngineConfig:
    """How rounds are run (the closing rules and what is shared).

    ``participants`` K: None selects every device each round (they wait until online); an integer
    samples ``int(K * overcommit)`` devices among those online at the round start (seeded by
    ``(seed, round)``) and closes the round when K have finished. ``deadline_s`` is counted from the
    selection instant. ``max_concurrent_transfers`` is the number of server-side connection slots that
    downloads and uploads queue for (None = no limit). ``server_down_bytes_s``/``server_up_bytes_s``
    are the server's own link capacities in bytes/s for what devices download / upload (None =
    unlimited); together with access points in the population they make the network shared
    (:mod:`simfed.timing.network`). ``availability`` is ``"interval"`` (a device must stay online
    through its whole round) or ``"end_instant"`` (FedScale: only the instant its round would end is
    checked; a device offline then is dropped at selection). ``server_flops`` is the server's
    effective throughput (FLOP/s) that times its aggregation, evaluation and one-shot pruning
    (docs/timing.md §3.1).
    """

    participants: int | None = None
    overcommit: float = 1.0
    deadline_s: float | None = None
    max_concurrent_transfers: int | None = None
    server_down_bytes_s: float | None = None
    server_up_bytes_s: float | None = None
    server_flops: float = 1e13
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
        for name in ("server_down_bytes_s", "server_up_bytes_s"):
            v = getattr(self, name)
            if v is not None and not (v > 0):
                raise ValueError(f"EngineConfig.{name} must be a positive number of bytes/s or None, got {v!r}")
        if not (self.server_flops > 0):
            raise ValueError(f"EngineConfig.server_flops must be a positive FLOP/s, got {self.server_flops!r}")
        if self.availability not in AVAILABILITY_MODES:
            raise ValueError(f"EngineConfig.availability must be one of {AVAILABILITY_MODES}, got {self.availability!r}")
        if self.availability == "end_instant" and (
            self.max_concurrent_transfers is not None or self.server_down_bytes_s is not None or self.server_up_bytes_s is not None
        ):
            raise ValueError("EngineConfig: availability='end_instant' (FedScale) has no contention; "
                             "unset max_concurrent_transfers and the server link capacities")
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


def select_positions(config: EngineConfig, packed: PackedPopulation, r: int, t: float) -> tuple[float, np.ndarray]:
    """The round's selection instant and the selected population positions (sorted)."""
    n = len(packed)
    if config.participants is None:
        return t, np.arange(n, dtype=np.int64)
    every = np.arange(n, dtype=np.int64)
    online = packed.availability.is_online(every, np.full(n, t))
    if not online.any():
        t = float(np.min(packed.availability.next_online(every, np.full(n, t))))
        online = packed.availability.is_online(every, np.full(n, t))
    return t, choose(config, r, np.flatnonzero(online))


# ------------------------------------------------------------------------------------------ phases


@dataclass(eq=False)
class Timelines:
    """Every selected device's round as far as it is known, one row per selected device.

    Row ``k`` is population position ``positions[k]``. Times are absolute simulated seconds. A phase end
    not reached (an earlier phase never ends, the device dropped or ran out of memory) or not yet known
    (the SimPy path, mid-round) is ``inf``; flags not yet known are False. ``term`` is when the device is
    done by itself: finished (``fin``), out of memory (after its download), or offline (``dropped``, at
    ``off``); ``inf`` while it is not. The close only compares these times with the close instant.
    """

    positions: np.ndarray
    start: np.ndarray
    flops: np.ndarray
    down: np.ndarray
    up: np.ndarray
    mem: np.ndarray
    ready: np.ndarray
    off: np.ndarray  # its online session ends (inf: never); end_instant: the start if dropped at selection
    dl: np.ndarray
    ce: np.ndarray
    ue: np.ndarray
    oom: np.ndarray  # does not fit its RAM (learnt after its download)
    drop_dl: np.ndarray  # offline before its download ends
    drop_c: np.ndarray  # offline before its computation ends
    drop_u: np.ndarray  # offline before its upload ends
    gone_now: np.ndarray  # end_instant: offline at its end instant, so dropped at selection
    dropped: np.ndarray  # outcome OFFLINE
    fin: np.ndarray  # finishes its upload
    term: np.ndarray

    @classmethod
    def empty(cls, positions: np.ndarray, t_sel: float, flops, down, up, mem) -> "Timelines":
        """Rows for the selected ``positions`` with their plan costs, nothing known yet."""
        n = len(positions)

        def times() -> np.ndarray:
            return np.full(n, INF)

        def flags() -> np.ndarray:
            return np.zeros(n, dtype=bool)

        return cls(np.asarray(positions, dtype=np.int64), np.full(n, float(t_sel)),
                   *(np.asarray(a, dtype=float) for a in (flops, down, up, mem)),
                   times(), times(), times(), times(), times(),
                   flags(), flags(), flags(), flags(), flags(), flags(), flags(), times())

    def __len__(self) -> int:
        return len(self.positions)


@dataclass(frozen=True, eq=False)
class Transfer:
    """A download or upload the phases need, for ``rows`` of the round's :class:`Timelines`.

    Each device is ready to transfer at ``ready_s`` (its latency is not included: the answerer adds it,
    after any queueing for a transfer slot) and goes offline at ``abort_s``. The answer is the end time
    of each transfer; one that would end after ``abort_s`` (or never) is abandoned, and any answer
    greater than ``abort_s`` says so.
    """

    direction: str  # DOWN or UP
    rows: np.ndarray
    ready_s: np.ndarray
    nbytes: np.ndarray
    abort_s: np.ndarray


def come_online(tl: Timelines, traces: PackedPopulation, availability: str) -> None:
    """Step 1 of every device's phases, for all rows at once: when it is online (``ready``) and when that
    online session ends (``off``). Each device's own availability decides, so both paths do this in bulk."""
    with np.errstate(all="ignore"):
        if availability == "interval":
            tl.ready[:] = traces.availability.next_online(tl.positions, tl.start)
            tl.off[:] = traces.availability.offline_at(tl.positions, tl.ready)
        else:
            tl.ready[:] = tl.start
            tl.off[:] = INF


ComputeEnd = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def device_phases(tl: Timelines, rows: np.ndarray, traces: PackedPopulation, availability: str,
                  compute_end: ComputeEnd | None = None) -> Generator[Transfer, np.ndarray, None]:
    """The phases of the devices in ``rows`` after they come online (:func:`come_online`; module docstring,
    step 2), written into ``tl``.

    A generator: it yields a :class:`Transfer` for the downloads and one for the uploads and is sent their
    end times. The rest (memory, compute) is each device's own: ``compute_end(positions, start_s, flops)``
    gives when the computations end (default: the packed traces, exact bit for bit; the SimPy path passes
    the devices' own series, which give the same numbers faster for one device).
    """
    rows = np.asarray(rows, dtype=np.int64)
    n = len(rows)
    idx = tl.positions[rows]
    start = tl.start[rows]
    ready, off = tl.ready[rows], tl.off[rows]
    finish = compute_end if compute_end is not None else traces.compute_flops.finish_time
    # (no np.errstate around a yield: a generator may be finalised in another context)
    dl = np.asarray((yield Transfer(DOWN, rows, ready, tl.down[rows], off)), dtype=float)
    oom = tl.mem[rows] > traces.ram_bytes[idx]
    drop_dl = dl > off
    go = np.flatnonzero(~drop_dl & ~oom & (dl < INF))
    ce = np.full(n, INF)
    if go.size:
        with np.errstate(all="ignore"):
            ce[go] = finish(idx[go], dl[go], tl.flops[rows[go]])
    drop_c = np.zeros(n, dtype=bool)
    drop_c[go] = ce[go] > off[go]
    tl.dl[rows], tl.oom[rows], tl.drop_dl[rows], tl.ce[rows], tl.drop_c[rows] = dl, oom, drop_dl, ce, drop_c
    go = go[~drop_c[go] & (ce[go] < INF)]
    ue = np.full(n, INF)
    ue[go] = (yield Transfer(UP, rows[go], ce[go], tl.up[rows[go]], off[go]))
    drop_u = np.zeros(n, dtype=bool)
    drop_u[go] = ue[go] > off[go]
    fin = np.zeros(n, dtype=bool)
    fin[go] = ~drop_u[go] & (ue[go] < INF)
    dropped = drop_dl | drop_c | drop_u
    gone_now = np.zeros(n, dtype=bool)
    if availability == "end_instant":
        # FedScale: only the end instant is checked; a device offline then is dropped at selection
        f = np.flatnonzero(fin)
        if f.size:
            gone_now[f] = ~traces.availability.is_online(idx[f], ue[f])
        fin &= ~gone_now
        dropped = gone_now
        off = np.where(gone_now, start, off)
    term = np.full(n, INF)
    term[fin] = ue[fin]
    is_oom = oom & ~drop_dl
    term[is_oom] = dl[is_oom]
    term[dropped] = off[dropped]
    tl.ue[rows], tl.drop_u[rows], tl.fin[rows], tl.dropped[rows] = ue, drop_u, fin, dropped
    tl.gone_now[rows], tl.off[rows], tl.term[rows] = gone_now, off, term


def private_transfer(traces: PackedPopulation, tl: Timelines, req: Transfer) -> np.ndarray:
    """End times of ``req`` over the devices' own links: latency, then the bytes through their series."""
    series = traces.down_bps if req.direction == DOWN else traces.up_bps
    idx = tl.positions[req.rows]
    with np.errstate(all="ignore"):
        return series.finish_time(idx, req.ready_s + traces.latency_s[idx], req.nbytes)


def run_private(tl: Timelines, traces: PackedPopulation, availability: str) -> None:
    """Every row's phases at once, each device on its own link (the vectorised path: nothing is shared)."""
    come_online(tl, traces, availability)
    phases = device_phases(tl, np.arange(len(tl)), traces, availability)
    try:
        req = next(phases)
        while True:
            req = phases.send(private_transfer(traces, tl, req))
    except StopIteration:
        pass


def predict_completion_s(traces: PackedPopulation, position: int, start_s: float, cost: PlanCost,
                         availability: str = "interval") -> float:
    """How long one plan started at ``start_s`` would take the device at ``position`` on its own links
    (the round model for one device, without contention); ``inf`` if it would not finish (out of memory,
    offline first, a phase that never ends). Only the trace-reading oracle may ask this."""
    return float(predict_completions_s(traces, np.array([position]), start_s, [cost], availability)[0])


def predict_completions_s(traces: PackedPopulation, positions: np.ndarray, start_s: float, costs: Sequence[PlanCost],
                          availability: str = "interval") -> np.ndarray:
    """:func:`predict_completion_s` for many (device position, plan cost) pairs at once (float64 array; a
    position may repeat). Each row is its device alone on its own links, so the answers are those of one call
    per row, exactly."""
    tl = Timelines.empty(np.asarray(positions, dtype=np.int64), start_s, [c.flops for c in costs],
                         [c.down_bytes for c in costs], [c.up_bytes for c in costs], [c.memory_bytes for c in costs])
    run_private(tl, traces, availability)
    return np.where(tl.fin, tl.term - start_s, INF)


# ------------------------------------------------------------------------------------------ the close


def close_time(r: int, tl: Timelines, quota: int, t_sel: float, deadline_s: float | None,
               device_ids: Sequence[str] | None = None) -> tuple[float, str]:
    """When and why the round closes: the earliest of all done, the ``quota``-th finish, the deadline.

    Raises :class:`EngineError` naming the devices that never finish when none of these ever comes.
    """
    n = len(tl.positions)
    ue = tl.ue[tl.fin]
    t_quota = float(np.partition(ue, quota - 1)[quota - 1]) if len(ue) >= quota and quota > 0 else INF
    t_all = float(tl.term.max()) if n else t_sel
    t_dead = t_sel + deadline_s if deadline_s is not None else INF
    t_end = min(t_quota, t_all, t_dead)
    if t_end == INF:
        stuck = np.flatnonzero(tl.term == INF)
        raise EngineError(f"round {r} can never close: {never_finish(tl, stuck, device_ids)}; "
                          "no deadline is set (engine.deadline_s)")
    reason = "all" if t_all <= t_end else "quota" if t_quota <= t_end else "deadline"
    return t_end, reason


def never_finish(tl: Timelines, rows: np.ndarray, device_ids: Sequence[str] | None) -> str:
    """Which devices never finish and in which phase (for the error of a round that cannot close)."""
    parts = []
    for k in rows[:5].tolist():
        name = device_ids[tl.positions[k]] if device_ids is not None else f"position {tl.positions[k]}"
        if tl.ready[k] == INF:
            phase = "never comes online"
        elif tl.dl[k] == INF:
            phase = "its download never ends (zero downlink rate over its whole period)"
        elif tl.ce[k] == INF:
            phase = "its computation never ends (zero compute throughput over its whole period)"
        else:
            phase = "its upload never ends (zero uplink rate over its whole period)"
        parts.append(f"device {name!r} {phase}")
    more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
    return f"{len(rows)} device(s) never finish: " + "; ".join(parts) + more


@dataclass(frozen=True, eq=False)
class TimingColumns:
    """One round's :class:`~simfed.records.DeviceTiming` rows as arrays (``outcome`` indexes ``OUTCOMES``)."""

    round: int
    positions: np.ndarray  # population positions of the selected devices
    outcome: np.ndarray
    start_s: np.ndarray
    ready_s: np.ndarray
    download_end_s: np.ndarray
    compute_end_s: np.ndarray
    upload_end_s: np.ndarray
    end_s: np.ndarray
    compute_flops: np.ndarray
    down_bytes: np.ndarray
    up_bytes: np.ndarray
    memory_bytes: np.ndarray
    close_s: float

    def to_timings(self, device_ids: Sequence[str]) -> list[DeviceTiming]:
        """The same rows as record objects."""
        r = self.round
        cols = [getattr(self, f.name).tolist() for f in fields(DeviceTiming)[3:]]
        return [DeviceTiming(r, device_ids[p], OUTCOMES[o], *row)
                for p, o, row in zip(self.positions.tolist(), self.outcome.tolist(), zip(*cols))]


def close_round(r: int, tl: Timelines, t_end: float, reason: str, quota: int) -> TimingColumns:
    """Every device's outcome and recorded phases once the round closed at ``t_end`` (docs/timing.md §3).

    Phases ending at or before the close happened; finishers beyond the first ``quota`` (by finish
    time, then population position) are stragglers; devices still running are late (deadline) or
    stragglers (quota), or unavailable if they never came online.
    """
    idx, ready, dl, ce, ue, term, fin = tl.positions, tl.ready, tl.dl, tl.ce, tl.ue, tl.term, tl.fin
    n = len(idx)
    fin_pos = np.flatnonzero(fin)
    order = fin_pos[np.lexsort((idx[fin_pos], ue[fin_pos]))]
    code = np.empty(n, dtype=np.int8)
    code[fin] = OUTCOME_CODE[Outcome.STRAGGLER]  # finishers past the quota
    ok_pos = order[ue[order] <= t_end]
    code[ok_pos[:quota]] = _OK
    is_oom = tl.oom & ~tl.drop_dl
    code[is_oom] = OUTCOME_CODE[Outcome.OOM]
    code[tl.dropped] = OUTCOME_CODE[Outcome.OFFLINE]
    open_ = term > t_end
    code[open_] = OUTCOME_CODE[Outcome.LATE if reason == "deadline" else Outcome.STRAGGLER]
    code[open_ & (ready > t_end)] = OUTCOME_CODE[Outcome.UNAVAILABLE]
    straggler = code == OUTCOME_CODE[Outcome.STRAGGLER]
    reached_dl = ~tl.drop_dl & ~tl.gone_now
    return TimingColumns(
        round=r,
        positions=idx,
        outcome=code,
        start_s=tl.start,
        ready_s=np.where(ready <= t_end, ready, NAN),
        download_end_s=np.where(reached_dl & (dl <= t_end), dl, NAN),
        compute_end_s=np.where(reached_dl & ~tl.oom & ~tl.drop_c & (ce <= t_end), ce, NAN),
        upload_end_s=np.where(fin & (ue <= t_end), ue, NAN),
        end_s=np.where(open_ | straggler, t_end, term),
        compute_flops=tl.flops,
        down_bytes=tl.down,
        up_bytes=tl.up,
        memory_bytes=tl.mem,
        close_s=t_end,
    )


# ------------------------------------------------------------------------------------------ the round


@dataclass(frozen=True)
class ServerReply:
    """What the server says about a closed round: its own work after the close, in FLOPs (timed with
    ``EngineConfig.server_flops``), and the finished devices whose update it rejected (training health:
    device id -> why), which become ``failed``."""

    aggregate_flops: float = 0.0
    evaluate_flops: float = 0.0
    failed: Mapping[str, str] = field(default_factory=dict)


def mark_failed(cols: TimingColumns, device_ids: Sequence[str], failed: Mapping[str, str]) -> None:
    """Turn the OK rows of the devices in ``failed`` into FAILED (their update was rejected)."""
    if not failed:
        return
    for k, p in enumerate(cols.positions.tolist()):
        if device_ids[p] in failed:
            if cols.outcome[k] != _OK:
                raise ValueError(f"round {cols.round}: device {device_ids[p]!r} failed training but did not finish OK")
            cols.outcome[k] = OUTCOME_CODE[Outcome.FAILED]


@dataclass(frozen=True)
class RoundTiming:
    """One round as the server saw it. ``reason`` is ``all``, ``deadline`` or ``quota``.

    The devices' phases end at ``close_s``; the server then aggregates (until ``aggregate_end_s``) and,
    in rounds that evaluate, evaluates; the round ends at ``end_s``, where the next one starts. Waiting
    is a device's idle time until the close.
    """

    round: int
    start_s: float  # the round began (the previous round's end)
    select_s: float  # participants were selected (later than start_s only when none was online)
    close_s: float  # the devices' phases closed (all in, quota, deadline)
    aggregate_end_s: float
    end_s: float  # the server's work after the close is done
    reason: str
    n_selected: int
    n_ok: int
    n_late: int
    n_straggler: int
    n_offline: int
    n_unavailable: int
    n_oom: int
    n_failed: int  # finished, but the server rejected the update (training health)
    mean_waiting_s: float  # mean of (close_s - device end) over the devices whose update was accepted

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def round_timing(r: int, start_s: float, select_s: float, reason: str, cols: TimingColumns,
                 aggregate_s: float = 0.0, evaluate_s: float = 0.0) -> RoundTiming:
    """The round's summary from its closed columns and its server phases' durations (seconds)."""
    counts = np.bincount(cols.outcome.astype(np.int64), minlength=len(OUTCOMES))
    ok = cols.outcome == _OK
    n_ok = int(counts[_OK])
    close = cols.close_s
    agg_end = close + aggregate_s
    return RoundTiming(
        round=r, start_s=start_s, select_s=select_s, close_s=close, aggregate_end_s=agg_end,
        end_s=agg_end + evaluate_s, reason=reason, n_selected=len(cols.outcome), n_ok=n_ok,
        n_late=int(counts[OUTCOME_CODE[Outcome.LATE]]),
        n_straggler=int(counts[OUTCOME_CODE[Outcome.STRAGGLER]]),
        n_offline=int(counts[OUTCOME_CODE[Outcome.OFFLINE]]),
        n_unavailable=int(counts[OUTCOME_CODE[Outcome.UNAVAILABLE]]),
        n_oom=int(counts[OUTCOME_CODE[Outcome.OOM]]),
        n_failed=int(counts[OUTCOME_CODE[Outcome.FAILED]]),
        # exactly rounded: the same whatever the summation order
        mean_waiting_s=math.fsum((close - cols.end_s[ok]).tolist()) / n_ok if n_ok else NAN,
    )


def plan_cost_columns(cost: "Any", plans: "PlanBatch") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(flops, down_bytes, up_bytes, memory_bytes)`` arrays of a round's plans.

    A cost model whose ``costs_by_shape`` is true (:class:`~simfed.timing.cost.CostModel`: a plan's cost
    depends on its sparsities, iterations, tau, rank, base download and download rank, never on the device, whose speed
    is in its traces) is asked once per distinct plan shape, for one representative
    :class:`~simfed.records.Plan`; any other is asked for every plan.
    """
    n = len(plans)
    if n == 0:
        return tuple(np.empty(0) for _ in range(4))  # type: ignore[return-value]
    if not getattr(cost, "costs_by_shape", False):
        table = np.array([(c.flops, c.down_bytes, c.up_bytes, c.memory_bytes) for c in map(cost.plan_cost, plans)],
                         dtype=float)
        return table[:, 0], table[:, 1], table[:, 2], table[:, 3]
    shape = np.stack([plans.sparsity_before, plans.sparsity_after, plans.local_iters.astype(float),
                      plans.tau.astype(float), plans.r.astype(float), plans.base_download.astype(float),
                      plans.download_rank.astype(float)], axis=1)
    _, first, inverse = np.unique(shape, axis=0, return_index=True, return_inverse=True)
    ids, r = plans.device_ids, plans.round
    table = np.array([
        (c.flops, c.down_bytes, c.up_bytes, c.memory_bytes)
        for c in (cost.plan_cost(Plan(r, ids[i], Arm(float(plans.p[i]), int(plans.r[i])), float(plans.sparsity_before[i]),
                                      float(plans.sparsity_after[i]), int(plans.local_iters[i]), int(plans.tau[i]),
                                      bool(plans.base_download[i]),
                                      None if plans.down_rank is None else int(plans.down_rank[i])))
                  for i in first.tolist())
    ], dtype=float)
    per = table[inverse.reshape(-1)]
    return per[:, 0], per[:, 1], per[:, 2], per[:, 3]


def waiting_s(timing: DeviceTiming, close_s: float) -> float:
    """A device's idle time in a synchronous round: the round's close minus its own end."""
    return close_s - timing.end_s
