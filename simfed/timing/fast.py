"""The vectorised path: the SimPy engine's rounds computed with numpy over all devices at once.

Without server-side transfer slots nothing couples two devices inside a round: each device's
timeline (online, download end, compute end, upload end, drop) is a function of its own traces
and the selection instant, and the round's close is a function of those timelines (the last
terminal time, the K-th finish, the deadline). :class:`FastEngine` computes every selected
device's timeline with :class:`~simfed.timing.packed.PackedPopulation` (exact, bit-for-bit equal
to the scalar ``Series``/``Availability`` answers) and applies the same close rules as
:class:`~simfed.timing.engine.Engine`, so it returns identical ``DeviceTiming``, ``RoundTiming``
and (when logging) the identical event log. The design follows DESIGN.md §7 ("numpy where
nothing contends, SimPy where it does"); environment.md measured ~10 M device-rounds/s for the
bare numpy formula.
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from simfed.records import Arm, DeviceTiming, Outcome, Plan
from simfed.timing.cost import PlanCost
from simfed.timing.engine import (
    KIND_RANK,
    Costing,
    EngineConfig,
    EngineError,
    EngineResult,
    EventLog,
    RoundDriver,
    RoundTiming,
    check_plans,
    choose,
)
from simfed.timing.packed import PackedPopulation
from simfed.timing.traces import Population

INF = math.inf
NAN = float("nan")

OUTCOMES: tuple[Outcome, ...] = tuple(Outcome)
_CODE = {o: i for i, o in enumerate(OUTCOMES)}


@dataclass(frozen=True)
class PlanColumns:
    """The plans of one round as arrays, row k for selected position k (a column driver's answer)."""

    sparsity_before: np.ndarray
    sparsity_after: np.ndarray
    rank: np.ndarray
    local_iters: np.ndarray
    tau: np.ndarray


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
    end_s_round: float

    def to_timings(self, device_ids: Sequence[str]) -> list[DeviceTiming]:
        """The same rows as record objects (what the SimPy engine returns)."""
        r = self.round
        cols = [
            self.start_s.tolist(),
            self.ready_s.tolist(),
            self.download_end_s.tolist(),
            self.compute_end_s.tolist(),
            self.upload_end_s.tolist(),
            self.end_s.tolist(),
            self.compute_flops.tolist(),
            self.down_bytes.tolist(),
            self.up_bytes.tolist(),
            self.memory_bytes.tolist(),
        ]
        return [
            DeviceTiming(r, device_ids[p], OUTCOMES[o], *row)
            for p, o, row in zip(self.positions.tolist(), self.outcome.tolist(), zip(*cols))
        ]


class ColumnDriver(Protocol):
    """A driver that answers with arrays (timing-only studies at 10^4-10^5 devices)."""

    def plan_columns(self, round: int, now_s: float, positions: np.ndarray, device_ids: Sequence[str]) -> PlanColumns: ...

    def round_done_columns(self, round: int, timings: TimingColumns, start_s: float, end_s: float) -> bool: ...


def round_timing_columns(r: int, start_s: float, select_s: float, end_s: float, reason: str, cols: TimingColumns) -> RoundTiming:
    counts = np.bincount(cols.outcome.astype(np.int64), minlength=len(OUTCOMES))
    ok = cols.outcome == _CODE[Outcome.OK]
    n_ok = int(counts[_CODE[Outcome.OK]])
    return RoundTiming(
        round=r,
        start_s=start_s,
        select_s=select_s,
        end_s=end_s,
        reason=reason,
        n_selected=len(cols.outcome),
        n_ok=n_ok,
        n_late=int(counts[_CODE[Outcome.LATE]]),
        n_straggler=int(counts[_CODE[Outcome.STRAGGLER]]),
        n_offline=int(counts[_CODE[Outcome.OFFLINE]]),
        n_unavailable=int(counts[_CODE[Outcome.UNAVAILABLE]]),
        n_oom=int(counts[_CODE[Outcome.OOM]]),
        mean_waiting_s=math.fsum((end_s - cols.end_s[ok]).tolist()) / n_ok if n_ok else NAN,
    )


def _distinct_rows(columns: Sequence[np.ndarray]) -> tuple[list[tuple], np.ndarray]:
    """The distinct rows of equal-length columns and each row's index among them.

    Same answer as ``np.unique(np.stack(columns, 1), axis=0, return_inverse=True)``, without its
    row-wise sort of the whole table: each column is factorised on its own (1-D sorts are cheap),
    the codes are combined into one integer per row, and only those integers are made unique.
    """
    cols = [np.asarray(c, dtype=float).reshape(-1) for c in columns]
    code = np.zeros(len(cols[0]), dtype=np.int64)
    first = np.zeros(min(1, len(code)), dtype=np.int64)
    for col in cols:
        u, inv = np.unique(col, return_inverse=True)
        # re-number after each column so the combined code stays below the row count (no overflow)
        _, first, code = np.unique(code * len(u) + inv.reshape(-1), return_index=True, return_inverse=True)
        code = code.reshape(-1)
    rows = [tuple(float(c[i]) for c in cols) for i in first.tolist()]
    return rows, code


class TimingRows(Sequence[DeviceTiming]):
    """One round's :class:`~simfed.records.DeviceTiming` records, built from its columns on first use.

    A driver's ``round_done`` receives a list of records; at 10^4 devices building them costs about
    as much per device-round as SimPy itself, and a timing-only driver reads two fields. So the
    engines hand over this read-only list instead: indexing, iterating, ``len`` and ``==`` behave as
    on a list (the records are made once, on the first such access), and a driver that knows the
    type may read :attr:`columns` directly (:class:`~simfed.timing.engine.FixedPlanDriver` does).
    """

    __slots__ = ("columns", "device_ids", "_rows")

    def __init__(self, columns: TimingColumns, device_ids: Sequence[str]) -> None:
        self.columns = columns
        self.device_ids = device_ids
        self._rows: list[DeviceTiming] | None = None

    def rows(self) -> list[DeviceTiming]:
        """The records (a cached list)."""
        if self._rows is None:
            gc_was_on = gc.isenabled()
            gc.disable()  # 10^4 records, no cycles: the collector's passes only cost time
            try:
                self._rows = self.columns.to_timings(self.device_ids)
            finally:
                if gc_was_on:
                    gc.enable()
        return self._rows

    def __len__(self) -> int:
        return len(self.columns.positions)

    def __getitem__(self, i):
        return self.rows()[i]

    def __iter__(self):
        return iter(self.rows())

    def __eq__(self, other) -> bool:
        if isinstance(other, (list, TimingRows)):
            return self.rows() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"TimingRows(round {self.columns.round}, {len(self)} devices)"


def cost_columns(costs: Sequence[PlanCost]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(flops, down_bytes, up_bytes, memory_bytes)`` arrays of a round's plan costs.

    A cost model returns one cached object per distinct plan shape (a round has a handful), so the
    fields are read once per distinct object and spread by index, not read 4 x 10^4 times.
    """
    n = len(costs)
    if n == 0:
        return tuple(np.empty(0) for _ in range(4))  # type: ignore[return-value]
    ids = np.fromiter(map(id, costs), dtype=np.int64, count=n)
    _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    table = np.array(
        [(c.flops, c.down_bytes, c.up_bytes, c.memory_bytes) for c in (costs[i] for i in first.tolist())], dtype=float
    )
    per = table[inverse.reshape(-1)]
    return per[:, 0], per[:, 1], per[:, 2], per[:, 3]


def select_positions(config: EngineConfig, packed: PackedPopulation, r: int, t: float) -> tuple[float, np.ndarray]:
    """The round's selection instant and the selected positions (sorted); see :class:`EngineConfig`."""
    n = len(packed)
    if config.participants is None:
        return t, np.arange(n, dtype=np.int64)
    every = np.arange(n, dtype=np.int64)
    online = packed.availability.is_online(every, np.full(n, t))
    if not online.any():
        t = float(np.min(packed.availability.next_online(every, np.full(n, t))))
        online = packed.availability.is_online(every, np.full(n, t))
    return t, choose(config, r, np.flatnonzero(online))


@dataclass(frozen=True, eq=False)
class Timelines:
    """Every selected device's round as its traces alone decide it, before the server closes the round.

    Row ``k`` is population position ``positions[k]``. Phase ends are ``inf`` where a phase is never
    reached (an earlier phase never ends, the device dropped or ran out of memory). ``term`` is when
    the device is done by itself: finished (``fin``), out of memory (``oom`` after its download), or
    offline (``dropped``, at ``off``); ``inf`` if never. The close (:func:`close_round`) only compares
    these times with the round's end.
    """

    positions: np.ndarray
    start: np.ndarray
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
    flops: np.ndarray
    down: np.ndarray
    up: np.ndarray
    mem: np.ndarray


def device_timelines(
    packed: PackedPopulation, availability: str, idx: np.ndarray, t_sel: float,
    flops: np.ndarray, down: np.ndarray, up: np.ndarray, mem: np.ndarray,
) -> Timelines:
    """The selected devices' timelines (docs/timing.md §2), all at once with the packed traces.

    Bit-identical to the scalar per-device replay of :class:`~simfed.timing.engine.Engine`: the
    packed series maths repeats the scalar operations in the same order.
    """
    n = len(idx)
    lat = packed.latency_s[idx]
    start = np.full(n, t_sel)
    with np.errstate(all="ignore"):
        if availability == "interval":
            ready = packed.availability.next_online(idx, start)
            off = packed.availability.offline_at(idx, ready)
        else:
            ready = start.copy()
            off = np.full(n, INF)
        dl = packed.down_bps.finish_time(idx, ready + lat, down)
        oom = mem > packed.ram_bytes[idx]
        drop_dl = dl > off
        go = np.flatnonzero(~drop_dl & ~oom & (dl < INF))
        ce = np.full(n, INF)
        ce[go] = packed.compute_flops.finish_time(idx[go], dl[go], flops[go])
        drop_c = np.zeros(n, dtype=bool)
        drop_c[go] = ce[go] > off[go]
        go = go[~drop_c[go] & (ce[go] < INF)]
        ue = np.full(n, INF)
        ue[go] = packed.up_bps.finish_time(idx[go], ce[go] + lat[go], up[go])
        drop_u = np.zeros(n, dtype=bool)
        drop_u[go] = ue[go] > off[go]

    fin = np.zeros(n, dtype=bool)
    fin[go] = ~drop_u[go] & (ue[go] < INF)
    dropped = drop_dl | drop_c | drop_u
    gone_now = np.zeros(n, dtype=bool)
    if availability == "end_instant":
        # FedScale: only the end instant is checked; a device offline then is dropped at selection
        if fin.any():
            f = np.flatnonzero(fin)
            gone_now[f] = ~packed.availability.is_online(idx[f], ue[f])
        fin &= ~gone_now
        dropped = gone_now
        off = np.where(gone_now, start, off)
    term = np.full(n, INF)
    term[fin] = ue[fin]
    is_oom = oom & ~drop_dl
    term[is_oom] = dl[is_oom]
    term[dropped] = off[dropped]
    return Timelines(idx, start, ready, off, dl, ce, ue, oom, drop_dl, drop_c, drop_u, gone_now, dropped, fin, term,
                     flops, down, up, mem)


def close_time(r: int, tl: Timelines, quota: int, t_sel: float, deadline_s: float | None) -> tuple[float, str]:
    """When and why the round closes: the earliest of all done, the ``quota``-th finish, the deadline."""
    n = len(tl.positions)
    fin_pos = np.flatnonzero(tl.fin)
    ue = tl.ue[fin_pos]
    t_quota = float(np.partition(ue, quota - 1)[quota - 1]) if len(ue) >= quota and quota > 0 else INF
    t_all = float(tl.term.max()) if n else t_sel
    t_dead = t_sel + deadline_s if deadline_s is not None else INF
    t_end = min(t_quota, t_all, t_dead)
    if t_end == INF:
        raise EngineError(
            f"round {r} can never close: {int(np.sum(tl.term == INF))} device(s) never finish "
            "(zero throughput or never online) and no deadline is set"
        )
    reason = "all" if t_all <= t_end else "quota" if t_quota <= t_end else "deadline"
    return t_end, reason


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
    code[fin] = _CODE[Outcome.STRAGGLER]  # finishers past the quota
    ok_pos = order[ue[order] <= t_end]
    code[ok_pos[:quota]] = _CODE[Outcome.OK]
    is_oom = tl.oom & ~tl.drop_dl
    code[is_oom] = _CODE[Outcome.OOM]
    code[tl.dropped] = _CODE[Outcome.OFFLINE]
    open_ = term > t_end
    code[open_] = _CODE[Outcome.LATE if reason == "deadline" else Outcome.STRAGGLER]
    code[open_ & (ready > t_end)] = _CODE[Outcome.UNAVAILABLE]
    straggler = code == _CODE[Outcome.STRAGGLER]
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
        end_s_round=t_end,
    )


def log_round(log: EventLog, ram_bytes: np.ndarray, r: int, t: float, t_sel: float, reason: str, rt: RoundTiming,
              cols: TimingColumns, arms) -> None:
    """One closed round's events, from its timing columns (no per-device loop): what happened by the close."""
    t_end = cols.end_s_round
    pos = cols.positions
    out = cols.outcome
    times, kinds, where = [np.array([t])], [np.array([KIND_RANK["round_start"]])], [np.array([-1])]

    def add(mask: np.ndarray, time_s: np.ndarray | float, kind: str) -> None:
        times.append(np.broadcast_to(time_s, mask.shape)[mask])
        kinds.append(np.full(int(mask.sum()), KIND_RANK[kind]))
        where.append(pos[mask])

    for kind, col in (("online", cols.ready_s), ("download_end", cols.download_end_s),
                      ("compute_end", cols.compute_end_s), ("upload_end", cols.upload_end_s)):
        add(~np.isnan(col), col, kind)
    is_oom = out == _CODE[Outcome.OOM]
    add(is_oom, cols.end_s, "oom")
    add(out == _CODE[Outcome.OFFLINE], cols.end_s, "offline")
    for o, kind in ((Outcome.LATE, "late"), (Outcome.STRAGGLER, "straggler"), (Outcome.UNAVAILABLE, "unavailable")):
        add(out == _CODE[o], t_end, kind)
    times.append(np.array([t_end]))
    kinds.append(np.array([KIND_RANK["round_end"]]))
    where.append(np.array([-1]))
    details = {
        (KIND_RANK["oom"], p): f"need={m:.0f}B ram={ram_bytes[p]:.0f}B"
        for p, m in zip(pos[is_oom].tolist(), cols.memory_bytes[is_oom].tolist())
    }
    details[(KIND_RANK["round_end"], -1)] = f"reason={reason} ok={rt.n_ok}/{rt.n_selected}"
    log.add_round(r, t_sel, pos, arms, np.concatenate(times), np.concatenate(kinds), np.concatenate(where), details)


class FastEngine:
    """Same interface and results as :class:`~simfed.timing.engine.Engine`, without SimPy.

    Refuses configurations with transfer slots (contention needs the event simulation). With
    ``columns=True`` and a :class:`ColumnDriver` (e.g. :class:`~simfed.timing.engine.FixedPlanDriver`)
    plans and timings stay numpy arrays (``EngineResult.columns``), which is what makes
    10^5-device timing-only runs cheap; the rows equal the record path's. ``packed`` defaults to
    :meth:`PackedPopulation.of(population) <simfed.timing.packed.PackedPopulation.of>` (cached).
    """

    def __init__(
        self,
        population: Population,
        cost: Costing,
        config: EngineConfig,
        driver: RoundDriver,
        packed: PackedPopulation | None = None,
        columns: bool = False,
    ) -> None:
        if config.max_concurrent_transfers is not None:
            raise ValueError("FastEngine: max_concurrent_transfers (server transfer slots) needs the SimPy Engine")
        if len(population) == 0:
            raise ValueError("FastEngine: the population has no devices")
        self.population = population
        self.packed = packed if packed is not None else PackedPopulation.of(population)
        self.cost = cost
        self.config = config
        self.driver = driver
        self.columns = bool(columns)
        if self.columns and not (hasattr(driver, "plan_columns") and hasattr(driver, "round_done_columns")):
            raise ValueError("FastEngine(columns=True) needs a driver with plan_columns and round_done_columns (a ColumnDriver)")

    def run(self, max_rounds: int) -> EngineResult:
        if max_rounds < 0:
            raise ValueError(f"max_rounds must be >= 0, got {max_rounds}")
        logged = self.config.log_events and not self.columns
        result = EngineResult(EventLog(self.packed.device_ids) if logged else None)
        t = self.config.start_s
        gc_was_on = gc.isenabled()
        gc.disable()  # as in Engine.run: many short-lived records, no lasting cycles
        try:
            step = self._round_columns if self.columns else self._round
            for r in range(max_rounds):
                t_end, go_on = step(r, t, result)
                t = t_end
                if not go_on:
                    break
        finally:
            if gc_was_on:
                gc.enable()
        return result

    # ------------------------------------------------------------------ one round
    def _close(self, r: int, t_sel: float, tl: Timelines) -> tuple[TimingColumns, str]:
        quota = self.config.quota(len(tl.positions))
        t_end, reason = close_time(r, tl, quota, t_sel, self.config.deadline_s)
        return close_round(r, tl, t_end, reason, quota), reason

    def _round(self, r: int, t: float, result: EngineResult) -> tuple[float, bool]:
        pk = self.packed
        t_sel, idx = select_positions(self.config, pk, r, t)
        ids = [pk.device_ids[i] for i in idx.tolist()]
        plans = self.driver.plans(r, t_sel, ids)
        check_plans(plans, r, ids)
        plan_cost = self.cost.plan_cost
        tl = device_timelines(pk, self.config.availability, idx, t_sel, *cost_columns([plan_cost(p) for p in plans]))
        cols, reason = self._close(r, t_sel, tl)
        rt = round_timing_columns(r, t, t_sel, cols.end_s_round, reason, cols)
        if result.log is not None:
            log_round(result.log, pk.ram_bytes, r, t, t_sel, reason, rt, cols, [p.arm for p in plans])
        timings = TimingRows(cols, pk.device_ids)
        result.add_timings(timings)
        result.rounds.append(rt)
        return cols.end_s_round, bool(self.driver.round_done(r, timings, t, cols.end_s_round))

    def _round_columns(self, r: int, t: float, result: EngineResult) -> tuple[float, bool]:
        """One round with a column driver: no per-device Python objects at all."""
        pk = self.packed
        t_sel, idx = select_positions(self.config, pk, r, t)
        pc = self.driver.plan_columns(r, t_sel, idx, pk.device_ids)
        n = len(idx)
        for name in ("sparsity_before", "sparsity_after", "rank", "local_iters", "tau"):
            if len(getattr(pc, name)) != n:
                raise ValueError(f"driver.plan_columns for round {r}: {name} has {len(getattr(pc, name))} rows for {n} devices")
        uniq, inverse = _distinct_rows([pc.sparsity_before, pc.sparsity_after, pc.rank, pc.local_iters, pc.tau])
        table = np.empty((len(uniq), 4))
        for u, (sb, sa, rank, iters, tau) in enumerate(uniq):
            plan = Plan(r, "", Arm(max(0.0, sa - sb), int(rank)), sb, sa, int(iters), int(tau))
            c = self.cost.plan_cost(plan)
            table[u] = (c.flops, c.down_bytes, c.up_bytes, c.memory_bytes)
        per = table[inverse.reshape(-1)]
        tl = device_timelines(pk, self.config.availability, idx, t_sel, per[:, 0], per[:, 1], per[:, 2], per[:, 3])
        cols, reason = self._close(r, t_sel, tl)
        rt = round_timing_columns(r, t, t_sel, cols.end_s_round, reason, cols)
        result.columns.append(cols)
        result.rounds.append(rt)
        return cols.end_s_round, bool(self.driver.round_done_columns(r, cols, t, cols.end_s_round))
