"""Training memory with the runtime's overheads (issue #10, item 3).

The tensor part of :meth:`CostModel.memory_breakdown` is compared with the peak that torch's memory
profiler measures over one real training step -- simfed's ``tiny`` model stepped as the trainer
steps it, and transformers' LLaMA and RoBERTa with PEFT LoRA on q and v -- all fp32 on the CPU
(``benchmarks/bench_memory.py`` runs the full grid, SmolLM2 included). The parts that only the
boards' runtime has (mixed-precision copies, the allocator factor, the CUDA context) are checked
by hand against their definitions.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from torch.profiler._memory_profiler import Action

from simfed.records import Arm, Plan
from simfed.structure import ModelShape, full_structure, structure_at
from simfed.timing.cost import (
    CUDA_CONTEXT_BYTES,
    DEFAULT_ALLOCATOR_FACTOR,
    DEFAULT_RUNTIME_BYTES,
    PYTORCH_PROCESS_BYTES,
    CostModel,
    lora_params,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TOLERANCE = 0.10  # the benchmark's goal is 25 %; the tensors agree to a few per cent
TENSORS_ONLY = dict(param_bytes=4, act_bytes=4, lora_bytes=4, allocator_factor=1.0, runtime_bytes=0.0)
SHAPE = ModelShape(n_layers=2, d_model=16, n_heads=4, n_kv_heads=2, head_dim=4, d_ff=24, vocab_size=11)
ENC = ModelShape(n_layers=2, d_model=16, n_heads=4, n_kv_heads=4, head_dim=4, d_ff=24, vocab_size=11, arch="encoder",
                 num_labels=3, max_positions=20, type_vocab_size=1)


def measured_peak(step) -> int:
    """Peak bytes of live CPU tensors during ``step()``, tensors that existed before it included."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step()
    cur = peak = 0
    for _, action, (key, _version), size in prof._memory_profile().timeline:
        if key.device.type != "cpu":
            continue
        if action in (Action.PREEXISTING, Action.CREATE):
            cur += size
        elif action == Action.DESTROY:
            cur -= size
        peak = max(peak, cur)
    return peak


@pytest.mark.parametrize("sparsity,rank", [(0.0, 8), (0.5, 32)])
def test_tensor_memory_matches_the_measured_peak_of_a_tiny_training_step(sparsity: float, rank: int) -> None:
    from simfed.accuracy.adapters import Kept
    from simfed.accuracy.lora import init_factors, load_factors
    from simfed.accuracy.model import Model
    from simfed.accuracy.presets import preset
    from simfed.accuracy.prune import ImportanceEMA, lora_grad_scores, prune_model_to_kept

    torch.manual_seed(0)
    model = Model(preset("tiny"))
    model.freeze_base()
    shape = model.config.shape()
    st = structure_at(shape, sparsity)
    rng = np.random.default_rng(0)
    kept = Kept(groups=[np.sort(rng.choice(shape.n_kv_heads, st.kv_groups, replace=False)) for _ in range(shape.n_layers)],
                channels=[np.sort(rng.choice(shape.d_ff, st.channels, replace=False)) for _ in range(shape.n_layers)])
    prune_model_to_kept(model, Kept.full(shape), kept)
    opt = torch.optim.AdamW(load_factors(model, init_factors(shape, kept, rank, torch.Generator().manual_seed(0))),
                            lr=1e-4, fused=True)
    ema = ImportanceEMA(0.9)
    batch, seq = 4, 48
    gen = torch.Generator().manual_seed(1)
    x, y = (torch.randint(0, shape.vocab_size, (batch, seq), generator=gen) for _ in range(2))

    def step() -> None:
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ema.update(lora_grad_scores(model))
        opt.step()

    step()  # the optimizer state exists from here on
    peak = measured_peak(step)
    predicted = CostModel(shape, batch_size=batch, seq_len=seq, **TENSORS_ONLY).tensor_memory_bytes(st, rank)
    assert abs(predicted / peak - 1) <= TOLERANCE, (predicted, peak)


