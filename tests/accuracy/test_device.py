"""``train.device`` / ``train.dtype``: device resolution, mixed precision, shared device copies, LoRA targets.

CPU tests run everywhere; the ``cuda`` tests run only where torch sees a GPU (skipped with the reason
otherwise) and compare the GPU round with the CPU one.
"""

from __future__ import annotations

import pytest
import torch

from simfed import config as C
from simfed.accuracy.adapters import Kept
from simfed.accuracy.aggregators import make_aggregator, rslora_rule
from simfed.accuracy.device import (
    DeviceUnavailable,
    Precision,
    deterministic,
    resolve_device,
    resolve_precision,
)
from simfed.accuracy.evaluate import eval_batch_size
from simfed.accuracy.lora import init_factors, slice_factors
from simfed.accuracy.train import Trainer, TrainConfig
from simfed.records import Arm, Plan
from simfed.structure import structure_at

from test_train import base_model, clients  # tests/accuracy is on sys.path (pytest rootdir-relative import)

NO_CUDA = not torch.cuda.is_available()
CUDA_REASON = "torch sees no CUDA GPU on this machine (the GPU path is exercised on CPU only here)"




def trainer(**cfg) -> Trainer:
    return Trainer(base_model(), clients(), TrainConfig(batch_size=4, seq_len=32, lr=1e-2, seed=0, **cfg))


def factors(tr: Trainer, device_id: str, rank: int, modules=None):
    shape = tr.shape
    kw = {} if modules is None else {"modules": modules}
    full = init_factors(shape, Kept.full(shape), 8, torch.Generator().manual_seed(0), **kw)
    return slice_factors(full, shape, tr.kept(device_id), rank)


def one_round(tr: Trainer, p: float = 0.25, iters: int = 8, tau: int = 4, rank: int = 4):
    plans = [Plan(0, d, Arm(p, rank), 0.0, p, iters, tau) for d in ("a", "b")]
    return {r.device_id: r for r in tr.run_round(plans, {d: factors(tr, d, rank, tr.modules) for d in ("a", "b")})}


# ----------------------------------------------------------------------------- resolution
def test_device_names_resolve_or_fail_with_one_clear_error():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert resolve_device("auto").type == expected
    for bad in ("gpu", "cuda:", "CUDA", "cuda:x", "tpu"):
        with pytest.raises(ValueError, match="unknown device"):
            resolve_device(bad)
    with pytest.raises(ValueError, match="unknown dtype 'float64'"):
        resolve_precision("cpu", "float64")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU: 'cuda' resolves")
