"""The LoRA payload that moves between server and devices, in the device's own rank and structure.

A device's structure is its kept KV groups and MLP channels per layer (:class:`Kept`). LoRA sits on
the seven linears of every decoder layer. Pruning shrinks, in full-model coordinates:

- the *output* rows of ``q`` (kept heads x head_dim), ``k``/``v`` (kept KV groups x head_dim),
  ``gate``/``up`` (kept channels): their ``B`` loses rows;
- the *input* columns of ``o`` (kept heads x head_dim) and ``down`` (kept channels): their ``A``
  loses columns.

The hidden size never shrinks, so the other side of every factor is always full. Factors carry the
scale they are applied with (``delta_W = scale * B @ A``), so aggregators can work on exact products
whatever each device's rank.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from simfed.structure import DECODER_MODULES, ModelShape, Structure

MODULES: tuple[str, ...] = DECODER_MODULES  # the seven linears of a decoder block (one definition: simfed.structure)
OUT_PRUNED: frozenset[str] = frozenset({"q", "k", "v", "gate", "up"})  # pruning removes rows (d_out)
IN_PRUNED: frozenset[str] = frozenset({"o", "down"})  # pruning removes columns (d_in)


def module_dims(shape: ModelShape, module: str) -> tuple[int, int]:
    """Full (d_out, d_in) of one adapted linear."""
    d, hd = shape.d_model, shape.head_dim
    return {
        "q": (shape.n_heads * hd, d),
        "k": (shape.n_kv_heads * hd, d),
        "v": (shape.n_kv_heads * hd, d),
        "o": (d, shape.n_heads * hd),
        "gate": (shape.d_ff, d),
        "up": (shape.d_ff, d),
        "down": (d, shape.d_ff),
    }[module]


@dataclass
class Kept:
    """One device's structure: sorted kept KV-group and channel indices, per layer."""

    groups: list[np.ndarray]
    channels: list[np.ndarray]

    @classmethod
    def full(cls, shape: ModelShape) -> "Kept":
        return cls(
            groups=[np.arange(shape.n_kv_heads) for _ in range(shape.n_layers)],
            channels=[np.arange(shape.d_ff) for _ in range(shape.n_layers)],
        )

    def structure(self) -> Structure:
        """Kept counts (the same in every layer by construction)."""
        return Structure(kv_groups=len(self.groups[0]), channels=len(self.channels[0]))

    def heads(self, shape: ModelShape, layer: int) -> np.ndarray:
        """Kept query-head indices of a layer (every head of every kept KV group)."""
        g = self.groups[layer]
        gs = shape.group_size
        return (g[:, None] * gs + np.arange(gs)[None, :]).reshape(-1)

    def index(self, shape: ModelShape, layer: int, module: str) -> np.ndarray:
        """Full-model indices of the pruned side of ``module`` in ``layer`` (rows or columns)."""
        hd = shape.head_dim
        if module in ("q", "o"):
            units = self.heads(shape, layer)
        elif module in ("k", "v"):
            units = self.groups[layer]
        else:
            return np.asarray(self.channels[layer])
        return (units[:, None] * hd + np.arange(hd)[None, :]).reshape(-1)

    def copy(self) -> "Kept":
        return Kept([g.copy() for g in self.groups], [c.copy() for c in self.channels])


@dataclass
class LoRAFactors:
    """LoRA factors of every adapted linear, in a device's structure.

    ``A[(layer, module)]`` is ``[rank, d_in_kept]`` and ``B[(layer, module)]`` is
    ``[d_out_kept, rank]``; the applied update is ``scale * B @ A``.

    ``base_delta`` (downlinks only; None for most methods): a dense update per linear, ``[d_out_kept,
    d_in_kept]`` in the device's structure, that the device adds to its frozen weights before it attaches
    the adapter, i.e. what a method that merges into the base (FLoRA) has merged so far. Its tensors may
    be shared with the server's: read them, never write into them.
    """

    rank: int
    scale: float
    A: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)
    B: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)
    base_delta: Mapping[tuple[int, str], torch.Tensor] | None = None

    def delta(self, key: tuple[int, str]) -> torch.Tensor:
        return self.scale * (self.B[key] @ self.A[key])

    def num_params(self) -> int:
        return sum(a.numel() for a in self.A.values()) + sum(b.numel() for b in self.B.values())


@dataclass
class DeviceUpdate:
    """What a device uploads: its trained factors, its structure and its data size."""

    factors: LoRAFactors
    kept: Kept
    n_samples: int
