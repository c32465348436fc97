"""Local prune-and-tune: reports, structure bookkeeping, determinism, loss drops (federated runs: test_federated.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simfed.accuracy.adapters import Kept
from simfed.accuracy.data import ClientData, encode, random_windows
from simfed.accuracy.evaluate import factors_delta, weighted_mean
from simfed.accuracy.lora import init_factors, slice_factors
from simfed.accuracy.model import Model, ModelConfig
from simfed.accuracy.train import Trainer, TrainConfig
from simfed.records import Arm, Plan
from simfed.structure import sparsity_of, structure_at




TEXTS = {
    "a": "to be, or not to be, that is the question. " * 40,
    "b": "now is the winter of our discontent made glorious summer. " * 40,
}


def clients() -> dict[str, ClientData]:
    return {k: ClientData(k, "play", k.upper(), encode(t[:1500]), encode(t[1500:]), 30, 8) for k, t in TEXTS.items()}


_BASE: dict[str, dict] = {}


def base_model() -> Model:
    """A small model briefly pre-trained on English-like text (a random model's tied head is too weak
    for LoRA to move the loss much). Cached per test session."""
    config = ModelConfig(vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, d_ff=64, max_seq_len=64)
    if "state" not in _BASE:
        torch.manual_seed(0)
        model = Model(config)
        tokens = encode("the quick brown fox jumps over the lazy dog; so is the question of our summer. " * 20)
        gen = torch.Generator().manual_seed(0)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for _ in range(60):
            x, y = random_windows(tokens, 8, 32, gen)
            opt.zero_grad()
            model(x, y)[1].backward()
            opt.step()
        _BASE["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model = Model(config)
    model.load_state_dict(_BASE["state"])
    return model


def make_trainer(seed: int = 0, **cfg) -> Trainer:
    return Trainer(base_model(), clients(), TrainConfig(batch_size=4, seq_len=32, lr=1e-2, seed=seed, **cfg))


def factors_for(trainer: Trainer, device_id: str, rank: int, seed: int = 0):
    shape = trainer.shape
    full = init_factors(shape, Kept.full(shape), 8, torch.Generator().manual_seed(seed))
    return slice_factors(full, shape, trainer.kept(device_id), rank)


def test_round_prunes_to_plan_and_reports_consistently():
    tr = make_trainer()
    plan = Plan(round=0, device_id="a", arm=Arm(p=0.5, r=4), sparsity_before=0.0, sparsity_after=0.5, local_iters=12, tau=4)
    (report,) = tr.run_round([plan], {"a": factors_for(tr, "a", 4)})
    target = structure_at(tr.shape, 0.5)
    kept = tr.kept("a")
    assert kept.structure() == target
    assert report.sparsity_before == 0.0
    assert report.sparsity_after == pytest.approx(sparsity_of(tr.shape, target))
    assert report.n_samples == len(clients()["a"].train) - 32
    upd = report.update
    assert upd.kept.structure() == target and upd.factors.rank == 4
    for (layer, m), B in upd.factors.B.items():
        A = upd.factors.A[(layer, m)]
        lin = tr.state("a").model.layers[layer].linear(m)
        assert (B.shape[0], A.shape[1]) == tuple(lin.weight.shape)
        assert lin.lora_A is None  # adapters are removed after the round
    assert report.update_norm > 0
    assert np.isfinite(report.loss_before) and np.isfinite(report.loss_after)

    # next round starts from where the device is; a plan with the wrong sparsity_before is refused
    bad = Plan(1, "a", Arm(0.1, 4), sparsity_before=0.0, sparsity_after=0.1, local_iters=4, tau=4)
    with pytest.raises(ValueError, match="sparsity_before"):
        tr.run_round([bad], {"a": factors_for(tr, "a", 4)})
    nxt = Plan(1, "a", Arm(0.0, 2), sparsity_before=0.5, sparsity_after=0.5, local_iters=4, tau=4)
    (r2,) = tr.run_round([nxt], {"a": factors_for(tr, "a", 2)})
    assert r2.sparsity_before == r2.sparsity_after == report.sparsity_after


def test_local_training_reduces_loss():
    tr = make_trainer()
    plan = Plan(0, "b", Arm(0.0, 8), 0.0, 0.0, local_iters=60, tau=20)
    (report,) = tr.run_round([plan], {"b": factors_for(tr, "b", 8)})
    assert report.loss_after < report.loss_before - 0.5, (report.loss_before, report.loss_after)


def test_rounds_are_deterministic_and_order_independent():
    def run(order):
        tr = make_trainer(seed=7)
        plans = [Plan(0, d, Arm(0.25, 2), 0.0, 0.25, 8, 4) for d in order]
        reps = {r.device_id: r for r in tr.run_round(plans, {d: factors_for(tr, d, 2) for d in order})}
        return {d: (reps[d].loss_before, reps[d].loss_after, reps[d].update_norm, tr.kept(d).channels[0].tolist()) for d in reps}

    assert run(["a", "b"]) == run(["b", "a"])
    tr = make_trainer(seed=8)
    other = tr.run_round([Plan(0, "a", Arm(0.25, 2), 0.0, 0.25, 8, 4)], {"a": factors_for(tr, "a", 2)})[0]
    assert other.loss_before != run(["a"])["a"][0]


@pytest.mark.parametrize("crit", ["taylor", "magnitude"])
def test_other_iterative_criteria_and_rank_mismatch(crit):
    tr = make_trainer(criterion=crit)
    plan = Plan(0, "a", Arm(0.3, 2), 0.0, 0.3, 6, 3)
    tr.run_round([plan], {"a": factors_for(tr, "a", 2)})
    assert tr.kept("a").structure() == structure_at(tr.shape, 0.3)
    with pytest.raises(ValueError, match="rank"):
        tr.run_round([Plan(1, "a", Arm(0.0, 4), 0.3, 0.3, 2, 2)], {"a": factors_for(tr, "a", 2)})


def test_oneshot_prune_finalize_and_evaluate():
    tr = make_trainer()
    kept = tr.oneshot_prune(["a"], 0.5)
    assert kept["a"].structure() == structure_at(tr.shape, 0.5)
    assert tr.finalize("a", 0.5).structure() == structure_at(tr.shape, 0.5)  # already there: unchanged
    assert tr.finalize("b", 0.75).structure() == structure_at(tr.shape, 0.75)  # never trained: taylor fallback

    base = tr.evaluate(["a", "b"])
    plan = Plan(0, "a", Arm(0.0, 4), 0.5, 0.5, 30, 10)
    (rep,) = tr.run_round([plan], {"a": factors_for(tr, "a", 4)})
    tuned = tr.evaluate(["a"], delta_for=lambda kept: factors_delta(rep.update.factors))
    assert tuned["a"].loss < base["a"].loss
    assert 0.0 <= tuned["a"].accuracy <= 1.0
    again = tr.evaluate(["a", "b"])  # merging restored the weights exactly
    assert again == base
    mean = weighted_mean(base)
    assert mean.n_tokens == base["a"].n_tokens + base["b"].n_tokens
