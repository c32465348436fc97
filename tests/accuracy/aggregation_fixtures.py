"""Shared inputs of the aggregator tests: a small model shape, the scale rule, structures and random updates."""

from __future__ import annotations

import numpy as np
import torch

from simfed.accuracy.adapters import MODULES, DeviceUpdate, Kept, LoRAFactors, module_dims
from simfed.accuracy.aggregators import rslora_rule
from simfed.accuracy.aggregators.base import restriction
from simfed.structure import ModelShape

SHAPE = ModelShape(n_layers=2, d_model=8, n_heads=4, n_kv_heads=2, head_dim=2, d_ff=6, vocab_size=11)
RULE = rslora_rule(2.0)


def pruned(groups: list[int], channels: list[int]) -> Kept:
    """The same kept KV groups and MLP channels in every layer of :data:`SHAPE`."""
    return Kept(groups=[np.array(groups) for _ in range(SHAPE.n_layers)],
                channels=[np.array(channels) for _ in range(SHAPE.n_layers)])


FULL = Kept.full(SHAPE)
HALF = pruned([1], [0, 2, 5])


def random_update(rank: int, kept: Kept, n_samples: int, seed: int, scale: float | None = None) -> DeviceUpdate:
    """A device's update with Gaussian factors of ``rank`` in the structure ``kept`` (scale: the rule's)."""
    gen = torch.Generator().manual_seed(seed)
    f = LoRAFactors(rank=rank, scale=RULE(rank) if scale is None else scale)
    for layer in range(SHAPE.n_layers):
        for m in MODULES:
            rows, cols = restriction(SHAPE, kept, (layer, m))
            d_out, d_in = module_dims(SHAPE, m)
            f.A[(layer, m)] = torch.randn(rank, d_in if cols is None else len(cols), generator=gen)
            f.B[(layer, m)] = torch.randn(d_out if rows is None else len(rows), rank, generator=gen)
    return DeviceUpdate(factors=f, kept=kept, n_samples=n_samples)
