"""The timing engine: synchronous FL rounds replayed over device traces, in simulated time.

:class:`Engine` runs rounds of the round model (:mod:`simfed.timing.round`) for a
:class:`RoundDriver` — the server loop, which turns device ids into :class:`~simfed.records.Plan` objects
and receives each round's :class:`~simfed.records.DeviceTiming` rows; the engine never sees training. A
cost model (:class:`~simfed.timing.cost.CostModel`) turns a plan into work, bytes and memory.

Each round: select the participants, ask the driver for their plans, simulate the devices' phases until
the round closes, ask the driver for the server's own work (aggregation, evaluation: FLOPs, timed with
``EngineConfig.server_flops``), then hand the driver the round. Before the first round the server may
have work of its own too (one-shot pruning, :meth:`RoundDriver.setup_flops`).

Which path simulates the devices' phases is chosen automatically:

- **vectorised** (:func:`~simfed.timing.round.run_private`) when nothing couples two devices (no access
  point shared, the server's links unlimited, no transfer slots): every selected device's timeline
  follows from its own traces, computed for all devices at once with numpy;
- **SimPy** (:class:`~simfed.timing.contention.ContendedRounds`) when devices contend for something:
  each device is a process, transfers share links max-min fairly (:mod:`simfed.timing.network`) and
  queue for transfer slots.

Both fill the same :class:`~simfed.timing.round.Timelines` from the same phase rule and close the round
with the same rule, so where both apply (nothing shared) they give identical tables and event logs.
"""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

import numpy as np

from simfed.records import DeviceTiming, Event, Plan, PlanBatch, RecordColumns
from simfed.timing.cost import PlanCost
from simfed.timing.log import EVENT_KINDS, KIND_RANK, EventLog, log_round
from simfed.timing.packed import PackedPopulation
from simfed.timing.round import (
    EngineConfig,
    EngineError,
    RoundTiming,
    ServerReply,
    Timelines,
    TimingColumns,
    close_round,
    close_time,
    plan_cost_columns,
    mark_failed,
    round_timing,
    run_private,
    select_positions,
    waiting_s,
)
from simfed.timing.traces import Population

if TYPE_CHECKING:
    from simfed.timing.contention import ContendedRounds

__all__ = [
    "Engine", "EngineConfig", "EngineError", "EngineResult", "RoundDriver", "Costing", "RoundTiming", "ServerReply",
    "TimingRows", "EVENT_KINDS", "KIND_RANK", "waiting_s",
]


class Costing(Protocol):
    """What the engine needs from a cost model: :class:`~simfed.timing.cost.CostModel` is one."""

    def plan_cost(self, plan: Plan) -> PlanCost: ...


class RoundDriver(Protocol):
    """The server side the engine talks to: plans in, timings out. It never sees traces."""

    def setup_flops(self) -> float:
        """The server's work before the first round (FLOPs; 0 for none)."""

    def plans(self, round: int, now_s: float, device_ids: list[str]) -> list[Plan]:
        """The plans of the selected devices (in the order of ``device_ids``)."""

    def round_closed(self, round: int, timings: Sequence[DeviceTiming], close_s: float) -> ServerReply:
        """The devices' phases closed at ``close_s``: the server's work after the close (aggregating the
        accepted updates, evaluating) and the updates it rejected."""

    def round_done(self, round: int, timings: Sequence[DeviceTiming], timing: RoundTiming) -> bool:
        """The finished round (server phases included); False stops the run."""


class TimingRows(RecordColumns):
    """One round's :class:`~simfed.records.DeviceTiming` records, built from its columns on first use.

    Building 10^4 records costs about as much per device-round as simulating them, and a timing-only
    driver may read only the columns: indexing, iterating, ``len`` and ``==`` behave as on a list (the
    records are made once, on first such access) and :attr:`columns` holds the arrays.
    """

    __slots__ = ("columns", "device_ids", "_rows")

    def __init__(self, columns: TimingColumns, device_ids: Sequence[str]) -> None:
        self.columns = columns
        self.device_ids = device_ids
        self._rows: list[DeviceTiming] | None = None

    @property
    def round(self) -> int:
        return self.columns.round

    def _make_rows(self) -> list[DeviceTiming]:
        gc_was_on = gc.isenabled()
        gc.disable()  # 10^4 records, no cycles: the collector's passes only cost time
        try:
            return self.columns.to_timings(self.device_ids)
        finally:
            if gc_was_on:
                gc.enable()

    def __len__(self) -> int:
        return len(self.columns.positions)


class EngineResult:
    """What a run returns: round timings, device timings and (when logged) the event log.

    ``timings`` and ``events`` are built from columns on first access (see :class:`TimingRows`,
    :class:`~simfed.timing.log.EventLog`).
    """

    def __init__(self, log: EventLog | None = None, *, keep_timings: bool = True) -> None:
        self.keep_timings = keep_timings
        self.rounds: list[RoundTiming] = []
        self.columns: list[TimingColumns] = []
        self.log = log
        self._timing_parts: list[Sequence[DeviceTiming]] = []
        self._timings: list[DeviceTiming] | None = None

    def add_round(self, rt: RoundTiming, timings: TimingRows) -> None:
        self.rounds.append(rt)
        if not self.keep_timings:
            return
        self.columns.append(timings.columns)
        self._timing_parts.append(timings)
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

    @property
    def events(self) -> list[Event]:
        return self.log.events() if self.log is not None else []

    def __repr__(self) -> str:
        n_timings = sum(len(p) for p in self._timing_parts)
        return f"EngineResult({len(self.rounds)} rounds, {n_timings} device timings, {len(self.log or ())} events)"


