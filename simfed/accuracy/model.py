"""A LLaMA-style decoder in one file: RMSNorm, rotary attention with grouped-query heads, SwiGLU MLP.

This is the model every device prunes and tunes (FedSpine, arXiv 2501.02438, prunes LLaMA-family
models; simfed's ``tiny`` preset is a character-level instance, the ``smollm2-135m`` preset loads
SmolLM2's weights into the same class). It follows nanoGPT's layout (one config dataclass, one
model that takes only that config) and HF LLaMA's numerics (RoPE with ``rotate_half`` on the two
halves of each head, not interleaved pairs), so LLaMA checkpoints load by name.

Contract (other modules depend on it):

- ``Model.embed`` (``nn.Embedding``), ``Model.layers[i]`` with ``attn_norm``, ``attn.q/k/v/o``,
  ``mlp_norm``, ``mlp.gate/up/down``, then ``Model.norm``; the output head is tied to ``embed``
  when ``config.tied_embeddings`` (otherwise ``Model.head``). All linears are :class:`Linear`
  (an ``nn.Linear`` without bias, weight ``[out, in]``) that can carry a LoRA adapter.
- Structured pruning is *physical*: :meth:`Model.prune_to` index-selects q/k/v rows, o columns,
  gate/up rows and down columns to a :class:`~simfed.accuracy.adapters.Kept`. Attention infers
  its head counts from the weight shapes, so a pruned model is simply a smaller model.
- ``forward(idx, targets=None) -> (logits, loss)``.
"""

from __future__ import annotations

import math
from copy import deepcopy
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from simfed.structure import DECODER_MODULES, ModelShape

