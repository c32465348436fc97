"""The SimPy path: rounds in which devices contend for shared links and transfer slots.

When devices share an access point or the server's own link (:class:`Topology`), or queue for the
server's transfer slots, one device's transfer changes when another's ends, so a round is simulated event
by event: each selected device is a SimPy process that runs the round model's phase rule
(:func:`~simfed.timing.round.device_phases`) for itself and answers its downloads and uploads in simulated
time — queue for a slot (if any), wait its latency, then move its bytes through the shared network
(:class:`~simfed.timing.network.FlowNetwork`: max-min fair sharing, each flow capped by the device's own
trace rate; SimGrid's CM02 model) or, on a private link, through its own series. A device that goes
offline abandons its transfer and frees its share at that instant. The round stops as soon as its close
is known (all done, the K-th finish, the deadline); the round model's close rule then reads the devices'
timelines exactly as on the vectorised path.

Each round gets its own SimPy environment starting at the selection instant: nothing carries over from
one round to the next but the clock (late work is discarded, transfers still running at the close are
abandoned).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from heapq import heappush
from typing import Sequence

import numpy as np
import simpy
from simpy.events import NORMAL

from simfed.timing.packed import PackedPopulation
from simfed.timing.round import DOWN, EngineConfig, EngineError, Timelines, Transfer, close_time, come_online, device_phases
from simfed.timing.traces import Population, SeriesRef

INF = math.inf
LATE = NORMAL + 1  # priority of events that must see everything else of their instant first


@dataclass(frozen=True, eq=False)
class Topology:
    """Which links each device's downloads and uploads cross (the shared network).

    Links are the server's own downlink and uplink (when their capacity is finite) and one link per
    direction of each full-duplex access point, or one link for both directions of a half-duplex one.
    ``down_links[i]``/``up_links[i]`` hold the link indices of population position ``i`` (-1: none); a
    device whose transfers cross no link has a private link: its own series alone decide them.
    """

    capacities: tuple[float, ...]  # bytes/s per link
    names: tuple[str, ...]
    down_links: np.ndarray  # [n_devices, 2] int
    up_links: np.ndarray

    @classmethod
    def of(cls, population: Population, server_down_bytes_s: float | None = None,
           server_up_bytes_s: float | None = None) -> "Topology":
        caps: list[float] = []
        names: list[str] = []

        def link(name: str, capacity: float) -> int:
            caps.append(float(capacity))
            names.append(name)
            return len(caps) - 1

        server_down = link("server:down", server_down_bytes_s) if server_down_bytes_s else -1
        server_up = link("server:up", server_up_bytes_s) if server_up_bytes_s else -1
        ap_links: dict[str, tuple[int, int]] = {}
        for name in sorted(population.access_points):
            ap = population.access_points[name]
            if ap.duplex == "half":
                both = link(f"ap:{name}", ap.downlink_bps)
                ap_links[name] = (both, both)
            else:
                ap_links[name] = (link(f"ap:{name}:down", ap.downlink_bps), link(f"ap:{name}:up", ap.uplink_bps))
        n = len(population)
        down = np.full((n, 2), -1, dtype=np.int64)
        up = np.full((n, 2), -1, dtype=np.int64)
        down[:, 0], up[:, 0] = server_down, server_up
        for i, d in enumerate(population.devices):
            if d.ap:
                down[i, 1], up[i, 1] = ap_links[d.ap]
        return cls(tuple(caps), tuple(names), down, up)

    @property
    def shared(self) -> bool:
        """True when some transfer crosses a shared link."""
        return bool((self.down_links >= 0).any() or (self.up_links >= 0).any())

    def route(self, direction: str, position: int) -> tuple[int, ...]:
        """The links one transfer of the device at ``position`` crosses (empty: a private link)."""
        row = (self.down_links if direction == DOWN else self.up_links)[position]
        return tuple(int(x) for x in row if x >= 0)


class _Env(simpy.Environment):
    """A SimPy environment that schedules events at exact absolute times (no ``now + delay`` round-off)."""

    def at(self, time_s: float, priority: int = NORMAL) -> simpy.Event:
        ev = simpy.Event(self)
        ev._ok = True
        ev._value = None
        heappush(self._queue, (time_s, priority, next(self._eid), ev))
        return ev


class _Network:
    """The shared network inside one round's environment: flows start and end in simulated time.

    Starts and aborts only mark the network changed; it is re-solved once per instant (a tick at the end of
    the instant), after every start of that instant, so 10^4 flows starting together cost one solve.
    """

    def __init__(self, env: _Env, capacities: Sequence[float]) -> None:
        from simfed.timing.network import FlowNetwork

        self.env = env
        self.net = FlowNetwork(capacities)
        self.pending: dict[int, simpy.Event] = {}
        self._generation = 0  # future ticks of an older generation are stale
        self._tick_queued = False  # a tick at the current instant is queued

    def start(self, key: int, nbytes: float, links: tuple[int, ...], cap) -> simpy.Event:
        self._catch_up()
        done = simpy.Event(self.env)
        self.pending[key] = done
        self.net.start(self.env.now, key, nbytes, links, cap)
        self._changed()
        return done

    def abort(self, key: int) -> None:
        self._catch_up()
        if key in self.pending:
            self.pending.pop(key)
            self.net.abort(self.env.now, key)
            self._changed()

    def _catch_up(self) -> None:
        """Bring the network's clock to now, completing what ends exactly now (before anything starts or stops)."""
        now = self.env.now
        if self.net.now < now and self.net.next_time() <= now:
            self._complete(self.net.advance(now))

    def _complete(self, keys: list) -> None:
        now = self.env.now
        for key in keys:
            self.pending.pop(key).succeed(now)

    def _changed(self) -> None:
        self._generation += 1
        if not self._tick_queued:
            self._tick_queued = True
            self.env.at(self.env.now).callbacks.append(self._tick_now)

    def _tick_now(self, _ev) -> None:
        self._tick_queued = False
        self._tick()

    def _tick(self) -> None:
        """Solve, complete what ends now, and wake up again at the next completion or rate change."""
        now = self.env.now
        t = self.net.next_time()
        if t <= now:
            self._complete(self.net.advance(now))
            t = self.net.next_time()
        if t < INF:
            gen = self._generation
            self.env.at(t).callbacks.append(lambda _ev: gen == self._generation and self._tick())


