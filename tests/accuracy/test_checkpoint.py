"""``model.path``: a local LLaMA-family checkpoint, loaded offline, trained by ``simfed run``.

Every checkpoint here is written by the test itself: a tiny randomly initialised
``LlamaForCausalLM`` (``save_pretrained``) with its own byte-level BPE tokenizer built with the
``tokenizers`` library, saved beside it. Nothing is downloaded.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from simfed.accuracy.checkpoint import CheckpointError, load_local, read_state_dict  # noqa: E402

TEXT = [
    "To be, or not to be, that is the question:",
    "Whether 'tis nobler in the mind to suffer",
    "The slings and arrows of outrageous fortune,",
    "Now is the winter of our discontent made glorious summer by this sun of York.",
]


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<s>"])
    tok.train_from_iterator(TEXT * 5, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>")


def write_checkpoint(directory: Path, *, tied: bool = False, shard: str | None = None, **overrides) -> tuple:
    """A random tiny LLaMA (2 layers, 4 query / 2 KV heads of 8, SwiGLU 64) and its tokenizer in ``directory``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = make_tokenizer()
    settings = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                    tie_word_embeddings=tied, rms_norm_eps=1e-6)
    settings.update(overrides)
    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(**settings)).eval()
    hf.save_pretrained(str(directory), **({"max_shard_size": shard} if shard else {}))
    tokenizer.save_pretrained(str(directory))
    return hf, tokenizer


@pytest.mark.parametrize("tied", [False, True])
def test_a_checkpoint_directory_loads_with_the_same_logits(tmp_path, tied):
    hf, tokenizer = write_checkpoint(tmp_path, tied=tied)
    model, tok, config = load_local(tmp_path, max_seq_len=64)
    assert (config.n_layers, config.n_heads, config.n_kv_heads, config.head_dim, config.d_ff) == (2, 4, 2, 8, 64)
    assert config.tied_embeddings is tied and config.max_seq_len == 64 and config.norm_eps == 1e-6
    assert (model.head is None) is tied
    ids = tok("Now is the winter\nof our discontent", add_special_tokens=False)["input_ids"]
    assert ids == tokenizer("Now is the winter\nof our discontent", add_special_tokens=False)["input_ids"]
    x = torch.tensor([ids])
    with torch.no_grad():
        assert torch.allclose(model(x)[0], hf(x).logits, atol=1e-5)


def test_a_sharded_checkpoint_reads_every_shard(tmp_path):
    hf, _ = write_checkpoint(tmp_path, shard="40KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert set(read_state_dict(tmp_path)) == set(hf.state_dict())
    model, _, _ = load_local(tmp_path, max_seq_len=32)
    x = torch.arange(20)[None, :]
    with torch.no_grad():
        assert torch.allclose(model(x)[0], hf(x).logits, atol=1e-5)
    (tmp_path / sorted(set(index["weight_map"].values()))[0]).unlink()
    with pytest.raises(CheckpointError, match=r"lists the shard .* which is missing"):
        load_local(tmp_path)


def test_what_cannot_be_loaded_is_refused_naming_the_path(tmp_path):
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        load_local(tmp_path)
    write_checkpoint(tmp_path / "bias", attention_bias=True)
    with pytest.raises(CheckpointError, match=r"bias.*: the checkpoint has linear biases"):
        load_local(tmp_path / "bias")
    cfg = json.loads((tmp_path / "bias" / "config.json").read_text())
    cfg.update(attention_bias=False, model_type="mistral", architectures=["MistralForCausalLM"])
    (tmp_path / "bias" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"model_type 'mistral' is not LLaMA-family"):
        load_local(tmp_path / "bias")
    write_checkpoint(tmp_path / "noweights")
    (tmp_path / "noweights" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"noweights: no weights found"):
        load_local(tmp_path / "noweights")
    (tmp_path / "model.bin").write_text("x")
    with pytest.raises(CheckpointError, match=r"neither a checkpoint directory nor a \.gguf file"):
        load_local(tmp_path / "model.bin")


def test_simfed_run_trains_a_checkpoint_from_a_directory(tmp_path):
    """2 devices x 2 rounds of the whole pipeline (roles re-encoded with the checkpoint's tokenizer) on the CPU."""
    from simfed.cli import main

    write_checkpoint(tmp_path / "ckpt")
    cfg = tmp_path / "run.toml"
    cfg.write_text(f"""
mode = "full"
method = "uniform"
rounds = 2
s_star = 0.5
[traces]
generator = "fedspine-testbed"
devices = 2
[model]
preset = "tiny"        # the shape the time layer costs
path = "ckpt"          # relative to this file
[train]
local_iters = 4
tau = 2
batch_size = 4
seq_len = 32
lr = 1e-2
eval_every = 1
device = "cpu"
[policy]
r_max = 4
rank = 4
[policy.method_params]
rounds_to_target = 2
""")
    out = tmp_path / "out"
    assert main(["run", str(cfg), "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_sparsity"] == pytest.approx(0.5)
    # a random 2-layer model over a ~400-token vocabulary: loss near ln(vocab), and finite
    assert math.isfinite(summary["final_eval_loss"]) and 0 < summary["final_eval_loss"] < 2 * math.log(400)
    resolved = (out / "config.toml").read_text()
    assert str((tmp_path / "ckpt").resolve()) in resolved