@pytest.mark.parametrize("arch,targets", [("decoder", ("q", "v")), ("decoder", None), ("encoder", ("q", "v")), ("encoder", None)])
def test_tensor_memory_matches_a_measured_peft_step_of_transformers_models(arch: str, targets) -> None:
    """LLaMA (decoder) and RoBERTa (encoder) of small widths, PEFT LoRA on q, v or on every linear,
    fp32, the fused attention of transformers' sdpa path, no dropout (on the CPU torch keeps a float
    dropout mask where CUDA keeps a byte: the boards' case, which the cost model counts)."""
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    if arch == "encoder":
        shape = ModelShape(n_layers=3, d_model=128, n_heads=4, n_kv_heads=4, head_dim=32, d_ff=512, vocab_size=500,
                           arch="encoder", num_labels=2, max_positions=130, type_vocab_size=1)
        cfg = transformers.RobertaConfig(vocab_size=500, hidden_size=128, num_hidden_layers=3, num_attention_heads=4,
                                         intermediate_size=512, max_position_embeddings=130, type_vocab_size=1,
                                         pad_token_id=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        cfg._attn_implementation = "sdpa"
        model = transformers.RobertaForSequenceClassification(cfg)
        names = {"q": r"attention\.self\.query", "k": r"attention\.self\.key", "v": r"attention\.self\.value",
                 "o": r"attention\.output\.dense", "up": r"intermediate\.dense", "down": r"layer\.\d+\.output\.dense"}
        task = "SEQ_CLS"
    else:
        shape = ModelShape(n_layers=3, d_model=128, n_heads=4, n_kv_heads=4, head_dim=32, d_ff=512, vocab_size=500,
                           tied_embeddings=False)
        cfg = transformers.LlamaConfig(vocab_size=500, hidden_size=128, num_hidden_layers=3, num_attention_heads=4,
                                       num_key_value_heads=4, intermediate_size=512, tie_word_embeddings=False)
        cfg._attn_implementation = "sdpa"
        model = transformers.LlamaForCausalLM(cfg)
        names = {m: rf"{m}_proj" for m in shape.modules}
        task = "CAUSAL_LM"
    chosen = shape.modules if targets is None else targets
    model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, task_type=task,
                                                       target_modules=r".*\.(" + "|".join(names[m] for m in chosen) + ")"))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batch, seq = 8, 64
    ids = torch.randint(3, 500, (batch, seq), generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 2, (batch,)) if arch == "encoder" else ids

    def step() -> None:
        out = model(input_ids=ids, labels=labels)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    step()
    peak = measured_peak(step)
    cost = CostModel(shape, batch_size=batch, seq_len=seq, lora_targets=chosen, importance=False, **TENSORS_ONLY)
    encoder_masks = seq * batch * shape.n_layers * 2 * shape.d_model if arch == "encoder" else 0  # no dropout here
    predicted = cost.tensor_memory_bytes(full_structure(shape), 8) - encoder_masks
    assert abs(predicted / peak - 1) <= TOLERANCE, (predicted, peak)


def test_overheads_scale_the_tensors_and_add_the_runtime() -> None:
    plan = Plan(round=0, device_id="d", arm=Arm(0.0, 4), sparsity_before=0.0, sparsity_after=0.0, local_iters=1, tau=1)
    st = structure_at(SHAPE, 0.0)
    bare = CostModel(SHAPE, batch_size=2, seq_len=8, allocator_factor=1.0, runtime_bytes=0.0)
    tensors = bare.tensor_memory_bytes(st, 4)
    assert bare.train_memory_bytes(plan) == pytest.approx(tensors)
    over = CostModel(SHAPE, batch_size=2, seq_len=8, allocator_factor=1.25, runtime_bytes=1e9)
    parts = over.memory_breakdown(st, 4)
    assert parts["allocator"] == pytest.approx(0.25 * tensors) and parts["runtime"] == 1e9
    assert over.train_memory_bytes(plan) == pytest.approx(1.25 * tensors + 1e9)
    assert over.tensor_memory_bytes(st, 4) == pytest.approx(tensors)
    default = CostModel(SHAPE, batch_size=2, seq_len=8)
    assert (default.allocator_factor, default.runtime_bytes) == (DEFAULT_ALLOCATOR_FACTOR, DEFAULT_RUNTIME_BYTES)
    assert DEFAULT_RUNTIME_BYTES == PYTORCH_PROCESS_BYTES + CUDA_CONTEXT_BYTES
    assert default.train_memory_bytes(plan) == pytest.approx(DEFAULT_ALLOCATOR_FACTOR * tensors + DEFAULT_RUNTIME_BYTES)


def test_mixed_precision_adapter_copies_by_hand() -> None:
    """fp16 activations, fp32 adapters (PEFT): each adapted linear saves its own fp32 copy of its
    input, and the LoRA intermediates are fp32; the fp16 inputs that only the adapters saved are gone."""
    n_tok, L, r = 2 * 8, SHAPE.n_layers, 4
    st = structure_at(SHAPE, 0.0)  # q (16,16) k (8,16) v (8,16) o (16,16) gate (24,16) up (24,16) down (16,24)
    mixed = CostModel(SHAPE, batch_size=2, seq_len=8, param_bytes=2, lora_bytes=4)
    d_in = 16 * 6 + 24  # q, k, v, o, gate, up read 16; down reads 24
    lora_only = 16 + 16 + 24  # attention-norm output, MLP-norm output, the MLP hidden (o's input is kept by sdpa)
    expected = n_tok * L * (d_in * 4 - lora_only * 2 + 7 * r * (4 - 2))
    assert mixed.memory_breakdown(st, r)["adapter_casts"] == expected
    same = CostModel(SHAPE, batch_size=2, seq_len=8, param_bytes=2, lora_bytes=2)
    assert same.memory_breakdown(st, r)["adapter_casts"] == 0
    assert same.memory_breakdown(st, r)["lora"] == mixed.memory_breakdown(st, r)["lora"] / 2
    assert same.adapter_bytes(st, r) == lora_params(SHAPE, st, r) * 2


