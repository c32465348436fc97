"""``train.workers``: a round's devices trained in worker processes give the same results as one process."""

from __future__ import annotations

import pickle

import pytest
import torch

from simfed.accuracy.train import Trainer, TrainConfig
from simfed.records import Arm, Plan

from test_train import base_model, clients, factors_for  # tests/accuracy is on sys.path (rootdir-relative import)




def two_rounds(workers: int):
    tr = Trainer(base_model(), clients(), TrainConfig(batch_size=4, seq_len=32, lr=1e-2, seed=3, workers=workers))
    out = []
    for rnd, (before, after) in enumerate(((0.0, 0.25), (0.25, 0.5))):
        plans = [Plan(rnd, d, Arm(after - before, 2 + 2 * i), before, after, 6, 3) for i, d in enumerate(("a", "b"))]
        reps = tr.run_round(plans, {p.device_id: factors_for(tr, p.device_id, p.arm.r) for p in plans})
        out.append(reps)
    return tr, out


def test_workers_train_bit_identically_to_one_process():
    one, ref = two_rounds(1)
    par, got = two_rounds(2)
    try:
        for ra, rb in zip(ref, got):
            for a, b in zip(ra, rb):
                assert (a.device_id, a.loss_before, a.loss_after, a.update_norm, a.sparsity_after) == (
                    b.device_id, b.loss_before, b.loss_after, b.update_norm, b.sparsity_after)
                for key in a.update.factors.A:
                    assert torch.equal(a.update.factors.A[key], b.update.factors.A[key])
                    assert torch.equal(a.update.factors.B[key], b.update.factors.B[key])
        for d in ("a", "b"):  # the parent's copy of each device followed: structure, model, EMA, data position
            assert one.kept(d).channels[0].tolist() == par.kept(d).channels[0].tolist()
            assert par.state(d).model.layers[0].mlp.up.weight.shape == one.state(d).model.layers[0].mlp.up.weight.shape
            assert torch.equal(one.state(d).generator.get_state(), par.state(d).generator.get_state())
            assert all(torch.equal(x, y) for (x, _), (y, _) in zip(one.state(d).ema.scores, par.state(d).ema.scores))
        assert one.evaluate(["a", "b"]) == par.evaluate(["a", "b"])
        par.revert("a")  # undo works on the parent's copy as in one process
        one.revert("a")
        assert one.kept("a").structure() == par.kept("a").structure()
        restored = pickle.loads(pickle.dumps(par))  # a checkpoint carries no processes
        assert restored._workers is None
    finally:
        par.close()


def test_workers_must_be_positive():
    with pytest.raises(ValueError, match=r"TrainConfig.workers must be >= 1"):
        TrainConfig(workers=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA GPU on this machine")
def test_workers_are_for_the_cpu_only():
    with pytest.raises(ValueError, match=r"worker processes are for the CPU"):
        Trainer(base_model(), clients(), TrainConfig(device="cuda", workers=2))
