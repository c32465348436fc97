"""Any local LLaMA-family checkpoint as simfed's own model (``model.path``), loaded offline.

FedSpine (arXiv 2501.02438) prunes and tunes LLaMA-family models; simfed's decoder
(:mod:`simfed.accuracy.model`) follows HF LLaMA's numerics, so any checkpoint of that architecture
loads by name (:data:`simfed.accuracy.smollm2.LAYER_MAP`). Two forms are read:

- a **transformers directory**: ``config.json`` (``model_type = "llama"``), the weights as
  ``model.safetensors``, ``pytorch_model.bin`` or their sharded forms (``*.index.json``), and the
  tokenizer files (``tokenizer.json`` / ``tokenizer_config.json``). The weights are read straight
  into simfed's parameter names (no transformers model is built); the tokenizer through
  ``AutoTokenizer`` with ``local_files_only``;
- a **GGUF file** (``*.gguf``): dequantised by transformers (needs ``gguf``), then cached like the
  SmolLM2 preset (:func:`simfed.accuracy.smollm2.load_gguf`).

What simfed's decoder cannot represent is refused with the path and the reason: another
``model_type``, linear biases, an activation other than SiLU, RoPE scaling (e.g. Llama 3.1's
``llama3`` rope type), or tensors it does not map. Nothing is ever downloaded (``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from simfed.accuracy.model import Model, ModelConfig
from simfed.accuracy.smollm2 import DEFAULT_MAX_SEQ_LEN, _build, config_from_hf, convert_state_dict, load_gguf
from simfed.errors import SimfedError

LLAMA_FAMILY = ("llama",)  # transformers model_type values whose layout simfed's decoder reproduces
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


class CheckpointError(SimfedError, ValueError):
    """A checkpoint that cannot be loaded; the message names the path and what is wrong."""


def read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a transformers checkpoint directory, by its HF name, on the CPU.

    Looks for :data:`WEIGHT_FILES` in that order (safetensors first; a sharded checkpoint through its
    index's ``weight_map``). Raises :class:`CheckpointError` when none is there or a shard is missing.
    """
    directory = Path(directory)
    for name in WEIGHT_FILES:
        path = directory / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            try:
                shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, AttributeError) as exc:
                raise CheckpointError(f"{path}: not a valid weight index ({exc})") from None
            files = [directory / shard for shard in shards]
        else:
            files = [path]
        state: dict[str, torch.Tensor] = {}
        for file in files:
            if not file.is_file():
                raise CheckpointError(f"{path}: lists the shard {file.name}, which is missing")
            state.update(_read_weights_file(file))
        return state
    raise CheckpointError(f"{directory}: no weights found (expected one of {', '.join(WEIGHT_FILES)})")


def _read_weights_file(file: Path) -> dict[str, torch.Tensor]:
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file), device="cpu")
    return torch.load(file, map_location="cpu", weights_only=True, mmap=True)


def load_directory(directory: Path, max_seq_len: int = DEFAULT_MAX_SEQ_LEN) -> tuple[Model, Any, ModelConfig]:
    """A transformers LLaMA checkpoint directory as ``(Model in fp32 eval mode, tokenizer, config)``.

    ``max_seq_len`` bounds the RoPE tables (never beyond the checkpoint's ``max_position_embeddings``).
    Raises :class:`CheckpointError` naming the directory for a missing file, another architecture or
    unmapped tensors.
    """
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"{directory}: no config.json, so not a transformers checkpoint directory")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import AutoConfig, AutoTokenizer
    except ImportError:
        raise CheckpointError(f"{directory}: loading a checkpoint needs transformers (pip install 'simfed[llm]')") from None
    try:
        hf_config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{directory / 'config.json'}: transformers cannot read it ({exc})") from None
    model_type = getattr(hf_config, "model_type", None)
    if model_type not in LLAMA_FAMILY:
        raise CheckpointError(
            f"{directory / 'config.json'}: model_type {model_type!r} is not LLaMA-family (simfed loads {', '.join(LLAMA_FAMILY)})"
        )
    try:
        full_config = config_from_hf(hf_config, max_seq_len=hf_config.max_position_embeddings)
        state = convert_state_dict(read_state_dict(directory), full_config)
    except CheckpointError:
        raise
    except ValueError as exc:
        raise CheckpointError(f"{directory}: {exc}") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{directory}: no tokenizer transformers can load offline ({exc})") from None
    return _build(full_config, state, tokenizer, max_seq_len)


def load_local(path: str | Path, max_seq_len: int = DEFAULT_MAX_SEQ_LEN) -> tuple[Model, Any, ModelConfig]:
    """``model.path``: a transformers directory (:func:`load_directory`) or a ``.gguf`` file
    (:func:`simfed.accuracy.smollm2.load_gguf`), as ``(Model, tokenizer, config)``.

    Raises :class:`CheckpointError` for a path that is neither, or a checkpoint simfed cannot load.
    """
    p = Path(path)
    if p.is_dir():
        return load_directory(p, max_seq_len)
    if p.is_file() and p.suffix == ".gguf":
        try:
            return load_gguf(p, max_seq_len, cache_name="gguf")
        except ValueError as exc:
            raise CheckpointError(f"{p}: {exc}") from None
    raise CheckpointError(f"{p}: neither a checkpoint directory nor a .gguf file")


def vocabulary_size(tokenizer: Any) -> int:
    """Number of token ids the tokenizer can emit (its ``len``, added tokens included)."""
    return len(tokenizer)


__all__ = ["CheckpointError", "LLAMA_FAMILY", "WEIGHT_FILES", "load_directory", "load_local", "read_state_dict", "vocabulary_size"]
