"""Analytical cost model: FLOPs, payload bytes and memory of one device's round, from model shapes.

The timing layer needs, for every :class:`~simfed.records.Plan`, how much work the device does
(FLOPs through its compute trace), how much it moves (bytes through its network traces) and whether
it fits its RAM. FedSpine (arXiv 2501.02438) reasons with per-iteration compute that shrinks with the
device's sparsity and grows with its LoRA rank, LoRA-only communication in the pruned shapes (its
Eq. 10-11 as reconstructed in ``reference/fedspine-paper-notes.md`` §5) and training memory of the
pruned frozen weights plus activations, LoRA state and importance buffers.

simfed counts these exactly from the shapes of a LLaMA-style decoder (RMSNorm, RoPE, attention with
``q, k, v, o`` bias-free linears, SwiGLU ``gate, up, down``, tied ``lm_head``, LoRA on all seven
linears) instead of using proportional constants: a matmul of ``[m, k] @ [k, n]`` costs ``2 m n k``
FLOPs, and every elementwise operation counted is listed in ``docs/timing.md``. The matmul part is
what ``torch.utils.flop_counter`` reports for the same model, so the two can be compared directly
(:meth:`CostModel.iteration_breakdown` keeps them apart).

The cost depends only on the kept *counts* (:func:`simfed.structure.structure_at`), never on which
groups were kept, so a plan is costed before any training runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from simfed.records import Plan
from simfed.structure import ModelShape, Structure, round_schedule, structure_at

# Elementwise FLOPs per element (forward). The backward pass of elementwise work is counted as
# ELEMENTWISE_BACKWARD_FACTOR times its forward. See docs/timing.md for the reasoning.
RMSNORM_FLOPS_PER_ELEMENT = 4  # square, sum, multiply by rsqrt, multiply by gain
ROPE_FLOPS_PER_ELEMENT = 3  # x*cos + rotate(x)*sin
SOFTMAX_FLOPS_PER_SCORE = 5  # scale, causal mask, max-subtract, exp, normalise (sum folded in)
SWIGLU_FLOPS_PER_CHANNEL = 5  # silu(g) = g * sigmoid(g): 4; times up: 1
RESIDUAL_FLOPS_PER_ELEMENT = 2  # two residual adds per layer, per hidden element
LORA_MERGE_FLOPS_PER_OUTPUT = 2  # scale the LoRA branch, add it to the frozen output
LOSS_FLOPS_PER_LOGIT = 4  # log-softmax (max-subtract, exp, sum, log-subtract); the gather is free
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

MODULES: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")
INPUT_PROJECTIONS: tuple[str, ...] = ("q", "k", "v")  # read the (frozen) embedding output in layer 0


@dataclass(frozen=True)
class PlanCost:
    """Everything the engine needs to time one plan: work, payloads and memory."""

    flops: float
    down_bytes: float
    up_bytes: float
    memory_bytes: float


def linear_dims(shape: ModelShape, structure: Structure) -> dict[str, tuple[int, int]]:
    """(d_out, d_in) of each adapted linear in one decoder layer of the pruned model."""
    d, hd = shape.d_model, shape.head_dim
    heads = structure.heads(shape)
    groups = structure.kv_groups
    c = structure.channels
    return {
        "q": (heads * hd, d),
        "k": (groups * hd, d),
        "v": (groups * hd, d),
        "o": (d, heads * hd),
        "gate": (c, d),
        "up": (c, d),
        "down": (d, c),
    }


def lora_params(shape: ModelShape, structure: Structure, rank: int) -> int:
    """LoRA parameters (A and B of all seven linears, all layers) at a structure and rank."""
    per_layer = sum(rank * (d_out + d_in) for d_out, d_in in linear_dims(shape, structure).values())
    return shape.n_layers * per_layer


def frozen_params(shape: ModelShape, structure: Structure) -> int:
    """Base-model parameters left at a structure (embeddings counted once when tied, norms included)."""
    per_layer = sum(d_out * d_in for d_out, d_in in linear_dims(shape, structure).values())
    emb = shape.vocab_size * shape.d_model * (1 if shape.tied_embeddings else 2)
    norms = (2 * shape.n_layers + 1) * shape.d_model
    return emb + norms + shape.n_layers * per_layer


class CostModel:
    """FLOPs, bytes and memory of LoRA prune-and-tune on a LLaMA-style decoder.

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

    Results are cached per distinct (structure, rank) and per distinct plan shape, because a
    timing run asks for the same few configurations millions of times.
    """

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
        self._iter_cache: dict[tuple, float] = {}
        self._plan_cache: dict[tuple, PlanCost] = {}

    # ------------------------------------------------------------------ compute
    def iteration_breakdown(self, structure: Structure, rank: int, with_importance: bool | None = None) -> dict[str, float]:
        """FLOPs of one local iteration, by part.

        ``forward_matmul``/``backward_matmul``/``importance_matmul`` are matmul FLOPs (what
        ``torch.utils.flop_counter`` counts); ``elementwise`` (norms, RoPE, softmax, SwiGLU,
        residuals, LoRA merge, loss; forward and backward), ``optimizer`` and
        ``importance_elementwise`` are the rest; ``overhead`` is ``iteration_overhead_flops``.
        ``with_importance`` defaults to the model's setting.
        """
        sh = self.shape
        use_imp = self.importance if with_importance is None else bool(with_importance)
        n_tok = self.batch_size * self.seq_len
        t = self.seq_len
        dims = linear_dims(sh, structure)
        heads = structure.heads(sh)
        r = int(rank)
        L = sh.n_layers
        d, V = sh.d_model, sh.vocab_size

        frozen = sum(2 * n_tok * o * i for o, i in dims.values())
        frozen_first = sum(2 * n_tok * dims[m][0] * dims[m][1] for m in INPUT_PROJECTIONS)
        lora_fwd = sum(2 * n_tok * r * (o + i) for o, i in dims.values())
        attn_fwd = 4 * self.batch_size * t * t * sh.head_dim * heads  # Q K^T and P V
        lm_head = 2 * n_tok * d * V

        forward = L * (frozen + lora_fwd + attn_fwd) + lm_head
        # Backward: input gradients through the frozen weights (not for layer 0's q, k, v, whose
        # input is the frozen embedding output), LoRA weight gradients (grad_B, grad_u, grad_A)
        # and the LoRA input-gradient path (again not in layer 0's q, k, v), attention (4 matmuls).
        lora_wgrad = sum(2 * n_tok * r * (2 * o + i) for o, i in dims.values())
        lora_xgrad = sum(2 * n_tok * r * i for o, i in dims.values())
        lora_xgrad_first = sum(2 * n_tok * r * dims[m][1] for m in INPUT_PROJECTIONS)
        backward = (
            L * (frozen + lora_wgrad + lora_xgrad + 2 * attn_fwd)
            - frozen_first
            - lora_xgrad_first
            + lm_head
        )

        g, c = structure.kv_groups, structure.channels
        ew_fwd = (
            (2 * L + 1) * n_tok * d * RMSNORM_FLOPS_PER_ELEMENT
            + L * n_tok * (heads + g) * sh.head_dim * ROPE_FLOPS_PER_ELEMENT
            + L * self.batch_size * heads * t * t * SOFTMAX_FLOPS_PER_SCORE
            + L * n_tok * c * SWIGLU_FLOPS_PER_CHANNEL
            + L * n_tok * d * RESIDUAL_FLOPS_PER_ELEMENT
            + L * n_tok * sum(o for o, _ in dims.values()) * LORA_MERGE_FLOPS_PER_OUTPUT
            + n_tok * V * LOSS_FLOPS_PER_LOGIT
        )
        elementwise = ew_fwd * (1 + ELEMENTWISE_BACKWARD_FACTOR)
        optimizer = OPTIMIZER_FLOPS_PER_PARAM[self.optimizer] * lora_params(sh, structure, r)

        imp_mm = imp_ew = 0.0
        if use_imp:
            weights = sum(o * i for o, i in dims.values())
            # G_B A, (B - G_B) G_A and addmm(W, B, A): [d_out, r] @ [r, d_in] products.
            imp_mm = L * IMPORTANCE_MATMULS_PER_LINEAR * 2 * r * weights
            b_minus_gb = sum(o * r for o, _ in dims.values())
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
        """Global LoRA factors sliced to the device's round-start structure and its rank."""
        st = structure_at(self.shape, plan.sparsity_before)
        return lora_params(self.shape, st, plan.rank) * self.lora_bytes

    def upload_bytes(self, plan: Plan) -> float:
        """Trained factors at the structure after the round, plus the kept-index bitmask."""
        st = structure_at(self.shape, plan.sparsity_after)
        return lora_params(self.shape, st, plan.rank) * self.lora_bytes + self.mask_bytes()

    # ------------------------------------------------------------------ memory
    def memory_breakdown(self, structure: Structure, rank: int) -> dict[str, float]:
        """Training memory at a structure and rank, by part (bytes)."""
        sh = self.shape
        n_tok = self.batch_size * self.seq_len
        dims = linear_dims(sh, structure)
        heads = structure.heads(sh)
        g, c, d, hd, r = structure.kv_groups, structure.channels, sh.d_model, sh.head_dim, int(rank)
        n_lora = lora_params(sh, structure, r)
        # Saved for backward, per token per layer: the two RMSNorm inputs and outputs (the outputs
        # are the LoRA-A inputs), the seven LoRA intermediates x A^T, q and k after RoPE, v, the
        # attention output (input of o), one log-sum-exp per head (sdpa) or the probabilities
        # (eager), and gate, up, silu(gate), silu(gate)*up of the MLP.
        per_tok_layer = 4 * d + 7 * r + 2 * heads * hd + 2 * g * hd + 4 * c
        per_tok_layer += heads * (self.seq_len if self.attention == "eager" else 1)
        activations = n_tok * (sh.n_layers * per_tok_layer + d) * self.act_bytes  # + final norm input
        largest = max(o * i for o, i in dims.values())
        importance = 0.0
        if self.importance:
            # G_hat and (W + s B A) of the linear being scored (one at a time, fp32), plus the
            # current and EMA group scores of every layer.
            importance = 2 * largest * self.lora_bytes + 2 * sh.n_layers * (g + c) * 4
        return {
            "weights": frozen_params(sh, structure) * self.param_bytes,
            "activations": float(activations),
            "lora": n_lora * self.lora_bytes * (2 + OPTIMIZER_STATES_PER_PARAM[self.optimizer]),
            "importance": float(importance),
            "logits": 2.0 * n_tok * sh.vocab_size * self.logit_bytes,  # logits and log-probs/gradient
        }

    def train_memory_bytes(self, plan: Plan) -> float:
        """Peak training memory of a round: at the round-start structure, the largest of the round."""
        st = structure_at(self.shape, plan.sparsity_before)
        return float(sum(self.memory_breakdown(st, plan.rank).values()))

    # ------------------------------------------------------------------ plans
    def plan_cost(self, plan: Plan) -> PlanCost:
        """All costs of a plan, cached per distinct (sparsities, iterations, tau, rank)."""
        key = (plan.sparsity_before, plan.sparsity_after, plan.local_iters, plan.tau, plan.rank)
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
        """Forward FLOPs (matmuls and elementwise) of one sequence through the pruned, merged model."""
        sh = self.shape
        t = self.seq_len if seq_len is None else int(seq_len)
        st = structure_at(sh, sparsity)
        dims = linear_dims(sh, st)
        heads = st.heads(sh)
        L, d = sh.n_layers, sh.d_model
        mm = L * (sum(2 * t * o * i for o, i in dims.values()) + 4 * t * t * sh.head_dim * heads) + 2 * t * d * sh.vocab_size
        ew = (
            (2 * L + 1) * t * d * RMSNORM_FLOPS_PER_ELEMENT
            + L * t * (heads + st.kv_groups) * sh.head_dim * ROPE_FLOPS_PER_ELEMENT
            + L * heads * t * t * SOFTMAX_FLOPS_PER_SCORE
            + L * t * st.channels * SWIGLU_FLOPS_PER_CHANNEL
            + L * t * d * RESIDUAL_FLOPS_PER_ELEMENT
        )
        return float(mm + ew)

    def inference_memory_bytes(self, sparsity: float, seq_len: int | None = None) -> float:
        """Pruned weights plus the KV cache of one sequence of ``seq_len`` tokens."""
        sh = self.shape
        t = self.seq_len if seq_len is None else int(seq_len)
        st = structure_at(sh, sparsity)
        kv_cache = 2 * sh.n_layers * st.kv_groups * sh.head_dim * t * self.act_bytes
        return float(frozen_params(sh, st) * self.param_bytes + kv_cache)

    def inference_ratios(self, sparsity: float, seq_len: int | None = None) -> tuple[float, float]:
        """(FLOPs, memory) of inference at ``sparsity`` relative to the unpruned model."""
        return (
            self.inference_flops(sparsity, seq_len) / self.inference_flops(0.0, seq_len),
            self.inference_memory_bytes(sparsity, seq_len) / self.inference_memory_bytes(0.0, seq_len),
        )