def check_plans(plans: "Sequence[Plan]", round_: int, ids: list[str]) -> None:
    """The driver's plans are for the selected devices, in their order, and this round."""
    if len(plans) != len(ids):
        raise ValueError(f"driver.plans for round {round_}: {len(plans)} plans for {len(ids)} devices")
    if isinstance(plans, PlanBatch):
        if plans.round == round_ and plans.device_ids == ids:
            return
        plans = plans.rows()
    for i, (p, d) in enumerate(zip(plans, ids)):
        if p.device_id != d or p.round != round_:
            raise ValueError(
                f"driver.plans for round {round_}: plan {i} is for device {p.device_id!r} round {p.round}, expected {d!r} round {round_}"
            )


class Engine:
    """Runs synchronous rounds over a population (see the module docstring).

    ``contended`` forces the SimPy path (True) or refuses a configuration that needs it (False); by
    default (None) the path follows the configuration. ``packed`` defaults to
    :meth:`PackedPopulation.of(population) <simfed.timing.packed.PackedPopulation.of>` (cached).
    """

    def __init__(
        self,
        population: Population,
        cost: Costing,
        config: EngineConfig,
        driver: RoundDriver,
        *,
        contended: bool | None = None,
        packed: PackedPopulation | None = None,
        event_sink: Callable[[Any], None] | None = None,
        event_sample: np.ndarray | None = None,
        keep_timings: bool = True,
    ) -> None:
        if len(population) == 0:
            raise ValueError("Engine: the population has no devices")
        ids = [d.device_id for d in population.devices]
        if len(set(ids)) != len(ids):
            raise ValueError("Engine: device ids in the population are not unique")
        if packed is not None and tuple(packed.device_ids) != tuple(ids):
            raise ValueError("Engine: `packed` is not the packed form of this population (device ids differ)")
        self.population = population
        self.device_ids = ids
        self.cost = cost
        self.config = config
        self.driver = driver
        self._packed = packed
        self.event_sink = event_sink  # each round's events, as an Arrow table, instead of keeping the log
        self.event_sample = event_sample  # log only these population positions' events (server events always)
        self.keep_timings = keep_timings  # keep every round's device timings in the result (memory grows with rounds)
        from simfed.timing.contention import Topology

        self.topology = Topology.of(population, config.server_down_bytes_s, config.server_up_bytes_s)
        needs = self.topology.shared or config.max_concurrent_transfers is not None
        if contended is False and needs:
            raise ValueError("Engine(contended=False): the configuration shares links or transfer slots between devices")
        if needs and config.availability == "end_instant":
            raise ValueError("Engine: availability='end_instant' (FedScale) has no contention; it cannot share links")
        self.contended = bool(needs if contended is None else contended)
        self._rounds: "ContendedRounds | None" = None

    @property
    def packed(self) -> PackedPopulation:
        """The packed population (built on first use, cached per population)."""
        if self._packed is None:
            self._packed = PackedPopulation.of(self.population)
        return self._packed

    def run(self, max_rounds: int) -> EngineResult:
        """Run up to ``max_rounds`` rounds (fewer if the driver's ``round_done`` returns False)."""
        if max_rounds < 0:
            raise ValueError(f"max_rounds must be >= 0, got {max_rounds}")
        cfg = self.config
        pk = self.packed
        log = EventLog(self.device_ids, sink=self.event_sink, sample=self.event_sample) if cfg.log_events else None
        result = EngineResult(log, keep_timings=self.keep_timings)
        if self.contended and self._rounds is None:
            from simfed.timing.contention import ContendedRounds

            self._rounds = ContendedRounds(self.population, pk, self.topology, cfg)
        t = cfg.start_s
        setup_s = float(self.driver.setup_flops()) / cfg.server_flops
        prune_end = t + setup_s if setup_s > 0 else None
        t += setup_s
        # Many short-lived objects and no lasting reference cycles: the cyclic collector's passes only cost time.
        gc_was_on = gc.isenabled()
        gc.disable()
        try:
            for r in range(max_rounds):
                rt, go_on = self._round(r, t, result, prune_end if r == 0 else None)
                t = rt.end_s
                if not go_on:
                    break
        finally:
            if gc_was_on:
                gc.enable()
        return result

    def _round(self, r: int, t: float, result: EngineResult, prune_end: float | None) -> tuple[RoundTiming, bool]:
        cfg, pk, ids_all = self.config, self.packed, self.device_ids
        t_sel, chosen = select_positions(cfg, pk, r, t)
        ids = [ids_all[i] for i in chosen.tolist()]
        planned = self.driver.plans(r, t_sel, ids)
        check_plans(planned, r, ids)
        plans = PlanBatch.of(planned, round=r)
        tl = Timelines.empty(chosen, t_sel, *plan_cost_columns(self.cost, plans))
        quota = cfg.quota(len(ids))
        if self._rounds is not None:
            t_close, reason = self._rounds.run(r, tl, quota, t_sel, ids_all)
        else:
            run_private(tl, pk, cfg.availability)
            t_close, reason = close_time(r, tl, quota, t_sel, cfg.deadline_s, ids_all)
        cols = close_round(r, tl, t_close, reason, quota)
        timings = TimingRows(cols, ids_all)
        reply = self.driver.round_closed(r, timings, t_close)
        if reply.failed:
            mark_failed(cols, ids_all, reply.failed)
            timings = TimingRows(cols, ids_all)
        rt = round_timing(r, t, t_sel, reason, cols, reply.aggregate_flops / cfg.server_flops,
                          reply.evaluate_flops / cfg.server_flops)
        if result.log is not None:
            log_round(result.log, pk.ram_bytes, rt, cols, (plans.p, plans.r), prune_end, reply.failed)
        result.add_round(rt, timings)
        return rt, bool(self.driver.round_done(r, timings, rt))

