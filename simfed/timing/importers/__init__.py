"""Importers of public trace formats: format name -> function(path, **options) -> Population.

Each importer reads a user's copy of a public file (nothing is downloaded or shipped), validates
it with errors that name the file and what is wrong, and converts it to simfed's units (FLOP/s,
bytes/s, seconds). What a format does not carry (RAM, or compute for network traces) comes from
options with documented defaults (:mod:`simfed.timing.importers._common`). Adding a format is one
module plus one line in :data:`IMPORTERS`.
"""

from __future__ import annotations

import os
from typing import Callable

from simfed.timing.importers.fedscale import import_behave, import_capacity
from simfed.timing.importers.flash import import_flash
from simfed.timing.importers.mahimahi import import_mahimahi
from simfed.timing.importers.throughput_csv import import_throughput_csv
from simfed.timing.traces import Population

__all__ = ["IMPORTERS", "import_traces"]

IMPORTERS: dict[str, Callable[..., Population]] = {
    "fedscale": import_capacity,  # client_device_capacity pickle (+ behave=client_behave_trace)
    "fedscale-behave": import_behave,  # client_behave_trace pickle (+ capacity=client_device_capacity)
    "mahimahi": import_mahimahi,
    "throughput-csv": import_throughput_csv,  # 5Gophers-style per-second CSVs
    "flash": import_flash,  # FLASH speed_distri.json
}


def import_traces(fmt: str, path: str | os.PathLike, **options) -> Population:
    try:
        fn = IMPORTERS[fmt]
    except KeyError:
        raise ValueError(f"unknown trace format {fmt!r} (known: {', '.join(sorted(IMPORTERS))})") from None
    try:
        return fn(path, **options)
    except TypeError as exc:  # an option the importer does not take
        if "unexpected keyword argument" in str(exc):
            raise ValueError(f"{fmt}: {str(exc).split(')', 1)[-1].strip() or exc}") from None
        raise
