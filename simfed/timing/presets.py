"""Model presets the time layer can cost: their shapes and which linears carry LoRA by default.

FedSpine (arXiv 2501.02438) tunes RoBERTa on its 80-board testbed and LLaMA-7B on 8 AGX Xavier boards
(``reference/fedspine-paper-notes.md``). The accuracy layer cannot train those here, but the time
layer only needs their shapes, so they are *timing-only* presets: ``model.timing_preset`` names one
while the trained ``model.preset`` (``tiny`` or ``smollm2-135m``) supplies accuracy. The shapes are
pure data; the presets the accuracy layer trains take their shape from it
(:func:`simfed.accuracy.presets.preset`), so the two layers never disagree.

Sizes (each preset's ``source``):

- ``roberta-base``: 12 layers, hidden 768, 12 heads of 64, GELU MLP 3072, vocabulary 50,265, 514
  learned positions, 1 token type (the ``config.json`` of ``FacebookAI/roberta-base``; Liu et al.,
  arXiv 1907.11692). ``roberta-large``: 24 layers, 1024, 16 heads of 64, 4096, same vocabulary
  and positions (``FacebookAI/roberta-large``). A two-class sequence-classification head
  (``RobertaForSequenceClassification``'s default ``num_labels``; FedSpine's tasks are not stated).
- ``llama-7b``: 32 layers, hidden 4096, 32 heads of 128 (no grouped-query attention), SwiGLU 11,008,
  vocabulary 32,000, untied output head (Touvron et al., arXiv 2302.13971, Table 2; the
  ``config.json`` of ``huggyllama/llama-7b``).

LoRA targets by default (``lora.targets`` overrides): ``q`` and ``v`` for the three paper models, as
PEFT does for RoBERTa and LLaMA (``TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING``:
``query, value`` and ``q_proj, v_proj``; checked in ``tests/timing/test_cost_presets.py``); all seven
for ``tiny`` and ``smollm2-135m``, which simfed trains with LoRA on all seven.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from simfed.structure import ModelShape


@dataclass(frozen=True)
class TimingPreset:
    """A model the time layer can cost: its shape, the linears PEFT (or simfed) adapts by default,
    and where the sizes come from."""

    shape: ModelShape
    lora_targets: tuple[str, ...]
    source: str


def _roberta(n_layers: int, d_model: int, n_heads: int, d_ff: int, source: str) -> TimingPreset:
    shape = ModelShape(n_layers=n_layers, d_model=d_model, n_heads=n_heads, n_kv_heads=n_heads,
                       head_dim=d_model // n_heads, d_ff=d_ff, vocab_size=50265, arch="encoder",
                       num_labels=2, max_positions=514, type_vocab_size=1)
    return TimingPreset(shape, ("q", "v"), source)


#: The timing-only presets (the accuracy layer's ``tiny`` and ``smollm2-135m`` are added by :func:`timing_preset`).
TIMING_ONLY_PRESETS: dict[str, TimingPreset] = {
    "roberta-base": _roberta(12, 768, 12, 3072, "FacebookAI/roberta-base config.json; Liu et al., arXiv 1907.11692"),
    "roberta-large": _roberta(24, 1024, 16, 4096, "FacebookAI/roberta-large config.json; Liu et al., arXiv 1907.11692"),
    "llama-7b": TimingPreset(
        ModelShape(n_layers=32, d_model=4096, n_heads=32, n_kv_heads=32, head_dim=128, d_ff=11008,
                   vocab_size=32000, tied_embeddings=False),
        ("q", "v"),
        "Touvron et al., arXiv 2302.13971, Table 2; huggyllama/llama-7b config.json",
    ),
}

#: The accuracy layer's presets (simfed trains them with LoRA on all seven linears).
TRAINED_PRESETS: tuple[str, ...] = ("tiny", "smollm2-135m")


def preset_names() -> tuple[str, ...]:
    """Every name :func:`timing_preset` accepts."""
    return TRAINED_PRESETS + tuple(TIMING_ONLY_PRESETS)


def timing_preset(name: str) -> TimingPreset:
    """The shape and default LoRA targets of a preset.

    ``tiny`` and ``smollm2-135m`` come from the accuracy layer (their ``ModelConfig.shape()``), with
    LoRA on all seven linears; the others are :data:`TIMING_ONLY_PRESETS`. Raises ``ValueError``
    naming the known presets for an unknown name.
    """
    hit = TIMING_ONLY_PRESETS.get(name)
    if hit is not None:
        return hit
    if name in TRAINED_PRESETS:
        from simfed.accuracy.presets import preset  # the accuracy layer owns these shapes

        shape = preset(name).shape()
        return TimingPreset(shape, shape.modules, "simfed.accuracy.presets")
    raise ValueError(f"unknown model preset {name!r}; known: {', '.join(preset_names())}")


def timing_cost(name: str, batch_size: int, seq_len: int, lora_targets: Sequence[str] | None = None,
                train_head: bool = True, **kwargs: Any):
    """A :class:`~simfed.timing.cost.CostModel` of a preset: its shape, ``lora_targets`` (``None`` or
    empty: the preset's default), ``train_head`` (an encoder's classification head trains; ignored
    for a decoder) and any other ``CostModel`` keyword (``lora_bytes``, ``allocator_factor``,
    ``runtime_bytes``, ...). Raises ``ValueError`` for an unknown preset or a bad argument."""
    from simfed.timing.cost import CostModel

    p = timing_preset(name)
    targets = tuple(lora_targets) if lora_targets else p.lora_targets
    head = bool(train_head) and p.shape.arch == "encoder"
    return CostModel(p.shape, batch_size=batch_size, seq_len=seq_len, lora_targets=targets, train_head=head, **kwargs)



def cost_from_config(cfg: Any):
    """The :class:`~simfed.timing.cost.CostModel` a run configuration (:class:`simfed.config.RunConfig`)
    describes: the shape of ``model.timing_preset`` (else ``model.preset``), the batch and sequence
    length of ``train``, the adapters of ``lora`` (``targets``, ``dtype``, ``train_head``) and the
    overheads of ``memory``. Raises :class:`simfed.config.ConfigError` naming the key at fault."""
    from simfed.errors import ConfigError
    from simfed.timing.cost import DTYPE_BYTES

    key = "model.timing_preset" if cfg.model.timing_preset else "model.preset"
    name = cfg.model.timing_preset or cfg.model.preset
    try:
        preset = timing_preset(name)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    if preset.shape.arch == "encoder" and cfg.train.seq_len > preset.shape.max_positions:
        raise ConfigError(f"train.seq_len: {name} has {preset.shape.max_positions} learned positions, "
                          f"got a sequence length of {cfg.train.seq_len}")
    try:
        return timing_cost(name, cfg.train.batch_size, cfg.train.seq_len, lora_targets=cfg.lora.targets or None,
                           train_head=cfg.lora.train_head, lora_bytes=DTYPE_BYTES[cfg.lora.dtype],
                           allocator_factor=cfg.memory.allocator_factor, runtime_bytes=cfg.memory.runtime_bytes)
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"lora / memory: {exc}") from None

def preset_modules(name: str) -> tuple[str, ...] | None:
    """The linears of a preset's blocks without building anything (config validation uses it);
    ``None`` for an unknown name."""
    from simfed.structure import DECODER_MODULES

    if name in TIMING_ONLY_PRESETS:
        return TIMING_ONLY_PRESETS[name].shape.modules
    return DECODER_MODULES if name in TRAINED_PRESETS else None


__all__ = ["TimingPreset", "TIMING_ONLY_PRESETS", "TRAINED_PRESETS", "preset_names", "preset_modules", "timing_preset",
           "timing_cost", "cost_from_config"]

