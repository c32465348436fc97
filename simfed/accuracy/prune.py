"""Structured pruning of KV groups and MLP channels, guided by an importance criterion.

Groups follow LLM-Pruner's dependency groups (Ma et al., arXiv 2305.11627): a KV group owns the
q rows of its query heads, its k and v rows, and the o columns of its query heads; an MLP channel
owns row j of gate and up and column j of down. Per layer, the groups with the lowest importance
are removed down to the counts :func:`simfed.structure.structure_at` fixes for the new nominal
sparsity (so the trainer always prunes to exactly what the cost model assumed).

Criteria (registry :data:`CRITERIA`; a new one is a function plus one registry line):

- ``lora-grad`` — FedSpine's, i.e. LoRAPrune's (Zhang et al., arXiv 2305.18403; FedSpine notes
  §3.3 Eq. 1–4): the frozen weight's gradient is estimated from the LoRA gradients,
  ``Ĝ = G_B·A + B·G_A − G_B·G_A``; element importance ``|Ĝ ⊙ (W + s·B·A)|``; summed per group;
  normalised per layer (each kind, groups and channels, by its L2 norm); smoothed with an EMA
  (β = 0.9) over the local iterations before a pruning step. Needs no weight gradients.
- ``taylor`` — LLM-Pruner's first-order element-wise Taylor score ``|w · ∂L/∂w|`` summed per group;
  needs weight gradients, so it is used one-shot (prune-then-tune baseline).
- ``magnitude`` — the sum of ``|w|`` over each group (a data-free baseline).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from simfed.accuracy.adapters import MODULES, Kept
from simfed.accuracy.model import Block, Model, SelectHook
from simfed.structure import Structure

# Per layer: (KV-group scores [n_kv_kept], channel scores [n_channels_kept]), in the layer's current
# (local) order.
LayerScores = tuple[torch.Tensor, torch.Tensor]
Criterion = Callable[[Model], list[LayerScores]]


ATTENTION_MODULES: tuple[str, ...] = ("q", "k", "v", "o")  # the linears a KV group owns rows/columns of
MLP_MODULES: tuple[str, ...] = ("gate", "up", "down")  # the linears an MLP channel owns a row/column of


def _group_sums(block: Block, head_dim: int, elem: dict[str, torch.Tensor]) -> LayerScores:
    """Sum element importances ``elem[module]`` (``[out, in]``) over KV groups and MLP channels.

    ``elem`` may hold a subset of the seven linears (LoRA on some targets only: ``lora-grad`` sees only
    adapted linears); each kind needs at least one of its linears, else ``ValueError``.
    """
    n_kv = block.attn.k.weight.shape[0] // head_dim
    if not any(m in elem for m in ATTENTION_MODULES) or not any(m in elem for m in MLP_MODULES):
        raise ValueError(
            f"importance needs at least one attention linear ({', '.join(ATTENTION_MODULES)}) and one MLP linear "
            f"({', '.join(MLP_MODULES)}); got only {sorted(elem)}"
        )
    # a group's q rows (its heads) and k/v rows are contiguous; o's columns likewise
    parts = [elem[m].sum(1).view(n_kv, -1).sum(1) for m in ("q", "k", "v") if m in elem]
    if "o" in elem:
        parts.append(elem["o"].sum(0).view(n_kv, -1).sum(1))
    channel_parts = [elem[m].sum(1) for m in ("gate", "up") if m in elem]
    if "down" in elem:
        channel_parts.append(elem["down"].sum(0))
    return sum(parts[1:], parts[0]), sum(channel_parts[1:], channel_parts[0])


def _normalise(scores: LayerScores) -> LayerScores:
    g, c = scores
    return g / g.norm().clamp_min(1e-30), c / c.norm().clamp_min(1e-30)


@torch.no_grad()
def lora_grad_scores(model: Model) -> list[LayerScores]:
    """FedSpine/LoRAPrune importance from the LoRA factors' current ``.grad`` (after a backward)."""
    hd = model.config.head_dim
    out = []
    for block in model.layers:
        elem = {}
        for m in MODULES:
            lin = block.linear(m)
            if lin.lora_A is None:  # LoRA on some targets only: this linear tells nothing
                continue
            A, B, gA, gB = lin.lora_A, lin.lora_B, lin.lora_A.grad, lin.lora_B.grad
            if gA is None or gB is None:
                raise ValueError("lora-grad importance needs LoRA gradients: call it after backward()")
            g_hat = torch.addmm(gB @ A, B - gB, gA)  # = G_B·A + B·G_A − G_B·G_A
            # W + s·B·A in float32 (the frozen W may be stored in bf16/fp16; .float() is a no-op for fp32)
            merged = torch.addmm(lin.weight.float(), B, A, alpha=lin.lora_scale)
            elem[m] = (g_hat * merged).abs_()
        out.append(_normalise(_group_sums(block, hd, elem)))
    return out


