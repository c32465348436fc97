"""Model presets. ``tiny`` is simfed's own character-level LLaMA-style decoder (DESIGN.md §2).

Sizing of ``tiny``: d_model 128, 4 layers, 8 heads of 16 dims (plain multi-head attention, so head
pruning moves in 1/8 = 12.5 % steps of the attention), SwiGLU with 512 channels (4·d). That is
1.06 M parameters: pre-training on 2 CPU cores fits in a few minutes and a local LoRA step of a
batch of 8 × 80 characters takes milliseconds, which is what a simulation of tens of devices over
tens of rounds needs. ``smollm2-135m`` is the fidelity preset (loaded by :mod:`simfed.accuracy.smollm2`).

These are the presets simfed *trains*. The time layer also costs models it does not train here
(``roberta-base``, ``roberta-large``, ``llama-7b``: the paper's): their shapes live in
:mod:`simfed.timing.presets`, which takes the two presets below from this module.
"""

from __future__ import annotations

from simfed.accuracy.data import VOCAB
from simfed.accuracy.model import ModelConfig

PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(
        vocab_size=len(VOCAB),
        d_model=128,
        n_layers=4,
        n_heads=8,
        n_kv_heads=8,
        d_ff=512,
        max_seq_len=256,
    ),
    # SmolLM2-135M (HuggingFaceTB): LLaMA architecture, GQA 9/3 heads (reference/algorithms.md §6.1).
    # rope_theta/norm_eps here are unverified defaults: the loader must take them from the GGUF metadata.
    "smollm2-135m": ModelConfig(
        vocab_size=49152,
        d_model=576,
        n_layers=30,
        n_heads=9,
        n_kv_heads=3,
        d_ff=1536,
        max_seq_len=2048,
        rope_theta=100000.0,
        norm_eps=1e-5,
        tied_embeddings=True,
    ),
}


def preset(name: str) -> ModelConfig:
    """The trainable preset called ``name``; ``ValueError`` naming the known ones otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown trainable model preset {name!r}; known: {', '.join(PRESETS)} (the time layer "
                         "also costs timing-only presets: simfed.timing.presets, model.timing_preset)") from None
