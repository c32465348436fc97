"""Structured pruning: counts follow structure_at, criteria rank useless groups last, EMA and selection."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from simfed.accuracy.adapters import Kept
from simfed.accuracy.lora import init_factors, load_factors
from simfed.accuracy.model import Model, ModelConfig
from simfed.accuracy.prune import (
    CRITERIA,
    ImportanceEMA,
    criterion,
    lora_grad_scores,
    magnitude_scores,
    prune_model_to_kept,
    prune_step,
    select_kept,
    taylor_scores,
)
from simfed.structure import Structure, sparsity_of, structure_at




def make_model(n_kv_heads: int = 4, seed: int = 0) -> Model:
    torch.manual_seed(seed)
    m = Model(ModelConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=8, n_kv_heads=n_kv_heads, d_ff=64, max_seq_len=32))
    m.freeze_base()
    return m


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 40, (4, 16), generator=g)
    return x, torch.roll(x, -1, 1)


def cripple(model: Model, group: int, channel: int) -> None:
    """Make KV group ``group`` and channel ``channel`` of layer 0 useless (their outputs never reach the loss)."""
    hd = model.config.head_dim
    gs = model.config.n_heads // model.config.n_kv_heads
    with torch.no_grad():
        block = model.layers[0]
        block.attn.o.weight[:, group * gs * hd : (group + 1) * gs * hd] = 0
        block.mlp.down.weight[:, channel] = 0


@pytest.mark.parametrize("n_kv_heads", [4, 2])
@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.7])
def test_prune_step_reaches_structure_at_counts(n_kv_heads, sparsity):
    model = make_model(n_kv_heads)
    shape = model.config.shape()
    kept = prune_step(model, Kept.full(shape), magnitude_scores(model), structure_at(shape, sparsity))
    target = structure_at(shape, sparsity)
    assert kept.structure() == target
    assert sparsity_of(shape, kept.structure()) == pytest.approx(sparsity_of(shape, target))
    for layer, block in enumerate(model.layers):
        assert block.attn.k.weight.shape[0] == target.kv_groups * shape.head_dim
        assert block.attn.q.weight.shape[0] == target.kv_groups * shape.group_size * shape.head_dim
        assert block.mlp.down.weight.shape[1] == target.channels
        assert np.all(np.diff(kept.groups[layer]) > 0)  # sorted, unique, full-model indices


def test_iterative_pruning_keeps_full_model_indices():
    """Two steps == one step to the same Kept: indices are in full-model coordinates."""
    model = make_model()
    shape = model.config.shape()
    reference = copy.deepcopy(model)
    k1 = prune_step(model, Kept.full(shape), magnitude_scores(model), structure_at(shape, 0.25))
    k2 = prune_step(model, k1, magnitude_scores(model), structure_at(shape, 0.5))
    for layer in range(shape.n_layers):
        assert set(k2.groups[layer]) <= set(k1.groups[layer])
        assert set(k2.channels[layer]) <= set(k1.channels[layer])
    prune_model_to_kept(reference, Kept.full(shape), k2)
    x, _ = batch()
    assert torch.allclose(model(x)[0], reference(x)[0], atol=1e-6)


def test_cannot_grow_back():
    model = make_model()
    shape = model.config.shape()
    kept = prune_step(model, Kept.full(shape), magnitude_scores(model), structure_at(shape, 0.5))
    with pytest.raises(ValueError, match="never grows"):
        prune_step(model, kept, magnitude_scores(model), structure_at(shape, 0.0))


def lora_grad_after_backward(model: Model, rank: int = 4, steps: int = 1) -> list:
    shape = model.config.shape()
    params = load_factors(model, init_factors(shape, Kept.full(shape), rank, torch.Generator().manual_seed(1)))
    opt = torch.optim.AdamW(params, lr=1e-2)
    ema = ImportanceEMA(0.9)
    for s in range(steps):
        x, y = batch(s)
        opt.zero_grad()
        model(x, y)[1].backward()
        ema.update(lora_grad_scores(model))
        opt.step()
    return ema.scores


def weight_grad_scores(model: Model) -> list:
    for p in model.parameters():
        p.requires_grad_(True)
    x, y = batch()
    model(x, y)[1].backward()
    return taylor_scores(model)


@pytest.mark.parametrize("name", ["lora-grad", "lora-grad-ema", "taylor"])
def test_useless_group_and_channel_rank_last(name):
    model = make_model()
    cripple(model, group=2, channel=17)
    if name == "taylor":
        scores = weight_grad_scores(model)
    else:
        scores = lora_grad_after_backward(model, steps=1 if name == "lora-grad" else 5)
    groups, channels = scores[0]
    assert int(torch.argmin(groups)) == 2
    assert int(torch.argmin(channels)) == 17
    kept = select_kept(scores, Structure(kv_groups=3, channels=63))
    assert 2 not in kept[0][0].tolist() and 17 not in kept[0][1].tolist()


def test_magnitude_ranks_zeroed_group_last():
    model = make_model()
    hd, gs = model.config.head_dim, 2
    with torch.no_grad():
        b = model.layers[1]
        rows = slice(1 * gs * hd, 2 * gs * hd)
        b.attn.q.weight[rows] = 0
        b.attn.o.weight[:, rows] = 0
        b.attn.k.weight[hd : 2 * hd] = 0
        b.attn.v.weight[hd : 2 * hd] = 0
    assert int(torch.argmin(magnitude_scores(model)[1][0])) == 1


def test_scores_are_normalised_per_layer():
    model = make_model()
    for g, c in lora_grad_after_backward(model):
        assert float(g.norm()) == pytest.approx(1.0, rel=1e-5)
        assert float(c.norm()) == pytest.approx(1.0, rel=1e-5)


def test_lora_grad_matches_closed_form():
    """Ĝ = G_B·A + B·G_A − G_B·G_A and |Ĝ ⊙ (W + s·B·A)| on one linear, summed per channel."""
    model = make_model()
    shape = model.config.shape()
    f = init_factors(shape, Kept.full(shape), 3, torch.Generator().manual_seed(0))
    for k in f.B:
        f.B[k] = torch.randn(f.B[k].shape) * 0.05
    load_factors(model, f)
    x, y = batch()
    model(x, y)[1].backward()
    scores = lora_grad_scores(model)
    block = model.layers[0]
    elem = {}
    for m in ("gate", "up", "down"):
        lin = block.linear(m)
        A, B, gA, gB = lin.lora_A, lin.lora_B, lin.lora_A.grad, lin.lora_B.grad
        g_hat = gB @ A + B @ gA - gB @ gA
        elem[m] = (g_hat * (lin.weight + lin.lora_scale * B @ A)).abs()
    raw = elem["gate"].sum(1) + elem["up"].sum(1) + elem["down"].sum(0)
    assert torch.allclose(scores[0][1], raw / raw.norm(), atol=1e-6)


def test_ema_update_and_keep():
    ema = ImportanceEMA(0.9)
    ema.update([(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0, 4.0]))])
    ema.update([(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 2.0, 2.0]))])
    g, c = ema.scores[0]
    assert torch.allclose(g, torch.tensor([0.9, 0.1]))
    assert torch.allclose(c, torch.tensor([0.2, 2.0, 3.8]))
    ema.keep([(torch.tensor([1]), torch.tensor([0, 2]))])
    assert torch.allclose(ema.scores[0][1], torch.tensor([0.2, 3.8]))
    with pytest.raises(ValueError):
        ImportanceEMA(1.0)


def test_selection_is_deterministic_on_ties():
    scores = [(torch.ones(4), torch.zeros(6))]
    kept = select_kept(scores, Structure(kv_groups=2, channels=3))
    assert kept[0][0].tolist() == [0, 1] and kept[0][1].tolist() == [0, 1, 2]


def test_registry_and_errors():
    assert set(CRITERIA) == {"lora-grad", "taylor", "magnitude"}
    with pytest.raises(ValueError, match="unknown importance criterion"):
        criterion("random")
    model = make_model()
    with pytest.raises(ValueError, match="weight gradients"):
        taylor_scores(model)
