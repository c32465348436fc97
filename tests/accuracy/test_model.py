"""The decoder: shapes, HF-LLaMA numerics, and physical pruning == masking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simfed.accuracy.adapters import Kept
from simfed.accuracy.model import Model, ModelConfig
from simfed.accuracy.presets import preset




def small_config(n_kv_heads: int = 4) -> ModelConfig:
    return ModelConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads, d_ff=64, max_seq_len=32)


def make_model(n_kv_heads: int = 4, seed: int = 0) -> Model:
    torch.manual_seed(seed)
    return Model(small_config(n_kv_heads))


def test_forward_shapes_and_loss():
    model = make_model()
    idx = torch.randint(0, 50, (3, 10))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 10, 50)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert model(idx)[1] is None


def test_shape_and_param_count_agree():
    model = Model(preset("tiny"))
    assert model.num_params() == model.config.shape().total_params()
    assert model.num_params() < 3_000_000  # "a few million at most"


def test_rejects_too_long_sequence_and_bad_heads():
    model = make_model()
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="n_kv_heads"):
        ModelConfig(vocab_size=5, d_model=32, n_layers=1, n_heads=4, n_kv_heads=3, d_ff=8, max_seq_len=8)


def test_causal():
    model = make_model()
    idx = torch.randint(0, 50, (1, 12))
    changed = idx.clone()
    changed[0, 8] = (idx[0, 8] + 1) % 50
    a, _ = model(idx)
    b, _ = model(changed)
    assert torch.allclose(a[0, :8], b[0, :8], atol=1e-6)
    assert not torch.allclose(a[0, 8:], b[0, 8:], atol=1e-4)


def test_matches_transformers_llama_with_gqa():
    """Same weights give the same logits as HF's LlamaForCausalLM (RoPE rotate_half, GQA, tied head)."""
    transformers = pytest.importorskip("transformers")
    model = make_model(n_kv_heads=2)
    cfg = model.config
    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
    )
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    names = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
             "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
    state = {"model.embed_tokens.weight": model.embed.weight, "model.norm.weight": model.norm.weight,
             "lm_head.weight": model.embed.weight}
    for i, block in enumerate(model.layers):
        state[f"model.layers.{i}.input_layernorm.weight"] = block.attn_norm.weight
        state[f"model.layers.{i}.post_attention_layernorm.weight"] = block.mlp_norm.weight
        for ours, theirs in names.items():
            state[f"model.layers.{i}.{theirs}.weight"] = block.linear(ours).weight
    hf.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=False)
    idx = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        ours, _ = model(idx)
        theirs = hf(idx).logits
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


def masked_copy(model: Model, kept: Kept) -> Model:
    """The unpruned model with removed heads' o-columns and removed channels' down-columns zeroed."""
    import copy

    masked = copy.deepcopy(model)
    shape = model.config.shape()
    with torch.no_grad():
        for layer, block in enumerate(masked.layers):
            o_keep = torch.zeros(block.attn.o.weight.shape[1], dtype=torch.bool)
            o_keep[torch.as_tensor(kept.index(shape, layer, "o"))] = True
            block.attn.o.weight[:, ~o_keep] = 0
            d_keep = torch.zeros(block.mlp.down.weight.shape[1], dtype=torch.bool)
            d_keep[torch.as_tensor(kept.index(shape, layer, "down"))] = True
            block.mlp.down.weight[:, ~d_keep] = 0
    return masked


@pytest.mark.parametrize("n_kv_heads", [4, 2])
def test_physical_pruning_equals_masking(n_kv_heads):
    model = make_model(n_kv_heads)
    shape = model.config.shape()
    rng = np.random.default_rng(1)
    kept = Kept(
        groups=[np.sort(rng.choice(shape.n_kv_heads, size=shape.n_kv_heads // 2, replace=False)) for _ in range(2)],
        channels=[np.sort(rng.choice(shape.d_ff, size=40, replace=False)) for _ in range(2)],
    )
    reference = masked_copy(model, kept)
    model.prune_to([(torch.as_tensor(g), torch.as_tensor(c)) for g, c in zip(kept.groups, kept.channels)])
    assert model.layers[0].attn.q.weight.shape == (len(kept.index(shape, 0, "q")), shape.d_model)
    assert model.layers[0].attn.k.weight.shape == (len(kept.index(shape, 0, "k")), shape.d_model)
    assert model.layers[1].mlp.down.weight.shape == (shape.d_model, 40)
    assert model.num_params() < reference.num_params()
    idx = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        assert torch.allclose(model(idx)[0], reference(idx)[0], atol=1e-5)