def test_cuda_without_a_gpu_is_refused_naming_what_torch_sees():
    with pytest.raises(DeviceUnavailable, match=r"device 'cuda': torch .* sees no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(DeviceUnavailable, match=r"device 'cuda:1'"):
        resolve_device("cuda:1")
    with pytest.raises(DeviceUnavailable):
        Trainer(base_model(), clients(), TrainConfig(device="cuda"))


def test_cpu_precisions_and_their_contexts():
    fp32 = resolve_precision("cpu", "float32")
    assert not fp32.mixed and fp32.scaler() is None
    with fp32.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    bf16 = resolve_precision("cpu", "bfloat16")
    assert bf16.mixed and bf16.scaler() is None
    with bf16.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert resolve_precision("cpu", "float16").scaler() is not None  # fp16 needs a loss scaler
    with deterministic(torch.device("cpu")):  # nothing to switch on the CPU
        assert torch.are_deterministic_algorithms_enabled() is False


def test_config_takes_device_and_dtype_and_rejects_bad_ones(tmp_path):
    base = {"traces": {"generator": "fedspine-testbed"}}
    cfg = C.from_dict({**base, "train": {"device": "cpu", "dtype": "bfloat16"}})
    assert (cfg.train.device, cfg.train.dtype) == ("cpu", "bfloat16")
    assert C.from_dict(base).train.device == "auto"
    assert C.from_dict({**base, "train": {"device": "cuda:3"}}).train.device == "cuda:3"  # hardware checked at run start
    with pytest.raises(C.ConfigError, match=r"^train\.device: must be auto, cpu, cuda, cuda:N"):
        C.from_dict({**base, "train": {"device": "gpu"}})
    with pytest.raises(C.ConfigError, match=r"^train\.dtype: must be one of float32, bfloat16, float16, got 'half'"):
        C.from_dict({**base, "train": {"dtype": "half"}})
    with pytest.raises(C.ConfigError, match=r"^model\.path: must be a transformers checkpoint directory or a \.gguf file"):
        C.from_dict({**base, "model": {"path": str(tmp_path / "nowhere")}})


# ----------------------------------------------------------------------------- training on the CPU
def test_explicit_cpu_device_trains_bit_identically_to_the_default():
    explicit = one_round(trainer(device="cpu"))
    default = one_round(trainer())
    for d in ("a", "b"):
        assert (explicit[d].loss_before, explicit[d].loss_after, explicit[d].update_norm) == (
            default[d].loss_before, default[d].loss_after, default[d].update_norm)
        for key, a in explicit[d].update.factors.A.items():
            assert torch.equal(a, default[d].update.factors.A[key])
            assert torch.equal(explicit[d].update.factors.B[key], default[d].update.factors.B[key])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_mixed_precision_round_on_cpu(dtype):
    tr = trainer(device="cpu", dtype=dtype)
    want = getattr(torch, dtype)
    assert tr.base.layers[0].attn.q.weight.dtype == want and tr.base.embed.weight.dtype == want
    assert tr.base.rope_cos.dtype == torch.float32
    reps = one_round(tr)
    ref = one_round(trainer(device="cpu"))
    for d, r in reps.items():
        assert tr.kept(d).structure() == structure_at(tr.shape, 0.25)
        assert all(a.dtype == torch.float32 for a in r.update.factors.A.values())  # LoRA stays float32
        assert r.loss_after < r.loss_before
        # the same round as in float32, up to the low-precision forward
        assert r.loss_before == pytest.approx(ref[d].loss_before, rel=0.02)
    # evaluation with a merged update, and the weights restored exactly afterwards
    before = tr.evaluate(["a", "b"])
    agg = make_aggregator("flexlora", tr.shape, 8, rslora_rule(8.0), 0)
    agg.aggregate([r.update for r in reps.values()])
    tuned = tr.evaluate(["a", "b"], agg.delta_for)
    assert tr.evaluate(["a", "b"]) == before
    assert all(tuned[d].loss < before[d].loss for d in ("a", "b"))
    assert one_round(trainer(device="cpu", dtype=dtype))["a"].loss_after == reps["a"].loss_after  # deterministic


def test_device_models_share_the_base_until_they_prune():
    tr = trainer()
    base_q = tr.base.layers[0].attn.q.weight
    a = tr.state("a").model
    assert a.layers[0].attn.q.weight is base_q and a.embed.weight is tr.base.embed.weight
    before = base_q.clone()
    one_round(tr, p=0.5)
    assert a.layers[0].attn.q.weight is not base_q  # pruned: its own, smaller tensor
    assert a.embed.weight is tr.base.embed.weight  # never pruned: still shared
    assert torch.equal(tr.base.layers[0].attn.q.weight, before) and base_q.grad is None
    tr.oneshot_prune(["b"], 0.5, "taylor")  # weight gradients on shared tensors are cleared
    assert all(p.grad is None and not p.requires_grad for p in tr.base.parameters())


# ----------------------------------------------------------------------------- LoRA targets
def test_lora_on_some_targets_trains_prunes_and_aggregates():
    modules = ("q", "v", "down")
    tr = trainer(lora_modules=("down", "q", "v"))  # any order: kept in the model's order
    assert tr.modules == modules
    reps = one_round(tr, p=0.25)
    for d, r in reps.items():
        assert {m for _, m in r.update.factors.A} == set(modules)
        assert tr.kept(d).structure() == structure_at(tr.shape, 0.25)
        assert r.loss_after < r.loss_before
    agg = make_aggregator("flexlora", tr.shape, 8, rslora_rule(8.0), 0, modules=modules)
    agg.aggregate([r.update for r in reps.values()])
    assert set(agg.delta_for(tr.kept("a"))) == {(l, m) for l in range(tr.shape.n_layers) for m in modules}
    assert tr.evaluate(["a"], agg.delta_for)["a"].loss < tr.evaluate(["a"])["a"].loss


def test_lora_grad_pruning_needs_an_attention_and_an_mlp_target():
    tr = trainer(lora_modules=("q", "v"))
    with pytest.raises(ValueError, match=r"at least one attention linear .* and one MLP linear"):
        one_round(tr, p=0.25)
    with pytest.raises(ValueError, match="LoRA modules must be distinct names"):
        TrainConfig(lora_modules=("q", "qq"))


def test_evaluation_batches_shrink_for_large_vocabularies():
    assert eval_batch_size(80, 97) == 64  # the tiny model: unchanged
    assert eval_batch_size(64, 49152) == 10  # SmolLM2: about 128 MiB of float32 logits per batch
    assert eval_batch_size(4096, 10**6) == 1


# ----------------------------------------------------------------------------- CUDA (skipped without a GPU)
@pytest.mark.skipif(NO_CUDA, reason=CUDA_REASON)
def test_cuda_round_matches_the_cpu_round():
    gpu, cpu = trainer(device="cuda"), trainer(device="cpu")
    assert gpu.base.layers[0].attn.q.weight.is_cuda
    rg, rc = one_round(gpu), one_round(cpu)
    for d in ("a", "b"):
        assert gpu.kept(d).structure() == cpu.kept(d).structure()
        assert rg[d].loss_before == pytest.approx(rc[d].loss_before, rel=1e-4)
        assert rg[d].loss_after == pytest.approx(rc[d].loss_after, rel=1e-2)
        assert all(a.is_cuda for a in rg[d].update.factors.A.values())
    agg = make_aggregator("flexlora", gpu.shape, 8, rslora_rule(8.0), 0, device=gpu.device)
    agg.aggregate([r.update for r in rg.values()])
    assert all(t.is_cuda for t in agg.delta_for(gpu.kept("a")).values())
    assert gpu.evaluate(["a"], agg.delta_for)["a"].loss < gpu.evaluate(["a"])["a"].loss
    again = trainer(device="cuda")  # same seed, same GPU: the same round
    assert one_round(again)["a"].loss_after == pytest.approx(rg["a"].loss_after, rel=1e-6)


@pytest.mark.skipif(NO_CUDA, reason=CUDA_REASON)
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cuda_mixed_precision_round(dtype):
    try:
        tr = trainer(device="cuda", dtype=dtype)
    except DeviceUnavailable as exc:
        pytest.skip(str(exc))
    reps = one_round(tr)
    assert all(r.loss_after < r.loss_before for r in reps.values())
    assert isinstance(tr.precision, Precision) and tr.precision.mixed
