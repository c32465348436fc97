"""Hand-sized populations and a fixed cost table shared by the timing tests."""

from __future__ import annotations

import numpy as np

from simfed.records import Plan
from simfed.timing.cost import PlanCost
from simfed.timing.traces import Availability, DeviceTrace, Population, Series


class TableCost:
    """A cost model stub: the same PlanCost for every plan, or one per device id."""

    def __init__(self, default: PlanCost, per_device: dict[str, PlanCost] | None = None) -> None:
        self.default = default
        self.per_device = per_device or {}

    def plan_cost(self, plan: Plan) -> PlanCost:
        return self.per_device.get(plan.device_id, self.default)


def device(
    did: str,
    compute=(100.0,),
    compute_times=(0.0,),
    down=10.0,
    up=5.0,
    latency=1.0,
    ram=1000.0,
    avail=None,
    period=1000.0,
) -> DeviceTrace:
    return DeviceTrace(
        device_id=did,
        device_type="t",
        compute_flops=Series.make(list(compute_times), list(compute), period),
        down_bps=Series.constant(down),
        up_bps=Series.constant(up),
        latency_s=latency,
        ram_bytes=ram,
        availability=avail if avail is not None else Availability.always(),
    )


def random_population(n: int, seed: int, with_availability: bool = True) -> Population:
    """Devices with random piecewise-constant compute/network series and on/off intervals."""
    rng = np.random.default_rng(seed)
    devs = []
    for i in range(n):
        def series(scale: float, steps: int, period: float) -> Series:
            times = np.concatenate([[0.0], np.sort(rng.uniform(0, period, steps - 1))])
            values = scale * rng.lognormal(0.0, 0.6, steps)
            return Series.make(times, values, period)

        if with_availability and rng.random() < 0.7:
            period = float(rng.uniform(300, 900))
            cuts = np.sort(rng.uniform(0, period, 6))
            avail = Availability.make(cuts[0::2], cuts[1::2], period)
        else:
            avail = Availability.always()
        devs.append(
            DeviceTrace(
                device_id=f"dev{i:04d}",
                device_type="a" if i % 2 else "b",
                compute_flops=series(1e9, int(rng.integers(1, 8)), float(rng.uniform(100, 400))),
                down_bps=series(2e5, int(rng.integers(1, 6)), float(rng.uniform(50, 200))),
                up_bps=series(1e5, int(rng.integers(1, 6)), float(rng.uniform(50, 200))),
                latency_s=float(rng.uniform(0.0, 0.2)),
                ram_bytes=float(rng.choice([4e9, 8e9, 16e9])),
                availability=avail,
            )
        )
    return Population(tuple(devs), {"generator": "test-random", "seed": seed})


def timing_rows(timings) -> list[tuple]:
    """DeviceTimings as tuples with NaN replaced by None, so that equal timelines compare equal."""
    import dataclasses
    import math

    out = []
    for t in timings:
        row = []
        for f in dataclasses.fields(t):
            v = getattr(t, f.name)
            row.append(None if isinstance(v, float) and math.isnan(v) else v)
        out.append(tuple(row))
    return out


def round_rows(rounds) -> list[tuple]:
    return timing_rows(rounds)


def fixed_loop(arm=None, s_star: float = 0.5, local_iters: int = 10, tau: int = 5, arms=None, **kwargs):
    """The server loop without training, every device playing one fixed arm (``arms``: per-device overrides)."""
    from simfed.decisions.policies import make_policy
    from simfed.experiments.loop import ServerLoop
    from simfed.records import Arm

    policy = make_policy("fixed", arm=arm if arm is not None else Arm(0.1, 4), per_device=arms)
    return ServerLoop(policy=policy, s_star=s_star, local_iters=local_iters, tau=tau, **kwargs)


def round_configs():
    """Engine configurations every path must agree on (ids: :data:`ROUND_CONFIG_IDS`)."""
    from simfed.timing.engine import EngineConfig

    return [
        EngineConfig(),
        EngineConfig(deadline_s=60.0),
        EngineConfig(participants=12, overcommit=1.3, seed=4),
        EngineConfig(participants=12, overcommit=1.3, deadline_s=45.0, seed=9),
        EngineConfig(participants=12, overcommit=1.3, availability="end_instant", seed=2),
    ]


ROUND_CONFIG_IDS = ["all", "deadline", "overcommit", "overcommit+deadline", "end_instant"]
