"""FedScale's synchronous round rule written out directly: the test oracle for simfed's FedScale mode.

FedScale (Lai et al., ICML'22; ``SymbioticLab/FedScale`` commit 7ec441c, ``client_metadata.py`` and
``aggregator.py``, read in ``reference/simulators.md`` §2.1). This is a reference for tests, not part of
simfed: simfed times FedScale-mode rounds with its one round model (``simfed.timing.fedscale``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from simfed.timing.fedscale import AUGMENTATION_FACTOR


def client_duration_s(ms_per_sample: float, kbit_per_s: float, batch_size: int, local_steps: int, model_kbit: float) -> float:
    """FedScale's round duration of one client: compute plus download and upload of the model."""
    compute = AUGMENTATION_FACTOR * batch_size * local_steps * ms_per_sample / 1000.0
    return compute + (model_kbit + model_kbit) / kbit_per_s


def _is_active(behaviour: Mapping | None, t: float) -> bool:
    """FedScale's ``ClientMetadata.is_active``: cyclic trace, closed intervals."""
    if behaviour is None:
        return True
    norm = t % behaviour["finish_time"]
    return any(a <= norm <= b for a, b in zip(behaviour["active"], behaviour["inactive"]))


def _next_active(behaviour: Mapping | None, t: float) -> float:
    if behaviour is None or _is_active(behaviour, t):
        return t
    period = behaviour["finish_time"]
    k = math.floor(t / period)
    norm = t - k * period
    later = [a for a in behaviour["active"] if a > norm]
    return k * period + min(later) if later else (k + 1) * period + min(behaviour["active"])


@dataclass(frozen=True)
class FedScaleRound:
    """One FedScale round: who was sampled, who ran, who was dropped, and its duration."""

    round: int
    clock_s: float  # virtual clock when the round started (clients sampled)
    sampled: tuple[int, ...]
    ran: tuple[int, ...]
    stragglers: tuple[int, ...]
    dropped: tuple[int, ...]
    duration_s: float


def fedscale_rounds(
    capacities: Sequence[Mapping],
    behaviours: Sequence[Mapping | None] | None,
    num_participants: int,
    rounds: int,
    batch_size: int,
    local_steps: int,
    model_kbit: float,
    overcommit: float = 1.3,
    seed: int = 0,
) -> list[FedScaleRound]:
    """FedScale's synchronous round times, computed directly from its rule (client i = position i).

    ``capacities[i]`` is a ``client_device_capacity`` entry (``computation`` ms/sample,
    ``communication`` kbit/s); ``behaviours[i]`` a ``client_behave_trace`` entry (``active``,
    ``inactive``, ``finish_time``) or None for always online.
    """
    n = len(capacities)
    behaviours = list(behaviours) if behaviours is not None else [None] * n
    if len(behaviours) != n:
        raise ValueError(f"fedscale_rounds: {n} capacities but {len(behaviours)} behaviours")
    durations = [
        client_duration_s(c["computation"], c["communication"], batch_size, local_steps, model_kbit) for c in capacities
    ]
    clock = 0.0
    out = []
    for r in range(rounds):
        online = [i for i in range(n) if _is_active(behaviours[i], clock)]
        if not online:
            clock = min(_next_active(b, clock) for b in behaviours)
            online = [i for i in range(n) if _is_active(behaviours[i], clock)]
        k = min(len(online), int(num_participants * overcommit + 1e-9))
        rng = np.random.default_rng([seed, r])
        sampled = sorted(int(x) for x in rng.choice(np.asarray(online, dtype=np.int64), size=k, replace=False))
        alive = [i for i in sampled if _is_active(behaviours[i], clock + durations[i])]
        dropped = [i for i in sampled if i not in set(alive)]
        by_speed = sorted(alive, key=lambda i: (durations[i], i))
        ran = by_speed[:num_participants]
        duration = durations[ran[-1]] if ran else 0.0
        out.append(
            FedScaleRound(r, clock, tuple(sampled), tuple(sorted(ran)), tuple(sorted(by_speed[num_participants:])), tuple(dropped), duration)
        )
        clock += duration
    return out