class _Close:
    """Counters that tell the SimPy run when the round's close is known."""

    def __init__(self, env: _Env, n: int, quota: int) -> None:
        self.n, self.quota = n, quota
        self.done = self.finished = 0
        self.reached = simpy.Event(env)

    def terminal(self, finished: bool) -> None:
        self.done += 1
        self.finished += bool(finished)
        if (self.done == self.n or self.finished >= self.quota) and not self.reached.triggered:
            self.reached.succeed()


class ContendedRounds:
    """Runs the devices' phases of a round with SimPy where they contend (module docstring)."""

    def __init__(self, population: Population, packed: PackedPopulation, topology: Topology, config: EngineConfig) -> None:
        self.population = population
        self.traces = packed
        self.topology = topology
        self.config = config

    def run(self, r: int, tl: Timelines, quota: int, t_sel: float, device_ids: Sequence[str]) -> tuple[float, str]:
        """Simulate ``tl``'s devices from ``t_sel`` until the round closes; (close instant, reason)."""
        cfg = self.config
        env = _Env(initial_time=t_sel)
        net = _Network(env, self.topology.capacities) if self.topology.shared else None
        slots = simpy.Resource(env, capacity=cfg.max_concurrent_transfers) if cfg.max_concurrent_transfers else None
        close = _Close(env, len(tl), quota)
        come_online(tl, self.traces, cfg.availability)
        for k in range(len(tl)):
            env.process(self._device(env, k, tl, net, slots, close))
        closers = [close.reached]
        if cfg.deadline_s is not None:
            closers.append(env.at(t_sel + cfg.deadline_s, LATE))
        if len(tl) == 0:
            return t_sel, "all"
        stop = env.any_of(closers)
        try:
            env.run(until=stop)
        except RuntimeError:  # no event left and no close: some device never finishes
            if stop.triggered:
                raise
            close_time(r, tl, quota, t_sel, cfg.deadline_s, device_ids)  # raises EngineError naming them
            raise EngineError(f"round {r} can never close") from None  # pragma: no cover - close_time raised
        while env.peek() == env.now:  # everything of the closing instant happens before the close
            env.step()
        t_end, reason = close_time(r, tl, quota, t_sel, cfg.deadline_s, device_ids)
        if t_end != env.now:  # pragma: no cover - the counters and the close rule must agree
            raise AssertionError(f"round {r}: SimPy stopped at {env.now} but the close rule says {t_end}")
        return t_end, reason

    # ------------------------------------------------------------------ one device
    def _device(self, env: _Env, k: int, tl: Timelines, net: _Network | None, slots, close: _Close):
        phases = device_phases(tl, np.array([k]), self.traces, self.config.availability, self._compute_end)
        req = next(phases)
        try:
            while True:
                if len(req.rows) == 0:
                    end = np.empty(0)
                else:
                    end = np.array([(yield from self._transfer(env, k, req, tl, net, slots))])
                req = phases.send(end)
        except StopIteration:
            pass
        term = float(tl.term[k])
        if term == INF:
            return  # never done by itself: the deadline or the quota closes the round
        if term > env.now:
            yield env.at(term)
        close.terminal(bool(tl.fin[k]))

    def _compute_end(self, positions: np.ndarray, start_s: np.ndarray, flops: np.ndarray) -> np.ndarray:
        """When computations end, from each device's own series (the packed answer, bit for bit, for few devices)."""
        devices = self.population.devices
        return np.array([devices[p].compute_flops.finish_time(t, w)
                         for p, t, w in zip(positions.tolist(), start_s.tolist(), flops.tolist())])

    def _transfer(self, env: _Env, k: int, req: Transfer, tl: Timelines, net: _Network | None, slots):
        """One device's download or upload in simulated time; its end, or ``inf`` if it went offline first."""
        pos = int(tl.positions[k])
        ready, off, nbytes = float(req.ready_s[0]), float(req.abort_s[0]), float(req.nbytes[0])
        trace = self.population.devices[pos]
        series = trace.down_bps if req.direction == DOWN else trace.up_bps
        links = self.topology.route(req.direction, pos) if net is not None else ()
        if slots is None and not links:  # a private link: its own series decides, nothing to wait for
            return series.finish_time(ready + trace.latency_s, nbytes)
        if ready > env.now:
            yield env.at(ready)
        slot = None
        try:
            if slots is not None:
                slot = slots.request()
                if not slot.triggered:
                    yield (slot | env.at(off, LATE)) if off < INF else slot
                if not slot.triggered:
                    return INF  # went offline while queued for a slot
            begin = env.now + trace.latency_s
            if not links:
                end = series.finish_time(begin, nbytes)
            else:
                if begin > off:  # goes offline during its latency
                    yield env.at(off, LATE)
                    return INF
                else:
                    if begin > env.now:
                        yield env.at(begin)
                    # the flow's cap is the device's own rate; a library reference as its plain series
                    cap = series.materialize() if isinstance(series, SeriesRef) else series
                    done = net.start(k, nbytes, links, cap)
                    yield (done | env.at(off, LATE)) if off < INF else done
                    if done.triggered:
                        return env.now
                    net.abort(k)
                    return INF
            if end > off:
                if off > env.now:
                    yield env.at(off, LATE)
                return INF
            if end > env.now:
                yield env.at(end)
            return end
        finally:
            if slot is not None:
                if slot.triggered:
                    slots.release(slot)
                else:
                    slot.cancel()
