"""Importers of public trace formats: format name -> function(path, **options) -> Population.

Each importer reads a user's copy of a public file (nothing is downloaded or shipped), validates
it with errors that name the file and what is wrong, and converts it to simfed's units (FLOP/s,
bytes/s, seconds). What a format does not carry (RAM, or compute for network traces) comes from
options with documented defaults (:mod:`simfed.timing.importers._common`). Adding a format is one
module plus one line in :data:`IMPORTERS`; the importer declares its options, with their types and
ranges, in its signature (``Annotated[float, Range(gt=0)]``, :mod:`simfed.options`), and
:func:`importer_options` reads them.
"""

from __future__ import annotations

import os
from typing import Callable

from simfed.errors import OptionError
from simfed.options import OptionTable, signature_table
from simfed.timing.importers.fedscale import import_behave, import_capacity
from simfed.timing.importers.flash import import_flash
from simfed.timing.importers.mahimahi import import_mahimahi
from simfed.timing.importers.throughput_csv import import_throughput_csv
from simfed.timing.traces import Population

__all__ = ["IMPORTERS", "import_traces", "importer_options"]

IMPORTERS: dict[str, Callable[..., Population]] = {
    "fedscale": import_capacity,  # client_device_capacity pickle (+ behave=client_behave_trace)
    "fedscale-behave": import_behave,  # client_behave_trace pickle (+ capacity=client_device_capacity)
    "mahimahi": import_mahimahi,
    "throughput-csv": import_throughput_csv,  # 5Gophers-style per-second CSVs
    "flash": import_flash,  # FLASH speed_distri.json
}


def importer_options(fmt: str) -> OptionTable:
    """The ``--set`` options of importer ``fmt`` (its keyword parameters, typed and ranged).

    Raises:
        OptionError: ``fmt`` is not a registered format.
    """
    if fmt not in IMPORTERS:
        raise OptionError(f"unknown trace format {fmt!r} (known: {', '.join(sorted(IMPORTERS))})")
    return signature_table(IMPORTERS[fmt], f"importer {fmt!r}", skip=("path",))


def import_traces(fmt: str, path: str | os.PathLike, **options) -> Population:
    """Import ``path`` in format ``fmt``; warns (SimfedWarning) about zero-rate series and dropped entries.

    Raises:
        OptionError: an unknown format, or an option the importer does not declare, of the wrong
            type or out of its range (the message names the option and what is accepted).
        TraceError: the file is missing or malformed (the message names the file and the entry).
    """
    table = importer_options(fmt)
    table.check(options)
    pop = IMPORTERS[fmt](path, **options)
    from simfed.timing.tracefile import warn_zero_rates

    warn_zero_rates(pop, f"{fmt} import of {path}")
    return pop
