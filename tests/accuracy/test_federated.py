"""Federated prune-and-tune on real Shakespeare roles raises held-out accuracy (slow: real training).

A short FedSpine-style run from the cached pre-trained ``tiny`` model (pre-trained on Milton, the default): 8 roles with at least 8 000
training characters each, flexlora aggregation, ranks 4 and 8, three rounds of τ = 20 local
iterations at the default learning rate. Accuracy is token-weighted over every participating role's
held-out lines (25 k characters for seed 0), so the comparison is not decided by a handful of characters. The
recipe and the numbers it was chosen from are in docs/accuracy.md ("Making federated tuning help").
"""

from __future__ import annotations

import os

import pytest

from simfed.accuracy.evaluate import EvalResult, weighted_mean
from simfed.accuracy.train import Trainer, TrainConfig
from simfed.records import Arm, Plan

os.environ.setdefault("HF_HUB_OFFLINE", "1")

N_DEVICES = 8
MIN_TRAIN_CHARS = 8000
ROUNDS = 3
ITERS = 20




def federated_run(p: float, seed: int = 0) -> tuple[EvalResult, EvalResult, EvalResult]:
    """ROUNDS rounds of prune (by ``p`` per round) and tune; flexlora; plans built by hand.

    Returns (pre-trained model unpruned, final pruned models without adapter, final pruned models
    with the global update merged), each token-weighted over the participating roles' held-out text.
    """
    from simfed.accuracy.aggregators import make_aggregator, rslora_rule
    from simfed.accuracy.data import load_shakespeare
    from simfed.accuracy.pretrain import load_pretrained

    data = load_shakespeare()
    model, _ = load_pretrained()
    cfg = TrainConfig(seed=seed)
    devices = data.pick_clients(N_DEVICES, seed=seed, min_train_chars=MIN_TRAIN_CHARS)
    tr = Trainer(model, data.clients, cfg)
    agg = make_aggregator("flexlora", tr.shape, r_max=8, scale_rule=rslora_rule(cfg.alpha), seed=seed)
    unpruned = weighted_mean(tr.evaluate(devices))
    sparsity = {d: 0.0 for d in devices}
    for rnd in range(ROUNDS):
        plans = [
            Plan(rnd, d, Arm(p, 4 + 4 * (i % 2)), sparsity[d], sparsity[d] + p, local_iters=ITERS, tau=ITERS)
            for i, d in enumerate(devices)
        ]
        factors = {pl.device_id: agg.factors_for(pl.arm.r, tr.kept(pl.device_id)) for pl in plans}
        reports = tr.run_round(plans, factors)
        assert [r.device_id for r in reports] == devices
        agg.aggregate([r.update for r in reports])
        sparsity = {pl.device_id: pl.sparsity_after for pl in plans}
    pruned = weighted_mean(tr.evaluate(devices))
    tuned = weighted_mean(tr.evaluate(devices, delta_for=agg.delta_for))
    return unpruned, pruned, tuned


@pytest.mark.slow
def test_federated_tuning_beats_pretrained():
    unpruned, pruned, tuned = federated_run(p=0.0)
    assert pruned == unpruned  # nothing was pruned: the base models are untouched
    assert tuned.loss < unpruned.loss, (unpruned, tuned)
    assert tuned.accuracy > unpruned.accuracy, (unpruned, tuned)


@pytest.mark.slow
def test_federated_prune_and_tune_recovers_pruned_accuracy():
    unpruned, pruned, tuned = federated_run(p=0.1)  # 3 rounds: 30 % nominal sparsity
    # No claim about `pruned` vs `unpruned`: with the Milton-pre-trained base, pruning 30 % by the clients'
    # LoRA-gradient importance *raised* accuracy (0.412 -> 0.425, seed 0; docs/accuracy.md): it removes
    # structure that served the pre-training domain. The claim is that the tuned adapter adds to the pruned model.
    assert tuned.loss < pruned.loss, (unpruned, pruned, tuned)
    assert tuned.accuracy > pruned.accuracy, (unpruned, pruned, tuned)
    assert tuned.accuracy > unpruned.accuracy, (unpruned, pruned, tuned)
