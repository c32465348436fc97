"""Model shapes and the structure a nominal sparsity maps to: the one rule both time and accuracy use.

Structured pruning removes whole KV groups (a KV head with the query heads that share it; plain
multi-head attention is the case of one query head per group) and MLP channels, in every block
(decoder or encoder, :class:`ModelShape`) by the same ratio; the hidden size stays. Because the kept
*counts* depend only on the nominal sparsity, the timing layer can cost a device's round from its
plan before any training runs, and the trainer prunes to exactly the counts the cost model assumed
(the trainer chooses *which* groups and channels by importance; the cost depends only on how many).

Uniform per-layer ratios follow LLM-Pruner's block-wise setting and LoRAPrune's per-layer pruning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ARCHS: tuple[str, ...] = ("decoder", "encoder")
#: The linears of one block that structured pruning slices and LoRA may adapt, by architecture.
DECODER_MODULES: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")
ENCODER_MODULES: tuple[str, ...] = ("q", "k", "v", "o", "up", "down")


@dataclass(frozen=True)
class ModelShape:
    """The shapes of a transformer that cost, memory and payload depend on.

    ``arch`` picks one of two families (the fields after ``tied_embeddings`` default to the decoder,
    so every decoder shape written before they existed is unchanged):

    - ``"decoder"``: a LLaMA-style causal LM -- pre-norm RMSNorm blocks, RoPE, bias-free ``q, k, v,
      o``, a SwiGLU MLP ``gate, up, down``, grouped-query attention allowed, a language-model head
      over ``vocab_size`` (tied to the embedding when ``tied_embeddings``).
    - ``"encoder"``: a BERT/RoBERTa-style encoder -- word, learned absolute position
      (``max_positions``) and token-type (``type_vocab_size``) embeddings followed by a LayerNorm,
      post-LayerNorm blocks, ``q, k, v, o`` with biases, a GELU MLP of two matrices ``up``
      (HF's ``intermediate.dense``) and ``down`` (``output.dense``) with biases, bidirectional
      attention without grouped heads (``n_kv_heads == n_heads``), and a sequence-classification
      head on the first token (``dense`` d x d with bias, tanh, ``out_proj`` d x ``num_labels`` with
      bias; HF's ``RobertaClassificationHead``). ``tied_embeddings`` does not apply.

    Raises ``ValueError`` for an unknown ``arch``, a head count that is not a multiple of the KV
    heads, grouped heads or a missing ``num_labels``/``max_positions`` in an encoder, or
    encoder-only fields set on a decoder.
    """

    n_layers: int
    d_model: int
    n_heads: int  # query heads
    n_kv_heads: int  # KV heads (== n_heads without grouped-query attention)
    head_dim: int
    d_ff: int  # MLP intermediate channels (SwiGLU: gate, up, down; encoder GELU MLP: up, down)
    vocab_size: int
    tied_embeddings: bool = True
    arch: str = "decoder"  # "decoder" (LLaMA-style causal LM) or "encoder" (RoBERTa-style classifier)
    num_labels: int = 0  # encoder: classes of the sequence-classification head
    max_positions: int = 0  # encoder: rows of the learned absolute position embedding (RoBERTa: 514)
    type_vocab_size: int = 0  # encoder: rows of the token-type embedding (RoBERTa: 1)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"ModelShape.arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.arch == "encoder":
            if self.n_kv_heads != self.n_heads:
                raise ValueError(f"an encoder shape has no grouped-query attention: n_kv_heads={self.n_kv_heads} "
                                 f"must equal n_heads={self.n_heads}")
            if self.num_labels < 1 or self.max_positions < 1 or self.type_vocab_size < 0:
                raise ValueError(f"an encoder shape needs num_labels >= 1, max_positions >= 1 and type_vocab_size >= 0, "
                                 f"got {self.num_labels}, {self.max_positions}, {self.type_vocab_size}")
        elif self.num_labels or self.max_positions or self.type_vocab_size:
            raise ValueError("num_labels, max_positions and type_vocab_size apply to arch='encoder' only, got "
                             f"{self.num_labels}, {self.max_positions}, {self.type_vocab_size} for a decoder")

    @property
    def modules(self) -> tuple[str, ...]:
        """The linears of one block, in simfed's names (:data:`DECODER_MODULES` or :data:`ENCODER_MODULES`)."""
        return ENCODER_MODULES if self.arch == "encoder" else DECODER_MODULES

    @property
    def biased(self) -> bool:
        """Whether the block's linears carry biases (the encoder's do, the decoder's do not)."""
        return self.arch == "encoder"

    @property
    def group_size(self) -> int:
        """Query heads per KV group."""
        return self.n_heads // self.n_kv_heads

    def attn_params_per_group(self) -> int:
        """Weights (and, in an encoder, biases) of q, k, v rows and o columns that one KV group owns."""
        q = self.group_size * self.head_dim * self.d_model
        kv = 2 * self.head_dim * self.d_model
        o = self.group_size * self.head_dim * self.d_model
        bias = (self.group_size + 2) * self.head_dim if self.biased else 0  # q, k, v bias entries
        return q + kv + o + bias

    def mlp_params_per_channel(self) -> int:
        """Weights of one MLP channel: gate and up rows and the down column (SwiGLU), or the up row,
        its bias and the down column (encoder)."""
        return 2 * self.d_model + 1 if self.arch == "encoder" else 3 * self.d_model

    def prunable_params(self) -> int:
        """Parameters in prunable structures (all KV groups and all MLP channels, all layers)."""
        per_layer = self.n_kv_heads * self.attn_params_per_group() + self.d_ff * self.mlp_params_per_channel()
        return self.n_layers * per_layer

    def embedding_params(self) -> int:
        """Token embeddings and output head of a decoder (the head counted once when tied); word,
        position and token-type embeddings of an encoder."""
        if self.arch == "encoder":
            return (self.vocab_size + self.max_positions + self.type_vocab_size) * self.d_model
        return self.vocab_size * self.d_model * (1 if self.tied_embeddings else 2)

    def norm_params(self) -> int:
        """Normalisation parameters: 2L + 1 RMSNorm gains (decoder: two per block and the final norm)
        or 2L + 1 LayerNorm gains and biases (encoder: two per block and the embedding LayerNorm)."""
        per_norm = 2 * self.d_model if self.arch == "encoder" else self.d_model
        return (2 * self.n_layers + 1) * per_norm

    def fixed_bias_params(self) -> int:
        """Biases that pruning never slices: the ``o`` and ``down`` output biases of every encoder block."""
        return 2 * self.n_layers * self.d_model if self.biased else 0

    def head_params(self) -> int:
        """The encoder's sequence-classification head (dense d x d + bias, out_proj d x num_labels + bias); 0 for a decoder."""
        if self.arch != "encoder":
            return 0
        return self.d_model * self.d_model + self.d_model + self.d_model * self.num_labels + self.num_labels

    def total_params(self) -> int:
        """All base-model parameters (embeddings counted once when tied, norms, biases and the
        classification head included)."""
        return (self.embedding_params() + self.norm_params() + self.prunable_params() + self.fixed_bias_params()
                + self.head_params())


@dataclass(frozen=True)
class Structure:
    """Kept counts per block (the same in every block)."""

    kv_groups: int
    channels: int

    def heads(self, shape: ModelShape) -> int:
        return self.kv_groups * shape.group_size


def full_structure(shape: ModelShape) -> Structure:
    return Structure(kv_groups=shape.n_kv_heads, channels=shape.d_ff)


def structure_at(shape: ModelShape, sparsity: float) -> Structure:
    """Kept KV groups and MLP channels at a nominal sparsity in [0, 1).

    Each layer removes ``round(s * n_kv_heads)`` KV groups and ``round(s * d_ff)`` channels, keeping at
    least one of each (a layer with no attention or no MLP is not a pruned model, it is a different
    architecture).
    """
    if not (0.0 <= sparsity < 1.0) or math.isnan(sparsity):
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    groups = shape.n_kv_heads - int(round(sparsity * shape.n_kv_heads + 1e-9))
    channels = shape.d_ff - int(round(sparsity * shape.d_ff + 1e-9))
    return Structure(kv_groups=max(1, groups), channels=max(1, channels))


def sparsity_of(shape: ModelShape, structure: Structure) -> float:
    """Measured sparsity: the share of prunable parameters a structure has removed."""
    removed = shape.n_layers * (
        (shape.n_kv_heads - structure.kv_groups) * shape.attn_params_per_group()
        + (shape.d_ff - structure.channels) * shape.mlp_params_per_channel()
    )
    return removed / shape.prunable_params()


@dataclass(frozen=True)
class Stage:
    """A run of local iterations at one nominal sparsity; a pruning step follows it when ``prune_after``."""

    iters: int
    sparsity: float
    prune_after: bool


def next_sparsities(sparsity_before: np.ndarray, p: np.ndarray, s_star: float) -> np.ndarray:
    """The nominal sparsity after a round with pruning increment ``p`` (negative counts as 0), capped at the
    target ``s_star``; a device already at or past s* stays where it is. Float arrays of one shape."""
    return np.where(sparsity_before < s_star, np.minimum(sparsity_before + np.maximum(p, 0.0), s_star),
                    sparsity_before)


def next_sparsity(sparsity_before: float, p: float, s_star: float) -> float:
    """:func:`next_sparsities` for one device."""
    return float(next_sparsities(np.float64(sparsity_before), np.float64(p), s_star))


def round_schedule(sparsity_before: float, sparsity_after: float, local_iters: int, tau: int) -> list[Stage]:
    """The iterative prune -> tune schedule inside one round.

    The round runs ``local_iters`` LoRA iterations; a pruning step follows every ``tau`` of them
    (FedSpine's pruning interval). The increment ``sparsity_after - sparsity_before`` is spread evenly
    over those pruning steps. With ``local_iters < tau`` one pruning step ends the round. When the
    round prunes nothing (increment 0) it is one plain tuning stage.
    """
    if local_iters < 1 or tau < 1:
        raise ValueError(f"local_iters and tau must be >= 1, got {local_iters}, {tau}")
    delta = sparsity_after - sparsity_before
    if delta <= 0:
        return [Stage(iters=local_iters, sparsity=sparsity_before, prune_after=False)]
    n_prunes = max(1, local_iters // tau)
    stages: list[Stage] = []
    done = 0
    for j in range(n_prunes):
        iters = tau if j < n_prunes - 1 else local_iters - done
        if n_prunes == 1:
            iters = local_iters
        s = sparsity_before + delta * j / n_prunes
        stages.append(Stage(iters=iters, sparsity=s, prune_after=True))
        done += iters
    return stages


def stage_targets(sparsity_before: float, sparsity_after: float, n_prunes: int) -> list[float]:
    """Nominal sparsity after each of ``n_prunes`` evenly spread pruning steps."""
    delta = sparsity_after - sparsity_before
    return [sparsity_before + delta * (j + 1) / n_prunes for j in range(n_prunes)]
