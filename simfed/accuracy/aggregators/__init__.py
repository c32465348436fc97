"""Heterogeneous LoRA aggregation: a name -> class registry.

A new aggregator is one file defining an :class:`~simfed.accuracy.aggregators.base.Aggregator`
subclass plus one line in :data:`AGGREGATORS`. See ``docs/aggregation.md``.
"""

from __future__ import annotations

from typing import Sequence

from simfed.accuracy.adapters import MODULES
from simfed.accuracy.aggregators.base import (
    Aggregator,
    Key,
    ScaleRule,
    constant_scale,
    layer_energy_in_top,
    lora_scale,
    rslora_scale,
    scale_rule,
    singular_value_energy,
)
from simfed.accuracy.aggregators.fedavg import FedAvgLoRA
from simfed.accuracy.aggregators.flexlora import FlexLoRA
from simfed.accuracy.aggregators.hetlora import HetLoRA
from simfed.structure import ModelShape

AGGREGATORS: dict[str, type[Aggregator]] = {
    "flexlora": FlexLoRA,  # default for FedSpine
    "hetlora": HetLoRA,
    "fedavg": FedAvgLoRA,
}

DEFAULT_AGGREGATOR = "flexlora"


def make_aggregator(
    name: str,
    shape: ModelShape,
    r_max: int,
    scale_rule: ScaleRule,
    seed: int,
    modules: Sequence[str] = MODULES,
) -> Aggregator:
    """Build the aggregator registered as ``name``."""
    if name not in AGGREGATORS:
        raise ValueError(f"unknown aggregator {name!r}; choose one of {sorted(AGGREGATORS)}")
    return AGGREGATORS[name](shape, r_max, scale_rule, seed, modules=modules)


__all__ = [
    "AGGREGATORS",
    "DEFAULT_AGGREGATOR",
    "Aggregator",
    "FedAvgLoRA",
    "FlexLoRA",
    "HetLoRA",
    "Key",
    "ScaleRule",
    "constant_scale",
    "layer_energy_in_top",
    "lora_scale",
    "make_aggregator",
    "rslora_scale",
    "scale_rule",
    "singular_value_energy",
]
