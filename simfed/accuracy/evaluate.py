"""Next-token loss and accuracy of a device's pruned model with a merged global LoRA update.

Tokens are characters for the ``tiny`` preset and BPE tokens for SmolLM2 or a ``model.path``
checkpoint (:mod:`simfed.accuracy.factory`).

FedSpine evaluates the global LoRA applied to each device's own pruned model (arXiv 2501.02438);
simfed does the same on each role's held-out lines (LEAF's per-client test split). The update is
given as ``{(layer, module): ΔW}`` already restricted to the device's structure (what an
aggregator's ``delta_for(kept)`` returns); it is added to the frozen weights for the evaluation and
the exact original weights are restored afterwards. ``delta=None`` is the no-adapter baseline.

Accuracy counts every position of non-overlapping windows (see
:func:`simfed.accuracy.data.eval_windows`): the first characters of a window have short context,
so the numbers are slightly below LEAF's "80 characters of context" accuracy.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch
import torch.nn.functional as F

from simfed.accuracy.adapters import LoRAFactors
from simfed.accuracy.data import eval_windows
from simfed.accuracy.lora import adapted_linears
from simfed.accuracy.model import Model

Delta = Mapping[tuple[int, str], torch.Tensor]


@dataclass(frozen=True)
class EvalResult:
    loss: float  # mean next-token cross-entropy (nats; perplexity = exp(loss))
    accuracy: float  # share of next tokens predicted exactly (argmax)
    n_tokens: int  # targets evaluated (the weight when averaging over devices)


def factors_delta(factors: LoRAFactors) -> dict[tuple[int, str], torch.Tensor]:
    """A device's own factors as a delta dict (``scale · B @ A`` per adapted linear)."""
    return {key: factors.delta(key) for key in factors.A}


@contextmanager
def merged(model: Model, delta: Delta | None) -> Iterator[Model]:
    """Temporarily ``W ← W + ΔW`` on the adapted linears; the original tensors are put back after."""
    if not delta:
        yield model
        return
    linears = adapted_linears(model)
    saved = {}
    try:
        with torch.no_grad():
            for key, d in delta.items():
                lin = linears[key]
                if d.shape != lin.weight.shape:
                    raise ValueError(
                        f"update for layer {key[0]} module {key[1]!r} has shape {tuple(d.shape)}, "
                        f"the device's pruned weight is {tuple(lin.weight.shape)}"
                    )
                w = lin.weight.data
                saved[key] = w
                if w.dtype == torch.float32:
                    lin.weight.data = w + d.to(device=w.device, dtype=w.dtype)
                else:  # a bf16/fp16 base: add in float32, round the sum once (what merging for deployment does)
                    lin.weight.data = (w.float() + d.to(device=w.device, dtype=torch.float32)).to(w.dtype)
        yield model
    finally:
        for key, w in saved.items():
            linears[key].weight.data = w


LOGITS_BUDGET = 1 << 25  # logits elements per evaluation batch (128 MiB in float32)


def eval_batch_size(seq_len: int, vocab_size: int, cap: int = 64) -> int:
    """Windows per evaluation batch: ``cap``, fewer when the ``[batch, seq_len, vocab]`` logits would pass
    :data:`LOGITS_BUDGET` elements (SmolLM2's 49 152-token vocabulary: 10 windows of 64 tokens)."""
    return max(1, min(cap, LOGITS_BUDGET // max(1, seq_len * vocab_size)))


@torch.inference_mode()
def evaluate_tokens(model: Model, tokens: torch.Tensor, seq_len: int, batch_size: int | None = None) -> EvalResult:
    """Loss and accuracy of ``model`` on one encoded text (CPU token ids; batches go to the model's device).

    ``batch_size`` windows per forward (default :func:`eval_batch_size`); the result does not depend on
    it beyond float rounding of the sum. Under mixed precision call it inside the autocast context
    (:meth:`simfed.accuracy.device.Precision.autocast`); the loss is taken in float32.
    """
    x, y = eval_windows(tokens, seq_len)
    if batch_size is None:
        batch_size = eval_batch_size(x.shape[1], model.config.vocab_size)
    device = model.embed.weight.device
    loss_sum, correct, n = 0.0, 0, 0
    was_training = model.training
    model.eval()
    for i in range(0, len(x), batch_size):
        logits, _ = model(x[i : i + batch_size].to(device))
        yb = y[i : i + batch_size].to(device)
        loss_sum += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), yb.reshape(-1), reduction="sum"))
        correct += int((logits.argmax(-1) == yb).sum())
        n += yb.numel()
    model.train(was_training)
    return EvalResult(loss=loss_sum / n, accuracy=correct / n, n_tokens=n)


def evaluate_with_delta(model: Model, tokens: torch.Tensor, seq_len: int, delta: Delta | None) -> EvalResult:
    """Evaluate ``model`` with ``delta`` merged (``None``: the pruned model without any adapter)."""
    with merged(model, delta):
        return evaluate_tokens(model, tokens, seq_len)


def weighted_mean(results: Mapping[str, EvalResult]) -> EvalResult:
    """Token-weighted mean over devices (every held-out character counts once)."""
    n = sum(r.n_tokens for r in results.values())
    if n == 0:
        raise ValueError("no evaluation results to average")
    return EvalResult(
        loss=sum(r.loss * r.n_tokens for r in results.values()) / n,
        accuracy=sum(r.accuracy * r.n_tokens for r in results.values()) / n,
        n_tokens=n,
    )