@torch.no_grad()
def taylor_scores(model: Model) -> list[LayerScores]:
    """LLM-Pruner's element-wise first-order Taylor ``|w · ∂L/∂w|`` from the weights' ``.grad``."""
    hd = model.config.head_dim
    out = []
    for block in model.layers:
        elem = {}
        for m in MODULES:
            w = block.linear(m).weight
            if w.grad is None:
                raise ValueError("taylor importance needs weight gradients (weights must require grad)")
            elem[m] = (w.float() * w.grad.float()).abs_()
        out.append(_normalise(_group_sums(block, hd, elem)))
    return out


@torch.no_grad()
def magnitude_scores(model: Model) -> list[LayerScores]:
    """Sum of ``|w|`` per group (no data needed)."""
    hd = model.config.head_dim
    return [
        _normalise(_group_sums(b, hd, {m: b.linear(m).weight.float().abs() for m in MODULES}))
        for b in model.layers
    ]


CRITERIA: dict[str, Criterion] = {
    "lora-grad": lora_grad_scores,
    "taylor": taylor_scores,
    "magnitude": magnitude_scores,
}
NEEDS_WEIGHT_GRAD: frozenset[str] = frozenset({"taylor"})
NEEDS_LORA_GRAD: frozenset[str] = frozenset({"lora-grad"})


def criterion(name: str) -> Criterion:
    try:
        return CRITERIA[name]
    except KeyError:
        raise ValueError(f"unknown importance criterion {name!r}; known: {', '.join(CRITERIA)}") from None


class ImportanceEMA:
    """Per-layer importance smoothed over iterations: ``Ī ← β Ī + (1 − β) I`` (LoRAPrune, β = 0.9).

    The first update sets ``Ī = I`` (an EMA started at zero has the same ranking but a different
    scale, which only matters if scores are compared across steps). :meth:`keep` slices the state
    when the model is pruned, so the EMA always matches the model's current structure.
    """

    def __init__(self, beta: float = 0.9) -> None:
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"EMA beta must be in [0, 1), got {beta}")
        self.beta = beta
        self.scores: list[LayerScores] | None = None
        self.updates = 0

    def update(self, scores: list[LayerScores]) -> None:
        if self.scores is None:
            self.scores = [(g.clone(), c.clone()) for g, c in scores]
        else:
            for (eg, ec), (g, c) in zip(self.scores, scores):
                eg.mul_(self.beta).add_(g, alpha=1 - self.beta)
                ec.mul_(self.beta).add_(c, alpha=1 - self.beta)
        self.updates += 1

    def keep(self, kept_local: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        if self.scores is not None:
            self.scores = [(g[kg.to(g.device)], c[kc.to(c.device)]) for (g, c), (kg, kc) in zip(self.scores, kept_local)]


def select_kept(scores: list[LayerScores], target: Structure) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the local indices (sorted) of the ``target`` highest-scoring groups and channels.

    Ties are broken towards the lower index (stable sort), so selection is deterministic. The
    indices come back on the CPU whatever device the scores are on.
    """
    kept = []
    for g, c in scores:
        if target.kv_groups > len(g) or target.channels > len(c):
            raise ValueError(
                f"cannot prune to {target.kv_groups} KV groups / {target.channels} channels: the model has only "
                f"{len(g)} / {len(c)} left (pruning never grows a model)"
            )
        kg = torch.sort(torch.argsort(-g.cpu(), stable=True)[: target.kv_groups]).values
        kc = torch.sort(torch.argsort(-c.cpu(), stable=True)[: target.channels]).values
        kept.append((kg, kc))
    return kept


def prune_step(
    model: Model,
    kept: Kept,
    scores: list[LayerScores],
    target: Structure,
    ema: ImportanceEMA | None = None,
    on_select: SelectHook | None = None,
) -> Kept:
    """Remove the lowest-scoring groups/channels of every layer down to ``target`` counts.

    Physically index-selects the frozen weights and any attached LoRA factors (B rows / A columns),
    slices ``ema`` to match, and returns the new :class:`Kept` in full-model indices.
    """
    local = select_kept(scores, target)
    model.prune_to(local, on_select)
    if ema is not None:
        ema.keep(local)
    return Kept(
        groups=[kept.groups[l][kg.numpy()] for l, (kg, _) in enumerate(local)],
        channels=[kept.channels[l][kc.numpy()] for l, (_, kc) in enumerate(local)],
    )


def prune_model_to_kept(model: Model, current: Kept, target: Kept) -> None:
    """Prune ``model`` (currently at structure ``current``) to the sub-structure ``target`` (full indices)."""
    local = []
    for l in range(len(current.groups)):
        g_pos = np.minimum(np.searchsorted(current.groups[l], target.groups[l]), len(current.groups[l]) - 1)
        c_pos = np.minimum(np.searchsorted(current.channels[l], target.channels[l]), len(current.channels[l]) - 1)
        if not (np.array_equal(current.groups[l][g_pos], target.groups[l]) and np.array_equal(current.channels[l][c_pos], target.channels[l])):
            raise ValueError(f"layer {l}: the target structure is not a subset of the current one")
        local.append((torch.as_tensor(g_pos), torch.as_tensor(c_pos)))
    model.prune_to(local)