def test_lora_targets_decide_which_inputs_are_saved_encoder_by_hand() -> None:
    """An encoder with LoRA on q and v saves, per token and block: the block input (LoRA-A of q, v),
    q, k, v, the attention output (sdpa), one log-sum-exp per head, both LayerNorm inputs, the GELU
    input, two LoRA intermediates, and two one-byte dropout masks; with LoRA on every linear also the
    LayerNorm-1 output (input of up) and the GELU output (input of down)."""
    st = full_structure(ENC)
    n_tok, r = 2 * 8, 4
    qv = CostModel(ENC, batch_size=2, seq_len=8, param_bytes=4, lora_bytes=4, lora_targets=("q", "v"))
    per = 16 + 3 * 16 + 16 + 4 + 2 * 16 + 24 + 2 * r
    assert qv.memory_breakdown(st, r)["activations"] == n_tok * 2 * (per * 4 + 2 * 16)
    every = CostModel(ENC, batch_size=2, seq_len=8, param_bytes=4, lora_bytes=4)
    per_all = per + 16 + 24 + 4 * r
    assert every.memory_breakdown(st, r)["activations"] == n_tok * 2 * (per_all * 4 + 2 * 16)
    # the trained head: parameters, gradients and AdamW moments; not among the frozen weights
    head = 16 * 16 + 16 + 16 * 3 + 3
    assert qv.memory_breakdown(st, r)["head"] == head * 4 * 4
    assert qv.memory_breakdown(st, r)["weights"] == (ENC.total_params() - head) * 4
    assert qv.memory_breakdown(st, r)["logits"] == 2 * 2 * 3 * 4  # one row per sequence


def test_grouped_query_attention_saves_repeated_keys_and_values() -> None:
    st = structure_at(SHAPE, 0.0)  # 4 query heads, 2 KV groups of head_dim 4
    cost = CostModel(SHAPE, batch_size=2, seq_len=8, param_bytes=2)
    assert cost.memory_breakdown(st, 4)["kv_repeat"] == 2 * 8 * SHAPE.n_layers * 2 * (4 - 2) * 4 * 2
    native = CostModel(SHAPE, batch_size=2, seq_len=8, param_bytes=2, kv_repeat=False)
    assert native.memory_breakdown(st, 4)["kv_repeat"] == 0
    assert CostModel(ENC, batch_size=2, seq_len=8).memory_breakdown(full_structure(ENC), 4)["kv_repeat"] == 0


def test_peak_holds_the_larger_of_the_logit_and_mlp_gradients_and_the_importance_step_comes_after() -> None:
    st = structure_at(SHAPE, 0.0)
    cost = CostModel(SHAPE, batch_size=2, seq_len=8, param_bytes=4)
    parts = cost.memory_breakdown(st, 4)
    assert parts["grad_buffers"] == max(parts["logits"], 2 * 16 * 24 * 4)
    assert parts["importance"] == 0  # its buffers fit in what the backward pass freed
    wide = ModelShape(n_layers=1, d_model=512, n_heads=1, n_kv_heads=1, head_dim=8, d_ff=2048, vocab_size=11)
    tiny_batch = CostModel(wide, batch_size=1, seq_len=1, param_bytes=4)
    p = tiny_batch.memory_breakdown(structure_at(wide, 0.0), 4)
    buffers = 2 * 2048 * 512 * 4 + 2 * (1 + 2048) * 4  # G_hat and W + sBA of gate/up, the group scores
    transients = p["activations"] + p["kv_repeat"] + p["adapter_casts"] + p["grad_buffers"]
    assert p["importance"] == pytest.approx(buffers - transients) and p["importance"] > 0
    assert math.isfinite(sum(p.values()))


def test_memory_falls_with_sparsity_for_every_preset() -> None:
    from simfed.timing.presets import preset_names, timing_cost

    for name in preset_names():
        cost = timing_cost(name, 4, 64)
        totals = [sum(cost.memory_breakdown(structure_at(cost.shape, s), 8).values()) for s in (0.0, 0.25, 0.5)]
        assert totals[0] > totals[1] > totals[2], (name, totals)
