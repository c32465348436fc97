"""Analytical cost model: FLOPs, payload bytes and memory of one device's round, from model shapes.

The timing layer needs, for every :class:`~simfed.records.Plan`, how much work the device does
(FLOPs through its compute trace), how much it moves (bytes through its network traces) and whether
it fits its RAM. FedSpine (arXiv 2501.02438) reasons with per-iteration compute that shrinks with the
device's sparsity and grows with its LoRA rank, LoRA-only communication in the pruned shapes (its
Eq. 10-11 as reconstructed in ``reference/fedspine-paper-notes.md`` §5) and training memory of the
pruned frozen weights plus activations, LoRA state and importance buffers.

simfed counts these exactly from the shapes of the model (:class:`~simfed.structure.ModelShape`): a
LLaMA-style decoder (RMSNorm, RoPE, bias-free ``q, k, v, o``, SwiGLU ``gate, up, down``, a tied or
untied ``lm_head``) or a RoBERTa-style encoder (post-LayerNorm blocks, linears with biases, a GELU
MLP ``up, down``, learned positions, a sequence-classification head), with LoRA on a chosen set of
linears (``lora_targets``: all of them by default, as simfed trains; PEFT's default for RoBERTa and
LLaMA is ``q`` and ``v``; :mod:`simfed.timing.presets` holds each preset's default). No proportional
constants: a matmul of ``[m, k] @ [k, n]`` costs ``2 m n k`` FLOPs, and every elementwise operation
counted is listed in ``docs/timing.md``. The matmul part is what ``torch.utils.flop_counter`` reports
for the same model, so the two can be compared directly (:meth:`CostModel.iteration_breakdown`
keeps them apart; ``tests/timing/test_cost_vs_torch.py`` and ``tests/timing/test_cost_presets.py``
compare them).

Training memory is the peak of the tensors (frozen weights, saved activations, LoRA state, the
loss's buffers), times an allocator factor, plus the framework's and accelerator's context
(:meth:`CostModel.memory_breakdown`; defaults and their sources in ``docs/timing.md`` §1.4).

The cost depends only on the kept *counts* (:func:`simfed.structure.structure_at`), never on which
groups were kept, so a plan is costed before any training runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from simfed.records import Plan
from simfed.structure import DECODER_MODULES, ModelShape, Structure, round_schedule, structure_at

# Elementwise FLOPs per element (forward). The backward pass of elementwise work is counted as
# ELEMENTWISE_BACKWARD_FACTOR times its forward. See docs/timing.md for the reasoning.
RMSNORM_FLOPS_PER_ELEMENT = 4  # square, sum, multiply by rsqrt, multiply by gain
ROPE_FLOPS_PER_ELEMENT = 3  # x*cos + rotate(x)*sin
SOFTMAX_FLOPS_PER_SCORE = 5  # scale, causal mask, max-subtract, exp, normalise (sum folded in)
SWIGLU_FLOPS_PER_CHANNEL = 5  # silu(g) = g * sigmoid(g): 4; times up: 1
RESIDUAL_FLOPS_PER_ELEMENT = 2  # two residual adds per layer, per hidden element
LORA_MERGE_FLOPS_PER_OUTPUT = 2  # scale the LoRA branch, add it to the frozen output
LOSS_FLOPS_PER_LOGIT = 4  # log-softmax (max-subtract, exp, sum, log-subtract); the gather is free
# Encoder (RoBERTa-style) elementwise work:
LAYERNORM_FLOPS_PER_ELEMENT = 7  # sum (mean), subtract, square, sum (variance), multiply by rsqrt, gain, bias
GELU_FLOPS_PER_ELEMENT = 8  # 0.5 x (1 + erf(x / sqrt 2)): scale 1, erf 4 (an assumption), add 1, multiply by x and 0.5: 2
BIAS_FLOPS_PER_OUTPUT = 1  # the bias added to each output element of a linear (inside addmm)
EMBEDDING_SUM_FLOPS_PER_ELEMENT = 2  # word + position + token-type embeddings
ELEMENTWISE_BACKWARD_FACTOR = 2

# Optimizer FLOPs per trainable parameter per step.
OPTIMIZER_FLOPS_PER_PARAM = {
    # m = b1 m + (1-b1) g: 3; v = b2 v + (1-b2) g^2: 4; sqrt(v_hat)+eps with bias corrections: 3;
    # p -= lr * m_hat / denom: 3; decoupled weight decay p *= (1 - lr wd): 1
    "adamw": 14,
    "sgd": 2,  # p -= lr * g
}
# Optimizer state tensors kept per trainable parameter (besides the parameter and its gradient).
OPTIMIZER_STATES_PER_PARAM = {"adamw": 2, "sgd": 0}

# Importance step per adapted linear, as simfed.accuracy.prune.lora_grad_scores computes it:
# G_hat = G_B A + (B - G_B) G_A (two [d_out, r] @ [r, d_in] products; the same value as LoRAPrune's
# G_B A + B G_A - G_B G_A with one product fewer) and W + s B A (one addmm): three products.
IMPORTANCE_MATMULS_PER_LINEAR = 3
# Per weight element: add the two G_hat products (1), scale B A by s and add W inside addmm (2),
# multiply by G_hat (1), absolute value (1), sum into the group (1).
IMPORTANCE_ELEMENTWISE_PER_WEIGHT = 6
# Per group score: normalise within the layer (2) and update the EMA (3).
IMPORTANCE_FLOPS_PER_SCORE = 5

MODULES: tuple[str, ...] = DECODER_MODULES  # the decoder's seven linears (ModelShape.modules gives any shape's)
# Position of each linear in a block's data flow: q, k, v read the block input; o reads the
# attention output; gate/up read the MLP input; down reads the MLP's hidden activation. In block 0,
# whose input is the frozen embedding output, a linear's input needs a gradient only if some
# adapted linear comes before it (autograd skips gradients nobody needs).
BLOCK_STAGE: dict[str, int] = {"q": 0, "k": 0, "v": 0, "o": 1, "gate": 2, "up": 2, "down": 3}

#: Bytes per element of the adapter dtypes ``lora.dtype`` accepts.
DTYPE_BYTES: dict[str, int] = {"float32": 4, "float16": 2}

# Runtime overheads of training memory (docs/timing.md §1.4 gives the sources and the measurements).
#: Host memory of a Python process that has imported PyTorch and run a first backward pass, before any
#: model exists: VmRSS 232,012 kB measured on the development machine (CPython 3.11, torch 2.13 CPU,
#: x86-64; ``import torch`` alone: 225,304 kB). Assumed to carry over to the boards' aarch64 builds.
PYTORCH_PROCESS_BYTES: float = 232_012 * 1024.0
#: CUDA context of a PyTorch process without lazy kernel loading: 1,122.5 MiB of RSS at the first CUDA
#: tensor (pytorch/pytorch#12873, memory_profiler; pytorch/pytorch#107667: "> 1000 MB" before CUDA 11.7
#: loaded kernels lazily, ~300 MB after). The paper's boards run JetPack 4.6 (TX2: CUDA 10.2) or 5.x
#: (Xavier: CUDA 11.4), both before 11.7; on a Jetson the GPU shares the board's RAM, so the context
#: counts against it. An assumption taken from desktop measurements, not measured on a board.
CUDA_CONTEXT_BYTES: float = 1122.5 * 2**20
#: Framework + accelerator context of one training process on a Jetson board (the two above).
DEFAULT_RUNTIME_BYTES: float = PYTORCH_PROCESS_BYTES + CUDA_CONTEXT_BYTES
#: PyTorch's CUDA caching allocator reserves more than the live tensors: GMLake (Guo et al., ASPLOS 2024,
#: arXiv 2401.08156) measured 15 % fragmentation on average (up to 33 %) over eight LLM fine-tuning
#: workloads (LoRA among them) on A100s, i.e. reserved = allocated / (1 - 0.15). An assumption for the
#: boards, which run the same allocator.
DEFAULT_ALLOCATOR_FACTOR: float = 1.0 / (1.0 - 0.15)


@dataclass(frozen=True)
class PlanCost:
    """Everything the engine needs to time one plan: work, payloads and memory."""

    flops: float
    down_bytes: float
    up_bytes: float
    memory_bytes: float


def linear_dims(shape: ModelShape, structure: Structure) -> dict[str, tuple[int, int]]:
    """(d_out, d_in) of each linear in one block of the pruned model, in ``shape.modules`` order.

    Decoder: ``q, k, v, o, gate, up, down``; encoder: ``q, k, v, o, up, down`` (``up`` is the
    GELU MLP's first matrix, HF's ``intermediate.dense``; ``down`` its second, ``output.dense``).
    """
    d, hd = shape.d_model, shape.head_dim
    heads = structure.heads(shape)
    groups = structure.kv_groups
    c = structure.channels
    dims = {
        "q": (heads * hd, d),
        "k": (groups * hd, d),
        "v": (groups * hd, d),
        "o": (d, heads * hd),
        "gate": (c, d),
        "up": (c, d),
        "down": (d, c),
    }
    return {m: dims[m] for m in shape.modules}


def check_lora_targets(shape: ModelShape, targets: Sequence[str] | None) -> tuple[str, ...]:
    """The adapted linears in ``shape.modules`` order; ``None`` means all of them.

    Raises ``ValueError`` (naming ``lora_targets``) for an empty list, a repeated name or a name that
    is not one of the shape's linears.
    """
    if targets is None:
        return shape.modules
    if isinstance(targets, str):
        raise ValueError(f"lora_targets must be a list of linear names, got the string {targets!r}")
    names = list(targets)
    if not names:
        raise ValueError(f"lora_targets must name at least one of {', '.join(shape.modules)}, got an empty list")
    unknown = [m for m in names if m not in shape.modules]
    if unknown:
        raise ValueError(f"lora_targets: {unknown[0]!r} is not a linear of this {shape.arch} "
                         f"(one of {', '.join(shape.modules)})")
    if len(set(names)) != len(names):
        raise ValueError(f"lora_targets names a linear twice: {names}")
    return tuple(m for m in shape.modules if m in names)


def lora_params(shape: ModelShape, structure: Structure, rank: int, targets: Sequence[str] | None = None) -> int:
    """LoRA parameters (A ``[r, d_in]`` and B ``[d_out, r]`` of every adapted linear, all layers) at a
    structure and rank; ``targets`` are the adapted linears (default: all of the shape's)."""
    dims = linear_dims(shape, structure)
    per_layer = sum(rank * (dims[m][0] + dims[m][1]) for m in check_lora_targets(shape, targets))
    return shape.n_layers * per_layer


def frozen_params(shape: ModelShape, structure: Structure, with_head: bool = True) -> int:
    """Base-model parameters left at a structure: embeddings (counted once when tied), norms,
    linear weights and (encoder) biases, and the encoder's classification head unless
    ``with_head`` is false (it trains, so it is not frozen)."""
    dims = linear_dims(shape, structure)
    per_layer = sum(d_out * d_in for d_out, d_in in dims.values())
    if shape.biased:
        per_layer += sum(d_out for d_out, _ in dims.values())
    head = shape.head_params() if with_head else 0
    return shape.embedding_params() + shape.norm_params() + shape.n_layers * per_layer + head


def _block0_input_grads(shape: ModelShape, targets: tuple[str, ...]) -> dict[str, bool]:
    """Whether each linear's input needs a gradient in block 0 (see :data:`BLOCK_STAGE`)."""
    first = min(BLOCK_STAGE[m] for m in targets)
    return {m: BLOCK_STAGE[m] > first for m in shape.modules}


class CostModel:
    """FLOPs, bytes and memory of LoRA prune-and-tune on a decoder or encoder (:class:`ModelShape`).

    ``param_bytes`` is the storage of the frozen base weights (2: fp16 on Jetson boards),
    ``lora_bytes`` that of LoRA factors, their gradients and optimizer states (4: fp32, also the
    payload precision), ``act_bytes`` that of saved activations (defaults to ``param_bytes``),
    ``logit_bytes`` that of the logits the loss upcasts (4). ``attention`` is ``"sdpa"`` (fused
    attention that saves only the log-sum-exp per query for backward) or ``"eager"`` (saves the
    probability matrix). ``importance`` turns FedSpine's importance step on for iterations that
    lead to a pruning step.

    ``iteration_overhead_flops`` is a fixed cost per local iteration, in FLOPs of the host it was
    calibrated on: the framework's dispatch of the ~10^3 small operations of a step, which does not
    shrink with pruning and dominates small models (``benchmarks/bench_cost_model.py`` fits it together
    with the host's throughput over a (sparsity, rank) grid; docs/timing.md gives the numbers). It
    defaults to 0 (FLOPs only); expressed in FLOPs, it scales with each device's throughput trace.

    ``lora_targets`` are the linears that carry LoRA (default ``None``: all of the shape's, as simfed
    trains; :func:`simfed.timing.presets.timing_cost` applies a preset's default, e.g. ``("q", "v")``
    for RoBERTa and LLaMA-7B as PEFT does). ``lora_bytes`` is the adapter dtype's size
    (:data:`DTYPE_BYTES`); when it differs from ``act_bytes``, each adapted linear runs its LoRA
    branch on its own copy of its input cast to the adapter dtype (PEFT's ``_cast_input_dtype``: the
    fp32 copies of mixed-precision LoRA training), which memory counts. ``train_head`` (encoder
    only; default: it trains, as PEFT's ``task_type="SEQ_CLS"`` marks the classifier
    ``modules_to_save``) makes the classification head trainable: its FLOPs, optimizer state and
    payload (it travels with the adapters) are counted. ``kv_repeat``: grouped-query attention
    materialises K and V for every query head before the attention kernel (simfed's model and HF's
    ``repeat_kv`` do), so the kernel saves them at the query heads' width.

    Memory overheads (docs/timing.md §1.4): the tensors' peak is multiplied by ``allocator_factor``
    (>= 1; default :data:`DEFAULT_ALLOCATOR_FACTOR`, the caching allocator's fragmentation) and
    ``runtime_bytes`` (>= 0; default :data:`DEFAULT_RUNTIME_BYTES`, the Python/PyTorch process and a
    Jetson's CUDA context) is added. Pass ``allocator_factor=1, runtime_bytes=0`` for tensors only.
    An operating-system reserve per device type is not the cost model's: it belongs to the device.

    Raises ``ValueError`` naming the argument for a bad value.

    Results are cached per distinct (structure, rank) and per distinct plan shape, because a
    timing run asks for the same few configurations millions of times.
    """

    #: A plan's cost depends on its shape only, never on the device (the engine costs each distinct shape once).
    costs_by_shape = True

    def __init__(
        self,
        shape: ModelShape,
        batch_size: int,
        seq_len: int,
        param_bytes: float = 2,
        lora_bytes: float = 4,
        optimizer: str = "adamw",
        importance: bool = True,
        act_bytes: float | None = None,
        logit_bytes: float = 4,
        attention: str = "sdpa",
        iteration_overhead_flops: float = 0.0,
        lora_targets: Sequence[str] | None = None,
        train_head: bool | None = None,
        kv_repeat: bool = True,
        allocator_factor: float = DEFAULT_ALLOCATOR_FACTOR,
        runtime_bytes: float = DEFAULT_RUNTIME_BYTES,
    ) -> None:
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size}, {seq_len}")
        if optimizer not in OPTIMIZER_FLOPS_PER_PARAM:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZER_FLOPS_PER_PARAM)}, got {optimizer!r}")
        if not (math.isfinite(iteration_overhead_flops) and iteration_overhead_flops >= 0):
            raise ValueError(f"iteration_overhead_flops must be a finite number >= 0, got {iteration_overhead_flops!r}")
        if attention not in ("sdpa", "eager"):
            raise ValueError(f"attention must be 'sdpa' or 'eager', got {attention!r}")
        for name, value in (("param_bytes", param_bytes), ("lora_bytes", lora_bytes), ("logit_bytes", logit_bytes)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if act_bytes is not None and not act_bytes > 0:
            raise ValueError(f"act_bytes must be > 0, got {act_bytes!r}")
        if not (math.isfinite(allocator_factor) and allocator_factor >= 1.0):
            raise ValueError(f"allocator_factor must be a finite number >= 1, got {allocator_factor!r}")
        if not (math.isfinite(runtime_bytes) and runtime_bytes >= 0.0):
            raise ValueError(f"runtime_bytes must be a finite number >= 0, got {runtime_bytes!r}")
        if shape.arch == "encoder" and seq_len > shape.max_positions:
            raise ValueError(f"seq_len {seq_len} exceeds the encoder's {shape.max_positions} learned positions")
        if train_head is None:
            train_head = shape.arch == "encoder"
        if train_head and shape.arch != "encoder":
            raise ValueError("train_head applies to an encoder's classification head; a decoder's lm_head stays frozen")
        self.shape = shape
        self.batch_size = int(batch_size)
        self.seq_len = int(seq_len)
        self.param_bytes = float(param_bytes)
        self.lora_bytes = float(lora_bytes)
        self.act_bytes = float(param_bytes if act_bytes is None else act_bytes)
        self.logit_bytes = float(logit_bytes)
        self.optimizer = optimizer
        self.importance = bool(importance)
        self.attention = attention
        self.iteration_overhead_flops = float(iteration_overhead_flops)
        self.lora_targets: tuple[str, ...] = check_lora_targets(shape, lora_targets)
        self.train_head = bool(train_head)
        self.kv_repeat = bool(kv_repeat)
        self.allocator_factor = float(allocator_factor)
        self.runtime_bytes = float(runtime_bytes)
        self._iter_cache: dict[tuple, float] = {}
        self._plan_cache: dict[tuple, PlanCost] = {}

    # ------------------------------------------------------------------ compute
    def iteration_breakdown(self, structure: Structure, rank: int, with_importance: bool | None = None) -> dict[str, float]:
        """FLOPs of one local iteration, by part.

        ``forward_matmul``/``backward_matmul``/``importance_matmul`` are matmul FLOPs (what
        ``torch.utils.flop_counter`` counts); ``elementwise`` (norms, RoPE, softmax, SwiGLU or GELU,
        biases, residuals, LoRA merge, loss; forward and backward), ``optimizer`` and
        ``importance_elementwise`` are the rest; ``overhead`` is ``iteration_overhead_flops``.
        ``with_importance`` defaults to the model's setting. Formulas: docs/timing.md §1.1.
        """
        sh = self.shape
        use_imp = self.importance if with_importance is None else bool(with_importance)
        b = self.batch_size
        n_tok = b * self.seq_len
        t = self.seq_len
        dims = linear_dims(sh, structure)
        targets = self.lora_targets
        heads = structure.heads(sh)
        r = int(rank)
        L = sh.n_layers
        d, V = sh.d_model, sh.vocab_size
        encoder = sh.arch == "encoder"

        frozen = sum(2 * n_tok * o * i for o, i in dims.values())
        lora_fwd = sum(2 * n_tok * r * (dims[m][0] + dims[m][1]) for m in targets)
        attn_product = 2 * b * t * t * sh.head_dim * heads  # one of Q K^T, P V and their four gradient products
        if encoder:  # classification head on the first token: dense d x d, out_proj d x num_labels
            head = 2 * b * d * (d + sh.num_labels)
            head_backward = head * (2 if self.train_head else 1)  # input gradients (+ weight gradients)
        else:  # lm_head over every token; frozen, so only its input gradient
            head = head_backward = 2 * n_tok * d * V

        forward = L * (frozen + lora_fwd + 2 * attn_product) + head
        # Backward: input gradients through the frozen weights, LoRA weight gradients (grad_B, grad_u,
        # grad_A), the LoRA input-gradient path, attention (4 products per block) and the head. In
        # block 0, whose input is the frozen embedding output, a linear's input gradient is computed
        # only if an adapted linear comes before it, and attention computes dQ / dK / dP / dV only
        # for what leads back to an adapted q, k or v.
        needs = _block0_input_grads(sh, targets)
        frozen_skip = sum(2 * n_tok * o * i for m, (o, i) in dims.items() if not needs[m])
        lora_wgrad = sum(2 * n_tok * r * (2 * dims[m][0] + dims[m][1]) for m in targets)
        lora_xgrad = sum(2 * n_tok * r * dims[m][1] for m in targets)
        lora_xgrad_skip = sum(2 * n_tok * r * dims[m][1] for m in targets if not needs[m])
        q_grad, k_grad, v_grad = ("q" in targets), ("k" in targets), ("v" in targets)
        block0_attn = int(q_grad) + int(k_grad) + int(q_grad or k_grad) + int(v_grad)  # dQ, dK, dP, dV
        backward = (
            L * (frozen + lora_wgrad + lora_xgrad)
            + ((L - 1) * 4 + block0_attn) * attn_product
            - frozen_skip
            - lora_xgrad_skip
            + head_backward
        )

        g, c = structure.kv_groups, structure.channels
        merge = L * n_tok * sum(dims[m][0] for m in targets) * LORA_MERGE_FLOPS_PER_OUTPUT
        common = (
            L * b * heads * t * t * SOFTMAX_FLOPS_PER_SCORE
            + L * n_tok * d * RESIDUAL_FLOPS_PER_ELEMENT
            + merge
        )
        if encoder:
            ew_fwd = common + (
                (2 * L + 1) * n_tok * d * LAYERNORM_FLOPS_PER_ELEMENT
                + n_tok * d * EMBEDDING_SUM_FLOPS_PER_ELEMENT
                + L * n_tok * c * GELU_FLOPS_PER_ELEMENT
                + L * n_tok * sum(o for o, _ in dims.values()) * BIAS_FLOPS_PER_OUTPUT
                + b * sh.num_labels * LOSS_FLOPS_PER_LOGIT
            )
        else:
            ew_fwd = common + (
                (2 * L + 1) * n_tok * d * RMSNORM_FLOPS_PER_ELEMENT
                + L * n_tok * (heads + g) * sh.head_dim * ROPE_FLOPS_PER_ELEMENT
                + L * n_tok * c * SWIGLU_FLOPS_PER_CHANNEL
                + n_tok * V * LOSS_FLOPS_PER_LOGIT
            )
        elementwise = ew_fwd * (1 + ELEMENTWISE_BACKWARD_FACTOR)
        optimizer = OPTIMIZER_FLOPS_PER_PARAM[self.optimizer] * self.trainable_params(structure, r)

        imp_mm = imp_ew = 0.0
        if use_imp:
            weights = sum(dims[m][0] * dims[m][1] for m in targets)
            # G_B A, (B - G_B) G_A and addmm(W, B, A): [d_out, r] @ [r, d_in] products, per adapted linear.
            imp_mm = L * IMPORTANCE_MATMULS_PER_LINEAR * 2 * r * weights
            b_minus_gb = sum(dims[m][0] * r for m in targets)
            imp_ew = L * (IMPORTANCE_ELEMENTWISE_PER_WEIGHT * weights + b_minus_gb + IMPORTANCE_FLOPS_PER_SCORE * (g + c))
        return {
            "forward_matmul": float(forward),
            "backward_matmul": float(backward),
            "importance_matmul": float(imp_mm),
            "elementwise": float(elementwise),
            "optimizer": float(optimizer),
            "importance_elementwise": float(imp_ew),
            "overhead": self.iteration_overhead_flops,
        }

    def trainable_params(self, structure: Structure, rank: int) -> int:
        """Parameters the optimizer updates: the LoRA factors of the adapted linears, plus the encoder's
        classification head when it trains."""
        head = self.shape.head_params() if self.train_head else 0
        return lora_params(self.shape, structure, rank, self.lora_targets) + head

    def matmul_flops(self, structure: Structure, rank: int, with_importance: bool | None = None) -> float:
        """Matmul FLOPs of one iteration: the number ``torch.utils.flop_counter`` reports."""
        b = self.iteration_breakdown(structure, rank, with_importance)
        return b["forward_matmul"] + b["backward_matmul"] + b["importance_matmul"]

    def iteration_flops(self, structure: Structure, rank: int, with_importance: bool | None = None) -> float:
        """All FLOPs of one local iteration (matmuls, elementwise work, optimizer, importance)."""
        use_imp = self.importance if with_importance is None else bool(with_importance)
        key = (structure.kv_groups, structure.channels, int(rank), use_imp)
        hit = self._iter_cache.get(key)
        if hit is None:
            hit = float(sum(self.iteration_breakdown(structure, rank, use_imp).values()))
            self._iter_cache[key] = hit
        return hit

    def round_flops(self, plan: Plan) -> float:
        """FLOPs of a whole round: every stage of :func:`round_schedule` at its own structure.

        The importance step is counted only in stages that end with a pruning step: a round that
        prunes nothing (the device is at its target) needs no importance scores.
        """
        total = 0.0
        for stage in round_schedule(plan.sparsity_before, plan.sparsity_after, plan.local_iters, plan.tau):
            st = structure_at(self.shape, stage.sparsity)
            total += stage.iters * self.iteration_flops(st, plan.rank, self.importance and stage.prune_after)
        return total

    # ------------------------------------------------------------------ network
    def mask_bytes(self) -> float:
        """The kept-index bitmask: one bit per KV group and per MLP channel, per layer."""
        sh = self.shape
        return float(math.ceil(sh.n_layers * (sh.n_kv_heads + sh.d_ff) / 8))

    def download_bytes(self, plan: Plan) -> float:
        """Global LoRA factors sliced to the device's round-start structure and its download rank
        (:attr:`~simfed.records.Plan.download_rank`: its own rank, or e.g. FLoRA's stacked rank), plus the base
        model's weights at that structure when the plan includes the first download of the base model."""
        st = structure_at(self.shape, plan.sparsity_before)
        lora = self.adapter_bytes(st, plan.download_rank)
        return lora + (self.base_model_bytes(plan.sparsity_before) if plan.base_download else 0.0)

    def adapter_bytes(self, structure: Structure, rank: int) -> float:
        """What trains and travels each round, in the adapter dtype: the LoRA factors of the adapted
        linears at a structure and rank, plus the encoder's classification head when it trains."""
        return self.trainable_params(structure, rank) * self.lora_bytes

    def base_model_bytes(self, sparsity: float) -> float:
        """The frozen base model's weights at a nominal sparsity (what a device downloads once)."""
        return frozen_params(self.shape, structure_at(self.shape, sparsity), with_head=not self.train_head) * self.param_bytes

    def oneshot_pruning_flops(self, n_sequences: int) -> float:
        """Server FLOPs of one-shot pruning by first-order Taylor importance (LLM-Pruner) on ``n_sequences``
        calibration sequences of ``seq_len`` tokens: a forward pass and a backward pass with input and
        weight gradients (about twice the forward) through the unpruned model, i.e. 3x the forward."""
        return 3.0 * n_sequences * self.inference_flops(0.0)

    def upload_bytes(self, plan: Plan) -> float:
        """Trained factors (and head, when it trains) at the structure after the round, plus the kept-index bitmask."""
        st = structure_at(self.shape, plan.sparsity_after)
        return self.adapter_bytes(st, plan.rank) + self.mask_bytes()

    # ------------------------------------------------------------------ memory
    def _saved_per_token_layer(self, structure: Structure, rank: int) -> tuple[int, int, int]:
        """Per token and block: (elements saved for backward in the activation dtype, of which those
        saved only as LoRA-A inputs, dropout-mask bytes). docs/timing.md §1.4 lists them."""
        sh = self.shape
        targets = self.lora_targets
        heads, g, c = structure.heads(sh), structure.kv_groups, structure.channels
        d, hd, r = sh.d_model, sh.head_dim, int(rank)
        eager = self.attention == "eager"
        qkv_in = d if any(m in targets for m in ("q", "k", "v")) else 0  # block / attention input, LoRA-A of q, k, v
        out = heads * hd if (not eager or "o" in targets) else 0  # attention output: saved by sdpa, and as o's LoRA-A input
        out_lora_only = heads * hd if (eager and "o" in targets) else 0
        scores = heads * self.seq_len if eager else heads  # probabilities (eager) or one log-sum-exp per head (sdpa)
        down_in = c if "down" in targets else 0  # the MLP's hidden activation, LoRA-A input of down
        if sh.arch == "encoder":
            up_in = d if "up" in targets else 0  # LayerNorm-1 output, LoRA-A input of up
            # q, k, v; LayerNorm-1 and -2 inputs; the GELU input
            per = qkv_in + 3 * heads * hd + out + scores + 2 * d + up_in + c + down_in
            lora_only = qkv_in + out_lora_only + up_in + down_in
            masks = 2 * d  # hidden-dropout masks (one byte per element) after o and after down
        else:
            mlp_in = d if ("gate" in targets or "up" in targets) else 0  # MLP-norm output, LoRA-A input of gate, up
            # both RMSNorm inputs; q and k after RoPE, v; gate, silu(gate), up (saved by silu and the product)
            per = 2 * d + qkv_in + (heads + 2 * g) * hd + out + scores + mlp_in + 3 * c + down_in
            lora_only = qkv_in + out_lora_only + mlp_in + down_in
            masks = 0
        per += r * len(targets)  # the LoRA intermediates u = x A^T (inputs of B)
        return per, lora_only, masks

    def memory_breakdown(self, structure: Structure, rank: int) -> dict[str, float]:
        """Peak training memory at a structure and rank, by part (bytes); the parts sum to the peak.

        Tensors: ``weights`` (frozen base), ``lora`` (adapter parameters, gradients and optimizer
        states), ``head`` (the encoder's trained classification head, likewise), ``activations``
        (saved for backward), ``kv_repeat`` (K and V repeated to every query head under grouped-query
        attention), ``adapter_casts`` (the adapters' copies of their inputs in the adapter dtype when
        it differs from the activations'; negative when it is narrower), ``logits`` (logits and
        log-probabilities), ``grad_buffers`` (gradients in flight at the peak, while all of the above
        is alive: the logits' and log-probabilities' gradients at the start of the backward pass, or
        the gradients of the last block's MLP activations, ``2 N F'``, whichever is larger),
        ``importance`` (what the importance step needs beyond the backward pass's buffers, which are
        freed by then; usually 0). Overheads: ``allocator``
        (``allocator_factor - 1`` times the tensors) and ``runtime`` (``runtime_bytes``).
        Formulas and their checks against measured peaks: docs/timing.md §1.4.
        """
        sh = self.shape
        n_tok = self.batch_size * self.seq_len
        L = sh.n_layers
        dims = linear_dims(sh, structure)
        targets = self.lora_targets
        heads, g, c, d, hd, r = structure.heads(sh), structure.kv_groups, structure.channels, sh.d_model, sh.head_dim, int(rank)
        ab, lb = self.act_bytes, self.lora_bytes
        per, lora_only, masks = self._saved_per_token_layer(structure, r)
        final = d if sh.arch == "decoder" else 0  # the final RMSNorm's input
        activations = n_tok * (L * per + final) * ab + n_tok * L * masks
        kv_repeat = n_tok * L * 2 * (heads - g) * hd * ab if (self.kv_repeat and heads > g) else 0.0
        casts = 0.0
        if lb != ab:
            # PEFT casts each adapted linear's input to the adapter dtype (one copy per linear, saved for
            # grad_A) instead of keeping the activation-dtype input; u = x A^T is in the adapter dtype.
            per_cast = sum(dims[m][1] for m in targets) * lb - lora_only * ab + r * len(targets) * (lb - ab)
            casts = n_tok * L * per_cast
        classes = sh.num_labels if sh.arch == "encoder" else sh.vocab_size
        rows = self.batch_size if sh.arch == "encoder" else n_tok  # a classifier scores one token per sequence
        logits = 2.0 * rows * classes * self.logit_bytes
        # In flight at the peak: the gradients of the logits and log-probabilities as the backward pass
        # starts, or (small vocabularies, classifiers) those of the last block's MLP activations.
        grad_buffers = max(logits, 2.0 * n_tok * c * ab)
        states = 2 + OPTIMIZER_STATES_PER_PARAM[self.optimizer]  # parameter, gradient, optimizer states
        largest = max(dims[m][0] * dims[m][1] for m in targets)
        importance = 0.0
        if self.importance:
            # G_hat and (W + s B A) of the linear being scored (one at a time, in the adapter dtype),
            # plus the current and EMA group scores of every layer (fp32); the step runs after the
            # backward pass has freed its activations and gradient buffers.
            buffers = 2 * largest * lb + 2 * L * (g + c) * 4
            importance = max(0.0, buffers - (activations + kv_repeat + casts + grad_buffers))
        parts = {
            "weights": frozen_params(sh, structure, with_head=not self.train_head) * self.param_bytes,
            "activations": float(activations),
            "lora": lora_params(sh, structure, r, targets) * lb * states,
            "importance": float(importance),
            "logits": logits,
            "kv_repeat": float(kv_repeat),
            "adapter_casts": float(casts),
            "grad_buffers": grad_buffers,
            "head": float(sh.head_params() * lb * states if self.train_head else 0),
        }
        tensors = float(sum(parts.values()))
        parts["allocator"] = (self.allocator_factor - 1.0) * tensors
        parts["runtime"] = self.runtime_bytes
        return parts

    def tensor_memory_bytes(self, structure: Structure, rank: int) -> float:
        """The tensors' peak at a structure and rank (bytes): :meth:`memory_breakdown` without the
        ``allocator`` and ``runtime`` overheads. This is what ``benchmarks/bench_memory.py`` measures."""
        parts = self.memory_breakdown(structure, rank)
        return float(sum(v for k, v in parts.items() if k not in ("allocator", "runtime")))

    def train_memory_bytes(self, plan: Plan) -> float:
        """Peak training memory of a round, overheads included: at the round-start structure, the largest of the round."""
        st = structure_at(self.shape, plan.sparsity_before)
        return float(sum(self.memory_breakdown(st, plan.rank).values()))

    # ------------------------------------------------------------------ plans
    def plan_cost(self, plan: Plan) -> PlanCost:
        """All costs of a plan, cached per distinct (sparsities, iterations, tau, rank, base download, download rank)."""
        key = (plan.sparsity_before, plan.sparsity_after, plan.local_iters, plan.tau, plan.rank, plan.base_download,
               plan.download_rank)
        hit = self._plan_cache.get(key)
        if hit is None:
            hit = PlanCost(
                flops=self.round_flops(plan),
                down_bytes=self.download_bytes(plan),
                up_bytes=self.upload_bytes(plan),
                memory_bytes=self.train_memory_bytes(plan),
            )
            self._plan_cache[key] = hit
        return hit

    # ------------------------------------------------------------------ inference
    def inference_flops(self, sparsity: float, seq_len: int | None = None) -> float:
        """Forward FLOPs (matmuls and elementwise) of one sequence through the pruned, merged model
        (a decoder's language-model head over every token; an encoder's classification head on the first)."""
        sh = self.shape
        t = self.seq_len if seq_len is None else int(seq_len)
        st = structure_at(sh, sparsity)
        dims = linear_dims(sh, st)
        heads = st.heads(sh)
        L, d = sh.n_layers, sh.d_model
        blocks = L * (sum(2 * t * o * i for o, i in dims.values()) + 4 * t * t * sh.head_dim * heads)
        common = L * heads * t * t * SOFTMAX_FLOPS_PER_SCORE + L * t * d * RESIDUAL_FLOPS_PER_ELEMENT
        if sh.arch == "encoder":
            mm = blocks + 2 * d * (d + sh.num_labels)
            ew = common + (
                (2 * L + 1) * t * d * LAYERNORM_FLOPS_PER_ELEMENT
                + t * d * EMBEDDING_SUM_FLOPS_PER_ELEMENT
                + L * t * st.channels * GELU_FLOPS_PER_ELEMENT
                + L * t * sum(o for o, _ in dims.values()) * BIAS_FLOPS_PER_OUTPUT
            )
        else:
            mm = blocks + 2 * t * d * sh.vocab_size
            ew = common + (
                (2 * L + 1) * t * d * RMSNORM_FLOPS_PER_ELEMENT
                + L * t * (heads + st.kv_groups) * sh.head_dim * ROPE_FLOPS_PER_ELEMENT
                + L * t * st.channels * SWIGLU_FLOPS_PER_CHANNEL
            )
        return float(mm + ew)

    def inference_memory_bytes(self, sparsity: float, seq_len: int | None = None) -> float:
        """Pruned weights plus, for a decoder, the KV cache of one sequence of ``seq_len`` tokens (an
        encoder classifies a sequence in one pass and keeps no cache)."""
        sh = self.shape
        t = self.seq_len if seq_len is None else int(seq_len)
        st = structure_at(sh, sparsity)
        kv_cache = 2 * sh.n_layers * st.kv_groups * sh.head_dim * t * self.act_bytes if sh.arch == "decoder" else 0
        return float(frozen_params(sh, st) * self.param_bytes + kv_cache)

    def inference_ratios(self, sparsity: float, seq_len: int | None = None) -> tuple[float, float]:
        """(FLOPs, memory) of inference at ``sparsity`` relative to the unpruned model."""
        return (
            self.inference_flops(sparsity, seq_len) / self.inference_flops(0.0, seq_len),
            self.inference_memory_bytes(sparsity, seq_len) / self.inference_memory_bytes(0.0, seq_len),
        )

