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
from pathlib import Path

from simfed.timing.traces import TraceError

DEFAULT_RAM_BYTES = 4.0 * 1024**3


def default_phone_flops() -> float:
    from simfed.timing.generators.phones import AI_SCORE_Q, score_to_flops_fit

    a, b = score_to_flops_fit()
    return math.exp(a + b * math.log(AI_SCORE_Q[10]))  # the median score


def positive_option(name: str, value, fmt: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TraceError(f"{fmt}: option {name!r} must be a number, got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise TraceError(f"{fmt}: option {name!r} must be a positive finite number, got {value!r}")
    return v


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
