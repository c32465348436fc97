"""The cost model: matmul FLOPs against torch's flop counter on a real pruned LoRA model, bytes and
memory against hand counts, monotonicity in sparsity and rank."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from simfed.records import Arm, Plan
from simfed.structure import ModelShape, Structure, structure_at
from simfed.timing.cost import CostModel, PlanCost, linear_dims, lora_params

SHAPE = ModelShape(n_layers=2, d_model=16, n_heads=4, n_kv_heads=2, head_dim=4, d_ff=24, vocab_size=11)


class _LoRALinear(torch.nn.Module):
    """A frozen bias-free linear with a LoRA branch, as PEFT applies it: W x + s * B(A x)."""

    def __init__(self, d_in: int, d_out: int, rank: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(d_out, d_in), requires_grad=False)
        self.A = torch.nn.Parameter(torch.randn(rank, d_in) * 0.1)
        self.B = torch.nn.Parameter(torch.randn(d_out, rank) * 0.1)
        self.scale = 2.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight) + F.linear(F.linear(x, self.A), self.B) * self.scale


class _TinyLlama(torch.nn.Module):
    """LLaMA-style decoder at a pruned structure (RMSNorm, RoPE-free: RoPE has no matmul)."""

    def __init__(self, shape: ModelShape, st: Structure, rank: int) -> None:
        super().__init__()
        self.shape, self.st = shape, st
        dims = linear_dims(shape, st)
        self.emb = torch.nn.Parameter(torch.randn(shape.vocab_size, shape.d_model), requires_grad=False)
        self.layers = torch.nn.ModuleList(
            torch.nn.ModuleDict({m: _LoRALinear(i, o, rank) for m, (o, i) in dims.items()}) for _ in range(shape.n_layers)
        )

    @staticmethod
    def _norm(x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        sh, st = self.shape, self.st
        b, t = tokens.shape
        h = self.emb[tokens]
        heads, groups = st.heads(sh), st.kv_groups
        for layer in self.layers:
            x = self._norm(h)
            q = layer["q"](x).view(b, t, heads, sh.head_dim).transpose(1, 2)
            k = layer["k"](x).view(b, t, groups, sh.head_dim).transpose(1, 2)
            v = layer["v"](x).view(b, t, groups, sh.head_dim).transpose(1, 2)
            k = k.repeat_interleave(sh.group_size, dim=1)
            v = v.repeat_interleave(sh.group_size, dim=1)
            # eager attention: torch 2.13's flop counter does not count the CPU fused SDPA kernel
            scores = (q @ k.transpose(-1, -2)) / sh.head_dim**0.5
            mask = torch.ones(t, t, dtype=torch.bool).triu(1)
            a = scores.masked_fill(mask, float("-inf")).softmax(-1) @ v
            h = h + layer["o"](a.transpose(1, 2).reshape(b, t, heads * sh.head_dim))
            x = self._norm(h)
            h = h + layer["down"](F.silu(layer["gate"](x)) * layer["up"](x))
        return F.linear(self._norm(h), self.emb)  # tied lm_head


@pytest.mark.parametrize("sparsity,rank", [(0.0, 3), (0.5, 2), (0.25, 5)])
def test_iteration_matmul_flops_match_torch_flop_counter(sparsity: float, rank: int) -> None:
    """Forward + backward matmul FLOPs equal what torch counts on the real pruned LoRA model."""
    torch.manual_seed(0)
    st = structure_at(SHAPE, sparsity)
    model = _TinyLlama(SHAPE, st, rank)
    batch, seq = 3, 7
    tokens = torch.randint(0, SHAPE.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(1))
    counter = FlopCounterMode(display=False)
    with counter:
        logits = model(tokens)
        F.cross_entropy(logits.reshape(-1, SHAPE.vocab_size), tokens.reshape(-1)).backward()
    cost = CostModel(SHAPE, batch_size=batch, seq_len=seq)
    b = cost.iteration_breakdown(st, rank, with_importance=False)
    assert b["importance_matmul"] == 0
    assert b["forward_matmul"] + b["backward_matmul"] == counter.get_total_flops()
    assert cost.matmul_flops(st, rank, with_importance=False) == counter.get_total_flops()


def test_importance_matmul_flops_match_torch() -> None:
    """The importance step's matmuls, as the trainer computes them (prune.lora_grad_scores:
    G_B A + (B - G_B) G_A and addmm(W, B, A), per adapted linear), counted by torch."""
    from simfed.accuracy.model import Model, ModelConfig
    from simfed.accuracy.prune import lora_grad_scores

    cfg = ModelConfig(vocab_size=SHAPE.vocab_size, d_model=SHAPE.d_model, n_layers=SHAPE.n_layers, n_heads=SHAPE.n_heads,
                      n_kv_heads=SHAPE.n_kv_heads, d_ff=SHAPE.d_ff, max_seq_len=8, head_dim=SHAPE.head_dim)
    torch.manual_seed(0)
    model = Model(cfg)
    st = structure_at(SHAPE, 0.0)
    rank = 3
    for block in model.layers:
        for m in ("q", "k", "v", "o", "gate", "up", "down"):
            lin = block.linear(m)
            d_out, d_in = lin.weight.shape
            lin.lora_A = torch.nn.Parameter(torch.randn(rank, d_in))
            lin.lora_B = torch.nn.Parameter(torch.randn(d_out, rank))
            lin.lora_A.grad, lin.lora_B.grad = torch.randn(rank, d_in), torch.randn(d_out, rank)
            lin.lora_scale = 2.0
    counter = FlopCounterMode(display=False)
    with counter:
        lora_grad_scores(model)
    cost = CostModel(SHAPE, batch_size=2, seq_len=4)
    b = cost.iteration_breakdown(st, rank, with_importance=True)
    assert b["importance_matmul"] == counter.get_total_flops()
    assert b["importance_elementwise"] > 0


def test_iteration_flops_is_sum_of_parts_and_seq_len_matters_quadratically_in_attention() -> None:
    cost = CostModel(SHAPE, batch_size=2, seq_len=8)
    st = structure_at(SHAPE, 0.0)
    b = cost.iteration_breakdown(st, 4)
    assert cost.iteration_flops(st, 4) == pytest.approx(sum(b.values()))
    # attention scores: doubling seq_len at fixed tokens (halving batch) adds FLOPs
    longer = CostModel(SHAPE, batch_size=1, seq_len=16)
    assert longer.iteration_flops(st, 4) > cost.iteration_flops(st, 4)


def test_flops_fall_with_sparsity_and_rise_with_rank() -> None:
    cost = CostModel(SHAPE, batch_size=4, seq_len=16)
    f = [cost.iteration_flops(structure_at(SHAPE, s), 4) for s in (0.0, 0.25, 0.5, 0.75)]
    assert all(a > b for a, b in zip(f, f[1:]))
    st = structure_at(SHAPE, 0.25)
    r = [cost.iteration_flops(st, k) for k in (1, 2, 4, 8)]
    assert all(a < b for a, b in zip(r, r[1:]))


def _plan(sb: float, sa: float, rank: int = 4, iters: int = 10, tau: int = 5) -> Plan:
    return Plan(round=0, device_id="d", arm=Arm(p=sa - sb, r=rank), sparsity_before=sb, sparsity_after=sa, local_iters=iters, tau=tau)


def test_round_flops_sums_stages_and_counts_importance_only_when_pruning() -> None:
    cost = CostModel(SHAPE, batch_size=2, seq_len=8)
    # 10 iterations, tau 5, 0 -> 0.5: stages at 0.0 (5 iters) and 0.25 (5 iters), both prune after
    expected = 5 * cost.iteration_flops(structure_at(SHAPE, 0.0), 4, True) + 5 * cost.iteration_flops(
        structure_at(SHAPE, 0.25), 4, True
    )
    assert cost.round_flops(_plan(0.0, 0.5)) == pytest.approx(expected)
    # no pruning: one stage, no importance step
    flat = cost.round_flops(_plan(0.5, 0.5))
    assert flat == pytest.approx(10 * cost.iteration_flops(structure_at(SHAPE, 0.5), 4, False))
    assert flat < 10 * cost.iteration_flops(structure_at(SHAPE, 0.5), 4, True)
    no_imp = CostModel(SHAPE, batch_size=2, seq_len=8, importance=False)
    assert no_imp.round_flops(_plan(0.0, 0.5)) < cost.round_flops(_plan(0.0, 0.5))


def test_payload_bytes_by_hand() -> None:
    cost = CostModel(SHAPE, batch_size=1, seq_len=4, lora_bytes=4)
    # full structure: q (16,16) k (8,16) v (8,16) o (16,16) gate (24,16) up (24,16) down (16,24)
    per_layer_full = 4 * ((16 + 16) + (8 + 16) + (8 + 16) + (16 + 16) + (24 + 16) + (24 + 16) + (16 + 24))
    assert lora_params(SHAPE, structure_at(SHAPE, 0.0), 4) == 2 * per_layer_full
    assert cost.download_bytes(_plan(0.0, 0.5)) == 2 * per_layer_full * 4
    # after 0.5: 1 KV group (2 heads): q (8,16) k (4,16) v (4,16) o (16,8); 12 channels
    per_layer_half = 4 * ((8 + 16) + (4 + 16) + (4 + 16) + (16 + 8) + (12 + 16) + (12 + 16) + (16 + 12))
    mask = math.ceil(2 * (2 + 24) / 8)
    assert cost.upload_bytes(_plan(0.0, 0.5)) == 2 * per_layer_half * 4 + mask


def test_memory_by_hand_and_ordering() -> None:
    cost = CostModel(SHAPE, batch_size=2, seq_len=4, param_bytes=2, lora_bytes=4, act_bytes=2)
    st = structure_at(SHAPE, 0.0)
    m = cost.memory_breakdown(st, 4)
    assert m["weights"] == SHAPE.total_params() * 2
    assert m["lora"] == lora_params(SHAPE, st, 4) * 4 * 4  # params, grads, AdamW m and v
    assert m["logits"] == 2 * 8 * 11 * 4
    per_tok_layer = 4 * 16 + 7 * 4 + 2 * 16 + 2 * 8 + 4 * 24 + 4  # + one log-sum-exp per head (sdpa)
    assert m["activations"] == 8 * (2 * per_tok_layer + 16) * 2
    # plan memory uses the round-start structure
    assert cost.train_memory_bytes(_plan(0.0, 0.5)) == pytest.approx(sum(m.values()))
    assert cost.train_memory_bytes(_plan(0.5, 0.75)) < cost.train_memory_bytes(_plan(0.0, 0.5))
    eager = CostModel(SHAPE, batch_size=2, seq_len=4, attention="eager")
    assert eager.memory_breakdown(st, 4)["activations"] > m["activations"]
    sgd = CostModel(SHAPE, batch_size=2, seq_len=4, optimizer="sgd")
    assert sgd.memory_breakdown(st, 4)["lora"] == m["lora"] / 2


def test_inference_ratios() -> None:
    cost = CostModel(SHAPE, batch_size=1, seq_len=8)
    flops_r, mem_r = cost.inference_ratios(0.5)
    assert 0 < flops_r < 1 and 0 < mem_r < 1
    assert cost.inference_ratios(0.0) == (1.0, 1.0)
    st = structure_at(SHAPE, 0.5)
    kv = 2 * 2 * st.kv_groups * 4 * 8 * 2
    weights = (11 * 16 + 5 * 16 + 2 * sum(o * i for o, i in linear_dims(SHAPE, st).values())) * 2
    assert cost.inference_memory_bytes(0.5) == weights + kv


def test_plan_cost_cached_and_complete() -> None:
    cost = CostModel(SHAPE, batch_size=2, seq_len=8)
    p = _plan(0.0, 0.25)
    c = cost.plan_cost(p)
    assert isinstance(c, PlanCost)
    assert c is cost.plan_cost(_plan(0.0, 0.25))
    assert (c.flops, c.down_bytes, c.up_bytes, c.memory_bytes) == (
        cost.round_flops(p),
        cost.download_bytes(p),
        cost.upload_bytes(p),
        cost.train_memory_bytes(p),
    )


@pytest.mark.parametrize(
    "kwargs,word",
    [({"batch_size": 0}, "batch_size"), ({"optimizer": "lion"}, "optimizer"), ({"attention": "flash"}, "attention"), ({"param_bytes": 0}, "param_bytes")],
)
def test_bad_arguments_name_the_field(kwargs: dict, word: str) -> None:
    args = {"batch_size": 2, "seq_len": 4} | kwargs
    with pytest.raises(ValueError, match=word):
        CostModel(SHAPE, **args)


def test_iteration_overhead_is_per_iteration_and_outside_the_matmuls() -> None:
    st = structure_at(SHAPE, 0.25)
    base = CostModel(SHAPE, batch_size=2, seq_len=8)
    over = CostModel(SHAPE, batch_size=2, seq_len=8, iteration_overhead_flops=1e6)
    assert over.iteration_flops(st, 4) == pytest.approx(base.iteration_flops(st, 4) + 1e6)
    assert over.matmul_flops(st, 4) == base.matmul_flops(st, 4)
    assert over.round_flops(_plan(0.5, 0.5)) == pytest.approx(base.round_flops(_plan(0.5, 0.5)) + 10 * 1e6)
    with pytest.raises(ValueError, match="iteration_overhead_flops"):
        CostModel(SHAPE, batch_size=2, seq_len=8, iteration_overhead_flops=-1.0)
