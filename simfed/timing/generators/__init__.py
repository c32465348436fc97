"""Seeded trace generators: name -> function returning a :class:`~simfed.timing.traces.Population`.

A generator rebuilds a device population from published specifications and measurement summaries
(every number cited in ``traces/SCHEMA.md``). Same name, size, seed and parameters give the
identical population. Adding a generator is one module plus one line in :data:`GENERATORS`; the
module's ``generate`` declares its options with their types and ranges in its signature
(``Annotated[float, Range(gt=0)]``, :mod:`simfed.options`), and :func:`generator_options` reads them.
"""

from __future__ import annotations

from typing import Callable

from simfed.errors import OptionError
from simfed.options import OptionTable, signature_table
from simfed.timing.generators import fedspine_testbed, fedspine_testbed_wifi, phones
from simfed.timing.traces import Population

__all__ = ["GENERATORS", "generate", "generator_options"]

GENERATORS: dict[str, Callable[..., Population]] = {
    fedspine_testbed.NAME: fedspine_testbed.generate,
    fedspine_testbed_wifi.NAME: fedspine_testbed_wifi.generate,
    phones.NAME: phones.generate,
}


def _unknown(name: str) -> OptionError:
    return OptionError(f"unknown trace generator {name!r} (known: {', '.join(sorted(GENERATORS))})")


def generator_options(name: str) -> OptionTable:
    """The options of generator ``name`` (``n_devices``, ``seed``, ``duration_s`` and its own).

    Raises:
        OptionError: ``name`` is not a registered generator.
    """
    if name not in GENERATORS:
        raise _unknown(name)
    return signature_table(GENERATORS[name], f"generator {name!r}")


def generate(name: str, n_devices: int | None = None, seed: int = 0, duration_s: float = 3600.0, **params) -> Population:
    """Run generator ``name``; ``params`` are the generator's own keyword options.

    Raises:
        OptionError: an unknown generator, or an option it does not declare, of the wrong type or out
            of its range (the message names the option and what is accepted).
    """
    table = generator_options(name)
    for key in params:
        if key not in table:
            raise table.unknown_key(key)
    pop = GENERATORS[name](n_devices=n_devices, seed=seed, duration_s=duration_s, **params)
    from simfed.timing.tracefile import warn_zero_rates

    warn_zero_rates(pop, f"generator {name!r}")
    return pop
