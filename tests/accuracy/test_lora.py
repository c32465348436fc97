"""LoRA: scale rule, exact load/read, slicing, equivalence with merged weights, pruning with adapters."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from simfed.accuracy.adapters import Kept, LoRAFactors
from simfed.accuracy.lora import (
    init_factors,
    load_factors,
    lora_scale,
    read_factors,
    remove_adapters,
    slice_factors,
    update_norm,
)
from simfed.accuracy.model import Model, ModelConfig




def make_model(seed: int = 0) -> Model:
    torch.manual_seed(seed)
    m = Model(ModelConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48, max_seq_len=32))
    m.freeze_base()
    return m


def random_factors(model: Model, kept: Kept, rank: int, seed: int = 0) -> LoRAFactors:
    """Factors with non-zero B (a trained adapter), in ``kept``'s structure."""
    gen = torch.Generator().manual_seed(seed)
    f = init_factors(model.config.shape(), kept, rank, gen)
    for key in f.B:
        f.B[key] = torch.randn(f.B[key].shape, generator=gen) * 0.1
    return f


def test_rslora_scale_rule():
    assert lora_scale(4, alpha=8.0) == pytest.approx(4.0)
    assert lora_scale(16, alpha=8.0) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        lora_scale(0)


def test_fresh_adapter_is_noop_and_roundtrip_is_exact():
    model = make_model()
    shape = model.config.shape()
    idx = torch.randint(0, 40, (2, 10))
    before = model(idx)[0]
    fresh = init_factors(shape, Kept.full(shape), 4, torch.Generator().manual_seed(0))
    load_factors(model, fresh)
    assert torch.equal(model(idx)[0], before)
    trained = random_factors(model, Kept.full(shape), 3)
    load_factors(model, trained)
    back = read_factors(model)
    assert back.rank == 3 and back.scale == trained.scale
    for key in trained.A:
        assert torch.equal(back.A[key], trained.A[key]) and torch.equal(back.B[key], trained.B[key])


def test_adapter_equals_merged_weights():
    model = make_model()
    shape = model.config.shape()
    factors = random_factors(model, Kept.full(shape), 4)
    merged = copy.deepcopy(model)
    with torch.no_grad():
        for (layer, m), _ in factors.A.items():
            lin = merged.layers[layer].linear(m)
            lin.weight += factors.delta((layer, m))
    load_factors(model, factors)
    idx = torch.randint(0, 40, (2, 12))
    assert torch.allclose(model(idx)[0], merged(idx)[0], atol=1e-5)
    remove_adapters(model)
    assert not torch.allclose(model(idx)[0], merged(idx)[0], atol=1e-3)


def test_update_norm_is_sum_of_frobenius_norms():
    model = make_model()
    f = random_factors(model, Kept.full(model.config.shape()), 2)
    expected = sum(math.sqrt(float((f.scale * f.B[k] @ f.A[k]).pow(2).sum())) for k in f.A)
    assert update_norm(f) == pytest.approx(expected, rel=1e-5)


def some_kept(shape, seed=0) -> Kept:
    rng = np.random.default_rng(seed)
    return Kept(
        groups=[np.sort(rng.choice(shape.n_kv_heads, 1, replace=False)) for _ in range(shape.n_layers)],
        channels=[np.sort(rng.choice(shape.d_ff, 30, replace=False)) for _ in range(shape.n_layers)],
    )


def test_slice_factors_is_exact_restriction_of_rank_r_product():
    model = make_model()
    shape = model.config.shape()
    full = random_factors(model, Kept.full(shape), 8)
    kept = some_kept(shape)
    for alpha in (None, 8.0):
        sliced = slice_factors(full, shape, kept, 3, alpha=alpha)
        assert sliced.rank == 3
        for key in full.A:
            layer, m = key
            rows = torch.arange(full.B[key].shape[0]) if m in ("o", "down") else torch.as_tensor(kept.index(shape, layer, m))
            cols = torch.as_tensor(kept.index(shape, layer, m)) if m in ("o", "down") else torch.arange(full.A[key].shape[1])
            expected = (full.scale * full.B[key][:, :3] @ full.A[key][:3])[rows][:, cols]
            assert torch.allclose(sliced.delta(key), expected, atol=1e-6)
    with pytest.raises(ValueError, match="rank"):
        slice_factors(full, shape, kept, 9)


def test_load_rejects_wrong_structure():
    model = make_model()
    shape = model.config.shape()
    sliced = slice_factors(random_factors(model, Kept.full(shape), 4), shape, some_kept(shape), 4)
    with pytest.raises(ValueError, match="layer 0 module 'q'"):
        load_factors(model, sliced)


def test_pruning_with_adapter_slices_factors_exactly():
    """Pruning an adapted model == loading the sliced factors into the pruned base."""
    model = make_model()
    shape = model.config.shape()
    factors = random_factors(model, Kept.full(shape), 4)
    kept = some_kept(shape, seed=3)
    local = [(torch.as_tensor(g), torch.as_tensor(c)) for g, c in zip(kept.groups, kept.channels)]

    adapted = copy.deepcopy(model)
    load_factors(adapted, factors)
    adapted.prune_to(local)

    reference = copy.deepcopy(model)
    reference.prune_to(local)
    load_factors(reference, slice_factors(factors, shape, kept, 4))

    got, want = read_factors(adapted), read_factors(reference)
    for key in factors.A:
        assert torch.equal(got.A[key], want.A[key]) and torch.equal(got.B[key], want.B[key])
    idx = torch.randint(0, 40, (2, 12))
    assert torch.allclose(adapted(idx)[0], reference(idx)[0], atol=1e-6)