LINEAR_NAMES: tuple[str, ...] = DECODER_MODULES  # one definition: simfed.structure


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of the decoder. ``head_dim`` is ``d_model // n_heads`` unless given."""

    vocab_size: int  # tokens (characters for the tiny preset)
    d_model: int  # hidden size; pruning never changes it
    n_layers: int  # decoder blocks
    n_heads: int  # query heads
    n_kv_heads: int  # key/value heads (== n_heads: plain multi-head attention)
    d_ff: int  # SwiGLU intermediate channels
    max_seq_len: int  # longest sequence the rotary tables cover
    rope_theta: float = 10000.0  # RoPE base frequency (LLaMA's default)
    norm_eps: float = 1e-5  # RMSNorm epsilon
    tied_embeddings: bool = True  # output head shares the embedding matrix
    head_dim: int = 0  # 0: d_model // n_heads

    def __post_init__(self) -> None:
        if self.head_dim == 0:
            if self.d_model % self.n_heads:
                raise ValueError(f"d_model={self.d_model} is not a multiple of n_heads={self.n_heads}")
            object.__setattr__(self, "head_dim", self.d_model // self.n_heads)
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")

    def shape(self) -> ModelShape:
        return ModelShape(
            n_layers=self.n_layers,
            d_model=self.d_model,
            n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads,
            head_dim=self.head_dim,
            d_ff=self.d_ff,
            vocab_size=self.vocab_size,
            tied_embeddings=self.tied_embeddings,
        )


class Linear(nn.Linear):
    """A bias-free linear whose frozen ``weight`` may carry a LoRA adapter ``scale * B @ A``.

    The adapter lives here (not in a wrapper) so that parameter names stay those of the base model
    and a pruned, adapted model is still the same class. ``lora.py`` attaches and reads adapters.
    ``lora_A`` is ``[r, in]``, ``lora_B`` is ``[out, r]``.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.lora_A: nn.Parameter | None = None
        self.lora_B: nn.Parameter | None = None
        self.lora_scale: float = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lora_A is None:
            return F.linear(x, self.weight)
        # (x A^T) B^T added inside one addmm with alpha = scale: no merged weight, and no separate
        # scale and add passes over the [tokens, out] output (measured ~6 % of a local step).
        x2 = x.reshape(-1, x.shape[-1])
        y = torch.addmm(F.linear(x2, self.weight), F.linear(x2, self.lora_A), self.lora_B.t(), alpha=self.lora_scale)
        return y.view(*x.shape[:-1], y.shape[-1])


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch's rms_norm: the same x * rsqrt(mean(x^2) + eps) * weight in fewer passes
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """HF LLaMA's rotation: the two halves of each head's dimensions form the complex pairs."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope_tables(head_dim: int, max_seq_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    t = torch.arange(max_seq_len, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)  # (T, hd/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, hd)
    return emb.cos(), emb.sin()


class Attention(nn.Module):
    """Causal grouped-query attention. Head counts come from the weights, so pruning is index-select."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hd = config.head_dim
        self.head_dim = hd
        self.q = Linear(config.d_model, config.n_heads * hd)
        self.k = Linear(config.d_model, config.n_kv_heads * hd)
        self.v = Linear(config.d_model, config.n_kv_heads * hd)
        self.o = Linear(config.n_heads * hd, config.d_model)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        hd = self.head_dim
        n_heads = self.q.weight.shape[0] // hd
        n_kv = self.k.weight.shape[0] // hd
        q = self.q(x).view(B, T, n_heads, hd).transpose(1, 2)  # (B, nh, T, hd)
        k = self.k(x).view(B, T, n_kv, hd).transpose(1, 2)  # (B, nkv, T, hd)
        v = self.v(x).view(B, T, n_kv, hd).transpose(1, 2)
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)  # float32 tables; a no-op unless under mixed precision
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if n_kv != n_heads:  # each KV head serves n_heads // n_kv consecutive query heads
            rep = n_heads // n_kv
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hd)
        return self.o(y.transpose(1, 2).reshape(B, T, n_heads * hd))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)); channel j is row j of gate/up and column j of down."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate = Linear(config.d_model, config.d_ff)
        self.up = Linear(config.d_model, config.d_ff)
        self.down = Linear(config.d_ff, config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))

    def linear(self, name: str) -> Linear:
        """The adapted linear called ``name`` (one of :data:`LINEAR_NAMES`)."""
        return getattr(self.attn if name in ("q", "k", "v", "o") else self.mlp, name)


class Model(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.head: nn.Linear | None = None
        if not config.tied_embeddings:
            self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        cos, sin = rope_tables(config.head_dim, config.max_seq_len, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        # GPT-2 / nanoGPT: scale the residual projections by depth so the residual stream stays O(1)
        for block in self.layers:
            for lin in (block.attn.o, block.mlp.down):
                nn.init.normal_(lin.weight, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def shape(self) -> ModelShape:
        return self.config.shape()

    def output_weight(self) -> torch.Tensor:
        return self.embed.weight if self.head is None else self.head.weight

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``idx``/``targets`` are ``(B, T)`` token ids; loss is mean cross-entropy over all positions."""
        T = idx.shape[1]
        if T > self.config.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds max_seq_len={self.config.max_seq_len}")
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        x = self.embed(idx)  # (B, T, d)
        for block in self.layers:
            x = block(x, cos, sin)
        logits = F.linear(self.norm(x), self.output_weight())  # (B, T, V)
        loss = None
        if targets is not None:
            # float(): under mixed precision the logits are bf16/fp16, the loss is taken in float32
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]).float(), targets.reshape(-1))
        return logits, loss

    def num_params(self) -> int:
        """Base-model parameters (LoRA adapters excluded; the tied head counted once)."""
        return sum(p.numel() for name, p in self.named_parameters() if "lora_" not in name)

    def share_copy(self) -> "Model":
        """A new model object whose parameters and buffers *are* this model's (no tensor is copied).

        A device's model starts as this: pruning (:meth:`prune_to`) and LoRA attach new tensors to the
        copy's own modules and never write into the shared ones, so devices cost memory only for what
        they have pruned. Gradients on a shared parameter (one-shot Taylor scoring) land on the shared
        tensor: callers clear them after use, as :class:`~simfed.accuracy.train.Trainer` does.
        """
        memo: dict[int, object] = {id(t): t for t in list(self.parameters()) + list(self.buffers())}
        return deepcopy(self, memo)

    def freeze_base(self) -> None:
        """Make every base-model parameter frozen (LoRA tuning trains adapters only)."""
        for p in self.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def prune_to(self, kept_local: "list[tuple[torch.Tensor, torch.Tensor]]", on_select: "SelectHook | None" = None) -> None:
        """Physically keep, per layer, the given *local* KV-group and channel positions.

        ``kept_local[l] = (groups, channels)`` index the layer's *current* groups/channels (not
        full-model indices; :mod:`simfed.accuracy.prune` translates). q/k/v rows, o columns,
        gate/up rows and down columns are index-selected; LoRA factors on those linears are
        sliced the same way (B rows on output-pruned linears, A columns on input-pruned ones),
        so the model stays exactly the masked version of itself. ``on_select(old, new, dim, index)``
        is called for every replaced LoRA parameter (a trainer uses it to slice optimiser state).
        """
        hd = self.config.head_dim
        for block, (groups, channels) in zip(self.layers, kept_local):
            n_kv = block.attn.k.weight.shape[0] // hd
            n_heads = block.attn.q.weight.shape[0] // hd
            gs = n_heads // n_kv
            groups = torch.as_tensor(groups, dtype=torch.long)
            channels = torch.as_tensor(channels, dtype=torch.long)
            heads = (groups[:, None] * gs + torch.arange(gs)[None, :]).reshape(-1)
            kv_rows = (groups[:, None] * hd + torch.arange(hd)[None, :]).reshape(-1)
            q_rows = (heads[:, None] * hd + torch.arange(hd)[None, :]).reshape(-1)
            _select_rows(block.attn.q, q_rows, on_select)
            _select_rows(block.attn.k, kv_rows, on_select)
            _select_rows(block.attn.v, kv_rows, on_select)
            _select_cols(block.attn.o, q_rows, on_select)
            _select_rows(block.mlp.gate, channels, on_select)
            _select_rows(block.mlp.up, channels, on_select)
            _select_cols(block.mlp.down, channels, on_select)


SelectHook = Callable[[nn.Parameter, nn.Parameter, int, torch.Tensor], None]


def _select(param: nn.Parameter, dim: int, index: torch.Tensor, hook: SelectHook | None) -> nn.Parameter:
    index = index.to(param.device)
    new = nn.Parameter(param.detach().index_select(dim, index).contiguous(), requires_grad=param.requires_grad)
    if hook is not None:
        hook(param, new, dim, index)
    return new


def _select_rows(lin: Linear, rows: torch.Tensor, hook: SelectHook | None) -> None:
    lin.weight = _select(lin.weight, 0, rows, None)
    lin.out_features = lin.weight.shape[0]
    if lin.lora_B is not None:
        lin.lora_B = _select(lin.lora_B, 0, rows, hook)


def _select_cols(lin: Linear, cols: torch.Tensor, hook: SelectHook | None) -> None:
    lin.weight = _select(lin.weight, 1, cols, None)
    lin.in_features = lin.weight.shape[1]
    if lin.lora_A is not None:
        lin.lora_A = _select(lin.lora_A, 1, cols, hook)
