"""LoRA on the seven linears of every decoder block, with a per-device rank (Hu et al., arXiv 2106.09685).

The applied update of a linear is ``scale * B @ A`` with ``A`` ``[r, d_in]`` and ``B`` ``[d_out, r]``.
**Scale rule**: rank-stabilised LoRA (Kalajdzievski, arXiv 2312.03732), ``scale = alpha / sqrt(r)``.
With the usual ``alpha / r`` a rank-16 adapter learns far more slowly than a rank-2 one at the same
learning rate; FedSpine's bandit compares ranks inside one run, so updates must stay comparable
across ranks, which ``alpha / sqrt(r)`` gives. The scale travels inside :class:`LoRAFactors`, so
aggregators always work on exact products.

Initialisation follows PEFT's default: ``A`` Kaiming-uniform (``a = sqrt(5)``), ``B = 0``, so a fresh
adapter is a no-op. Factors move between server and device as :class:`LoRAFactors` already sliced to
the device's rank and structure (see :mod:`simfed.accuracy.adapters`); :func:`slice_factors` does
the slicing from full-model, full-rank factors.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from simfed.accuracy.adapters import IN_PRUNED, MODULES, OUT_PRUNED, Kept, LoRAFactors, module_dims
from simfed.accuracy.model import Linear, Model
from simfed.structure import ModelShape

DEFAULT_ALPHA = 8.0


def lora_scale(rank: int, alpha: float = DEFAULT_ALPHA) -> float:
    """rsLoRA's ``alpha / sqrt(rank)``."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    return alpha / math.sqrt(rank)


def adapted_linears(model: Model, modules: Sequence[str] = MODULES) -> dict[tuple[int, str], Linear]:
    """(layer, module) -> the linear carrying that adapter, for the ``modules`` of every layer (default: all seven)."""
    return {(i, m): block.linear(m) for i, block in enumerate(model.layers) for m in MODULES if m in modules}


def check_modules(modules: Sequence[str]) -> tuple[str, ...]:
    """``modules`` in :data:`MODULES` order; ``ValueError`` for an empty list, an unknown name or a repeat."""
    unknown = [m for m in modules if m not in MODULES]
    if unknown or not modules or len(set(modules)) != len(modules):
        raise ValueError(f"LoRA modules must be distinct names among {', '.join(MODULES)}, got {list(modules)}")
    return tuple(m for m in MODULES if m in modules)


def init_factors(
    shape: ModelShape,
    kept: Kept,
    rank: int,
    generator: torch.Generator,
    alpha: float = DEFAULT_ALPHA,
    modules: Sequence[str] = MODULES,
) -> LoRAFactors:
    """Fresh factors in a structure on the ``modules`` of every layer: ``A`` Kaiming-uniform, ``B`` zero
    (the adapter starts as a no-op)."""
    factors = LoRAFactors(rank=rank, scale=lora_scale(rank, alpha))
    modules = check_modules(modules)
    for layer in range(shape.n_layers):
        for m in modules:
            d_out, d_in = _kept_dims(shape, kept, layer, m)
            bound = 1.0 / math.sqrt(d_in)  # kaiming_uniform_(a=sqrt(5)) on a [r, d_in] matrix
            factors.A[(layer, m)] = (torch.rand(rank, d_in, generator=generator) * 2 - 1) * bound
            factors.B[(layer, m)] = torch.zeros(d_out, rank)
    return factors


def _kept_dims(shape: ModelShape, kept: Kept, layer: int, module: str) -> tuple[int, int]:
    d_out, d_in = module_dims(shape, module)
    n = len(kept.index(shape, layer, module))
    return (n, d_in) if module in OUT_PRUNED else (d_out, n)


def slice_factors(full: LoRAFactors, shape: ModelShape, kept: Kept, rank: int, alpha: float | None = None) -> LoRAFactors:
    """Cut full-model factors down to a structure and a rank (``rank <= full.rank``).

    Rows of ``B`` (output-pruned linears) or columns of ``A`` (input-pruned linears) are
    index-selected with the device's kept indices; the first ``rank`` components are kept. When the
    scale rule gives the new rank a different scale, ``B`` is rescaled so each kept component's
    product ``scale * b_j a_j`` is unchanged (slicing never silently rescales the update).
    """
    if not 1 <= rank <= full.rank:
        raise ValueError(f"cannot slice rank-{full.rank} factors to rank {rank}")
    scale = full.scale if alpha is None else lora_scale(rank, alpha)
    ratio = full.scale / scale
    out = LoRAFactors(rank=rank, scale=scale)
    for (layer, m), A in full.A.items():
        B = full.B[(layer, m)]
        idx = torch.as_tensor(kept.index(shape, layer, m), dtype=torch.long)
        A, B = A[:rank], B[:, :rank]
        if m in OUT_PRUNED:
            B = B.index_select(0, idx)
        else:
            A = A.index_select(1, idx)
        out.A[(layer, m)] = A.clone()
        out.B[(layer, m)] = (B * ratio).clone() if ratio != 1.0 else B.clone()
    return out


