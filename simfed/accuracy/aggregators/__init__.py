"""Heterogeneous LoRA aggregation: a name -> class registry.

A new aggregator is one file defining an :class:`~simfed.accuracy.aggregators.base.Aggregator`
subclass plus one line in :data:`AGGREGATORS`. See ``docs/aggregation.md``.
"""

from __future__ import annotations

from typing import Sequence

import torch

from simfed.accuracy.adapters import MODULES
from simfed.accuracy.aggregators.base import (
    Aggregator,
    Key,
    ScaleRule,
    constant_rule,
    layer_energy_in_top,
    classic_lora_rule,
    rslora_rule,
    scale_rule,
    singular_value_energy,
)
from simfed.accuracy.aggregators.fedavg import FedAvgLoRA
from simfed.accuracy.aggregators.flexlora import FlexLoRA
from simfed.accuracy.aggregators.flora import FLoRA
from simfed.accuracy.aggregators.hetlora import HetLoRA
from simfed.structure import ModelShape

AGGREGATORS: dict[str, type[Aggregator]] = {
    "flexlora": FlexLoRA,  # default for FedSpine
    "hetlora": HetLoRA,
    "fedavg": FedAvgLoRA,
    "flora": FLoRA,
}

DEFAULT_AGGREGATOR = "flexlora"


def aggregator_class(spec: "str | type[Aggregator]") -> type[Aggregator]:
    """The aggregator class a registered name, a ``module:Class`` path or a class stands for.

    Raises:
        ValueError: an unknown name, or a class (or path) that is not an :class:`Aggregator` subclass.
    """
    if isinstance(spec, type):
        if not issubclass(spec, Aggregator):
            raise ValueError(f"{spec.__qualname__} is not an Aggregator subclass")
        return spec
    if spec in AGGREGATORS:
        return AGGREGATORS[spec]
    if ":" in spec:
        from simfed.plugins import load_class

        return load_class(spec, Aggregator, "aggregator")
    raise ValueError(f"unknown aggregator {spec!r}; choose one of {sorted(AGGREGATORS)} (or a module:Class of your own)")


def make_aggregator(
    name: "str | type[Aggregator]",
    shape: ModelShape,
    r_max: int,
    scale_rule: ScaleRule,
    seed: int,
    modules: Sequence[str] = MODULES,
    device: "torch.device | str | None" = None,
) -> Aggregator:
    """Build the aggregator ``name`` stands for (:func:`aggregator_class`), holding and merging the global
    adapter on ``device`` (default: the CPU)."""
    return aggregator_class(name)(shape, r_max, scale_rule, seed, modules=modules, device=device)


__all__ = [
    "AGGREGATORS",
    "DEFAULT_AGGREGATOR",
    "aggregator_class",
    "Aggregator",
    "FedAvgLoRA",
    "FlexLoRA",
    "FLoRA",
    "HetLoRA",
    "Key",
    "ScaleRule",
    "constant_rule",
    "layer_energy_in_top",
    "classic_lora_rule",
    "make_aggregator",
    "rslora_rule",
    "scale_rule",
    "singular_value_energy",
]
