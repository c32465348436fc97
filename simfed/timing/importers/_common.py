"""Shared pieces of the public-format importers: defaults for what a format does not carry.

Network-only formats (Mahimahi, per-second throughput CSVs, FLASH speed distributions) and
FedScale's capacity profiles carry no RAM, and the network formats no compute rate. The importers
fill these from options whose defaults are documented population medians, not guesses:

- ``ram_bytes``: 4 GiB, the median RAM of the 333 phones in the AI-Benchmark 2019 ranking
  (FLASH ``raw_ai_benchmark_list.json``);
- ``flops``: the ``phones`` generator's compute at the median AI-Benchmark score (5,063), i.e.
  FLASH's measured on-device training anchor (see :mod:`simfed.timing.generators.phones`).
"""

from __future__ import annotations

import math
import os
import pickle
import warnings
from collections.abc import Iterable
from pathlib import Path

from simfed.options import Annotated, Range
from simfed.timing.traces import TraceError

DEFAULT_RAM_BYTES = 4.0 * 1024**3

# option types shared by the importers' signatures (simfed.options reads them)
Positive = Annotated[float, Range(gt=0)]
PositiveOrNone = Annotated[float | None, Range(gt=0)]
NonNegative = Annotated[float, Range(ge=0)]
NonNegativeOrNone = Annotated[float | None, Range(ge=0)]
Count = Annotated[int | None, Range(ge=1)]


def default_phone_flops() -> float:
    from simfed.timing.generators.phones import AI_SCORE_Q, score_to_flops_fit

    a, b = score_to_flops_fit()
    return math.exp(a + b * math.log(AI_SCORE_Q[10]))  # the median score


def unique_ids(ids: Iterable[str], raw: Iterable[object], where: str, what: str = "entries") -> list[str]:
    """``ids`` as a list, after checking that no two entries map to the same device id.

    ``raw`` are the source's own keys (a pickle may hold both ``7`` and ``"7"``, which are
    different keys but the same device id).

    Raises:
        TraceError: two entries map to one id (names both source keys and the id).
    """
    seen: dict[str, object] = {}
    out = []
    for did, key in zip(ids, raw):
        if did in seen:
            raise TraceError(f"{where}: {what} {seen[did]!r} and {key!r} would both become device id {did!r}")
        seen[did] = key
        out.append(did)
    return out


def report_dropped(fmt: str, n_dropped: int, n_total: int, why: str) -> None:
    """Warn (one :class:`~simfed.errors.SimfedWarning`) that an import left out entries, with their count."""
    if n_dropped:
        from simfed.errors import SimfedWarning

        warnings.warn(f"{fmt}: {n_dropped} of {n_total} entries dropped: {why}", SimfedWarning, stacklevel=3)


def existing_file(path: str | os.PathLike, fmt: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise TraceError(f"{p}: no such file (importing {fmt})")
    return p


class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickle plain containers and numbers only: a trace file must not be able to run code.

    FedScale's pickles hold dicts, lists, ints, floats and strings; numpy scalars are also let
    through because such files are often written from numpy values.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"), ("numpy", "dtype"),
        ("collections", "OrderedDict"), ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"),
    }  # fmt: skip

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only plain data is allowed in a trace pickle)")


def load_plain_pickle(path: Path, fmt: str):
    try:
        with open(path, "rb") as fh:
            return _PlainDataUnpickler(fh).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError, IndexError) as exc:
        raise TraceError(f"{path}: not a readable {fmt} pickle ({exc})") from None