def truncate_rank(factors: LoRAFactors, rank: int, alpha: float | None = None) -> LoRAFactors:
    """The first ``rank`` components of ``factors`` (``A[:rank]``, ``B[:, :rank]``; same structure).

    With ``alpha`` the new rank gets its own scale (:func:`lora_scale`) and ``B`` is rescaled so that
    ``scale · B[:, :rank] @ A[:rank]`` is unchanged: the kept components' update, exactly. Raises
    ``ValueError`` unless ``1 <= rank <= factors.rank``.
    """
    if not 1 <= rank <= factors.rank:
        raise ValueError(f"cannot truncate rank-{factors.rank} factors to rank {rank}")
    scale = factors.scale if alpha is None else lora_scale(rank, alpha)
    ratio = factors.scale / scale
    out = LoRAFactors(rank=rank, scale=scale)
    for key, A in factors.A.items():
        out.A[key] = A[:rank].clone()
        out.B[key] = factors.B[key][:, :rank] * ratio if ratio != 1.0 else factors.B[key][:, :rank].clone()
    return out


def load_factors(model: Model, factors: LoRAFactors, modules: Sequence[str] = MODULES) -> list[nn.Parameter]:
    """Attach ``factors`` (copied) to the ``modules`` of every layer as trainable adapters; returns the LoRA
    parameters. The factors are copied to the model's device as float32 (master weights: under mixed
    precision only the frozen base is stored in the low-precision type).

    Shapes must match the model's current (pruned) structure exactly: a mismatch means the server
    sent factors for a different structure, which is an error, not something to pad over. Raises
    ``KeyError`` when ``factors`` lacks one of the linears.
    """
    params: list[nn.Parameter] = []
    for key, lin in adapted_linears(model, check_modules(modules)).items():
        if key not in factors.A:
            raise KeyError(f"LoRA factors lack layer {key[0]} module {key[1]!r}")
        A, B = factors.A[key], factors.B[key]
        d_out, d_in = lin.weight.shape
        if A.shape != (factors.rank, d_in) or B.shape != (d_out, factors.rank):
            raise ValueError(
                f"LoRA factors for layer {key[0]} module {key[1]!r} have A{tuple(A.shape)} B{tuple(B.shape)}, "
                f"the model needs A({factors.rank}, {d_in}) B({d_out}, {factors.rank})"
            )
        lin.lora_A = nn.Parameter(A.detach().to(device=lin.weight.device, dtype=torch.float32, copy=True))
        lin.lora_B = nn.Parameter(B.detach().to(device=lin.weight.device, dtype=torch.float32, copy=True))
        lin.lora_scale = float(factors.scale)
        params += [lin.lora_A, lin.lora_B]
    return params


def read_factors(model: Model) -> LoRAFactors:
    """The model's current adapters as detached :class:`LoRAFactors` (in its current structure, on its device).

    Only the linears that carry an adapter are read; ``ValueError`` when none does.
    """
    linears = {key: lin for key, lin in adapted_linears(model).items() if lin.lora_A is not None}
    if not linears:
        raise ValueError("the model carries no LoRA adapters")
    first = next(iter(linears.values()))
    out = LoRAFactors(rank=first.lora_A.shape[0], scale=first.lora_scale)
    for key, lin in linears.items():
        out.A[key] = lin.lora_A.detach().clone()
        out.B[key] = lin.lora_B.detach().clone()
    return out


def remove_adapters(model: Model) -> None:
    """Drop all adapters (the base model stays as it is)."""
    for lin in adapted_linears(model).values():
        lin.lora_A = None
        lin.lora_B = None
        lin.lora_scale = 0.0


def update_norm(factors: LoRAFactors) -> float:
    """Σ over adapted linears of ``‖scale · B @ A‖_F`` (the reward's update-importance term)."""
    return float(sum(torch.linalg.matrix_norm(factors.delta(key)) for key in factors.A))


__all__ = [
    "DEFAULT_ALPHA",
    "IN_PRUNED",
    "OUT_PRUNED",
    "adapted_linears",
    "check_modules",
    "init_factors",
    "load_factors",
    "lora_scale",
    "read_factors",
    "remove_adapters",
    "slice_factors",
    "truncate_rank",
    "update_norm",
]
