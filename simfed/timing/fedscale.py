"""FedScale-compatible timing: FedScale's round-time formula as an engine setting.

FedScale (Lai et al., ICML'22; ``SymbioticLab/FedScale`` commit 7ec441c, ``client_metadata.py`` and
``aggregator.py``, read in ``reference/simulators.md`` §2.1) times a synchronous round as follows:

- a client's compute time is ``3 x batch_size x local_steps x ms_per_sample / 1000`` (``ms_per_sample``
  is its AI-Benchmark inference latency; x3 approximates forward + backward), independent of the model;
- its communication time is ``(upload_kbit + download_kbit) / kbit_per_s``, one scalar bandwidth;
- the server samples ``int(K x overcommit)`` (default 1.3 K) clients among those online at the
  current virtual clock;
- a client is dropped if it is not online at ``clock + duration`` (only that instant is checked);
- survivors sorted by duration: the first K run, the rest are stragglers; the round lasts the
  K-th fastest duration (the slowest survivor if fewer than K survive).

:func:`fedscale_engine` gets these numbers from simfed's one round model
(:class:`~simfed.timing.engine.Engine`): constant series in FedScale's units, :class:`FedScaleCost`
(work in sample-passes, payload in bytes, no memory limit) and ``EngineConfig(participants=K,
overcommit=..., availability="end_instant")``. ``tests/timing/fedscale_reference.py`` writes FedScale's
rule out directly, as the test oracle it is checked against.

Two deliberate differences from FedScale's code: clients are sampled with simfed's seeded rule
(``numpy.random.default_rng((seed, round))``, not Python's ``random.sample``), and FedScale's
behaviour trace uses closed intervals ``[active, inactive]`` while simfed's availability is half-open
``[start, end)``; the two agree except at the exact boundary instants.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from simfed.records import Plan
from simfed.timing.cost import PlanCost
from simfed.timing.engine import Engine, EngineConfig, RoundDriver
from simfed.timing.traces import Availability, DeviceTrace, Population, Series, TraceError

AUGMENTATION_FACTOR = 3.0  # FedScale: "backward-pass takes around 2x the latency" of the forward


class FedScaleCost:
    """FedScale's cost of a round in engine units: sample-passes of work, the model both ways."""

    def __init__(self, batch_size: int, local_steps: int, model_kbit: float) -> None:
        if batch_size < 1 or local_steps < 1 or not model_kbit >= 0:
            raise ValueError(
                f"FedScaleCost: batch_size and local_steps must be >= 1 and model_kbit >= 0, got {batch_size}, {local_steps}, {model_kbit}"
            )
        self._cost = PlanCost(
            flops=AUGMENTATION_FACTOR * batch_size * local_steps,
            down_bytes=model_kbit * 1000.0 / 8.0,
            up_bytes=model_kbit * 1000.0 / 8.0,
            memory_bytes=0.0,
        )

    def plan_cost(self, plan: Plan) -> PlanCost:
        return self._cost


def fedscale_population(capacities: Sequence[Mapping], behaviours: Sequence[Mapping | None] | None = None) -> Population:
    """Devices whose constant series give FedScale's times: ``1000 / ms_per_sample`` sample-passes
    per second, ``kbit/s x 1000 / 8`` bytes per second both ways, no latency, unlimited RAM."""
    n = len(capacities)
    behaviours = list(behaviours) if behaviours is not None else [None] * n
    if len(behaviours) != n:
        raise ValueError(f"fedscale_population: {n} capacities but {len(behaviours)} behaviours")
    devs = []
    for i, (cap, beh) in enumerate(zip(capacities, behaviours)):
        where = f"FedScale client {i}"
        try:
            ms, kbps = float(cap["computation"]), float(cap["communication"])
        except KeyError as exc:
            raise TraceError(f"{where}: capacity entry lacks {exc.args[0]!r}") from None
        if not (ms > 0 and kbps > 0 and math.isfinite(ms) and math.isfinite(kbps)):
            raise TraceError(f"{where}: computation and communication must be positive, got {ms!r}, {kbps!r}")
        avail = Availability.always()
        if beh is not None:
            period = float(beh["finish_time"])
            ends = [min(float(e), period) for e in beh["inactive"]]
            avail = Availability.make(beh["active"], ends, period, where=f"{where} behaviour")
        bw = Series.constant(kbps * 1000.0 / 8.0, where=f"{where} communication")
        devs.append(
            DeviceTrace(
                device_id=f"client{i}",
                device_type="fedscale",
                compute_flops=Series.constant(1000.0 / ms, where=f"{where} computation"),
                down_bps=bw,
                up_bps=bw,
                latency_s=0.0,
                ram_bytes=math.inf,
                availability=avail,
            )
        )
    return Population(tuple(devs), {"source": "fedscale", "clients": n})


def fedscale_config(num_participants: int, overcommit: float = 1.3, seed: int = 0) -> EngineConfig:
    """The engine settings that reproduce FedScale's round rule."""
    return EngineConfig(participants=num_participants, overcommit=overcommit, seed=seed, availability="end_instant")


def fedscale_engine(
    capacities: Sequence[Mapping],
    behaviours: Sequence[Mapping | None] | None,
    num_participants: int,
    batch_size: int,
    local_steps: int,
    model_kbit: float,
    driver: RoundDriver,
    overcommit: float = 1.3,
    seed: int = 0,
) -> Engine:
    """simfed's SimPy engine set up to time rounds exactly as FedScale does."""
    return Engine(
        fedscale_population(capacities, behaviours),
        FedScaleCost(batch_size, local_steps, model_kbit),
        fedscale_config(num_participants, overcommit, seed),
        driver,
    )
