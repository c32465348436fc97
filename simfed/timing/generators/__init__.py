"""Seeded trace generators: name -> function returning a :class:`~simfed.timing.traces.Population`.

A generator rebuilds a device population from published specifications and measurement summaries
(every number cited in ``traces/SCHEMA.md``). Same name, size, seed and parameters give the
identical population. Adding a generator is one module plus one line in :data:`GENERATORS`.
"""

from __future__ import annotations

from typing import Callable

from simfed.timing.generators import fedspine_testbed, phones
from simfed.timing.traces import Population

__all__ = ["GENERATORS", "generate"]

GENERATORS: dict[str, Callable[..., Population]] = {
    fedspine_testbed.NAME: fedspine_testbed.generate,
    phones.NAME: phones.generate,
}


def generate(name: str, n_devices: int | None = None, seed: int = 0, duration_s: float = 3600.0, **params) -> Population:
    """Run generator ``name``; ``params`` are the generator's own keyword options."""
    try:
        fn = GENERATORS[name]
    except KeyError:
        raise ValueError(f"unknown trace generator {name!r} (known: {', '.join(sorted(GENERATORS))})") from None
    return fn(n_devices=n_devices, seed=seed, duration_s=duration_s, **params)
