"""Checkpoint state as plain data: ``state_dict()`` / ``load_state_dict()`` of the aggregators and the trainer.

A state pickles without any simfed class, and an object given it continues bit-identically.
"""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch

from simfed.accuracy.adapters import DeviceUpdate, Kept, LoRAFactors
from simfed.accuracy.aggregators import AGGREGATORS, make_aggregator, rslora_rule
from simfed.accuracy.aggregators.factor_average import FactorAverage
from simfed.accuracy.data import ClientData, encode
from simfed.accuracy.lora import adapted_linears
from simfed.accuracy.model import Model, ModelConfig
from simfed.accuracy.train import TrainConfig, Trainer
from simfed.records import Arm, Plan
from aggregation_fixtures import FULL, HALF, RULE, SHAPE, random_update  # tests/accuracy is on sys.path
from simfed.structure import ModelShape

def pickled_modules(obj) -> set[str]:
    """Every module a pickle of ``obj`` names a class or function from."""
    seen: set[str] = set()

    class Recording(pickle.Unpickler):
        def find_class(self, module, name):
            seen.add(module)
            return super().find_class(module, name)

    Recording(io.BytesIO(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))).load()
    return seen


def update(rank: int, kept: Kept, n: int, seed: int) -> DeviceUpdate:
    return random_update(rank, kept, n, seed)


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_an_aggregator_continues_bit_identically_from_its_state(name):
    same_rank = name == "fedavg"
    first = [update(2, FULL, 3, seed=1), update(2 if same_rank else 3, HALF, 2, seed=2)]
    second = [update(2, HALF, 1, seed=3), update(2 if same_rank else 4, FULL, 5, seed=4)]
    agg = make_aggregator(name, SHAPE, 4, RULE, seed=7)
    agg.aggregate(first)
    agg.factors_for(2, HALF)  # fills any per-round cache, which the state leaves out
    state = agg.state_dict()
    assert not {m for m in pickled_modules(state) if m.startswith("simfed")}
    restored = make_aggregator(name, SHAPE, 4, RULE, seed=7)
    restored.load_state_dict(pickle.loads(pickle.dumps(state)))
    assert restored.rounds == 1
    for a in (agg, restored):
        a.aggregate(second)
    for kept in (FULL, HALF):
        want, got = agg.delta_for(kept), restored.delta_for(kept)
        down_want, down_got = agg.factors_for(3, kept), restored.factors_for(3, kept)
        for key in agg.keys():
            assert torch.equal(want[key], got[key])
            assert torch.equal(down_want.A[key], down_got.A[key]) and torch.equal(down_want.B[key], down_got.B[key])


def test_an_aggregator_refuses_a_state_of_another_shape_and_undeclared_attributes():
    agg = make_aggregator("flexlora", SHAPE, 4, RULE, 0)
    other = make_aggregator("flexlora", ModelShape(n_layers=1, d_model=8, n_heads=4, n_kv_heads=2, head_dim=2,
                                                   d_ff=6, vocab_size=11), 4, RULE, 0)
    with pytest.raises(ValueError, match=r"flexlora.load_state_dict: svd: expected the keys"):
        agg.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match=r"flexlora.load_state_dict: the state lacks \['svd'\]"):
        agg.load_state_dict({"rounds": 0})
    wide = make_aggregator("flora", SHAPE, 4, RULE, 0).state_dict()
    wide["merged"][(0, "q")] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match=r"merged\[\(0, 'q'\)\]: expected a tensor of shape \(8, 8\), got \(3, 3\)"):
        make_aggregator("flora", SHAPE, 4, RULE, 0).load_state_dict(wide)

    class Counting(FactorAverage):
        name = "counting"

        def weights(self, updates, key):
            self.calls = getattr(self, "calls", 0) + 1
            return [1.0] * len(updates)

    counting = make_aggregator(Counting, SHAPE, 4, RULE, 0)
    counting.aggregate([update(2, FULL, 1, seed=1)])
    with pytest.raises(ValueError, match=r"aggregator counting: attribute\(s\) \['calls'\] are in neither state_attrs"):
        counting.state_dict()


CONFIG = ModelConfig(vocab_size=97, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=32, max_seq_len=32)
TEXTS = {"a": "to be, or not to be, that is the question; whether tis nobler in the mind to suffer. " * 12,
         "b": "now is the winter of our discontent made glorious summer by this sun of york. " * 12}


def trainer() -> Trainer:
    torch.manual_seed(0)
    data = {k: ClientData(k, "play", k.upper(), encode(t[:800]), encode(t[800:]), 20, 5) for k, t in TEXTS.items()}
    return Trainer(Model(CONFIG), data, TrainConfig(batch_size=2, seq_len=16, lr=1e-2, seed=3))


def factors(tr: Trainer, device: str, rank: int) -> LoRAFactors:
    return make_aggregator("flexlora", tr.shape, 4, rslora_rule(tr.config.alpha), 0).factors_for(rank, tr.kept(device))


def run(tr: Trainer, rnd: int, s_before: float, s_after: float) -> list:
    plans = [Plan(rnd, d, Arm(s_after - s_before, 2), s_before, s_after, local_iters=4, tau=2) for d in ("a", "b")]
    reps = tr.run_round(plans, {d: factors(tr, d, 2) for d in ("a", "b")})
    return [(r.loss_before, r.loss_after, r.update_norm, r.sparsity_after,
             [r.update.factors.B[k].tolist() for k in sorted(r.update.factors.B)]) for r in reps]


def test_the_trainer_continues_bit_identically_from_its_state():
    """Round 0 prunes both devices to 0.25 (importance EMA, generators, steps move); a trainer given the state
    dict (pickled without any simfed class) trains round 1 exactly as the original does."""
    tr = trainer()
    run(tr, 0, 0.0, 0.25)
    state = tr.state_dict()
    assert set(state["devices"]) == {"a", "b"} and state["devices"]["a"]["steps"] == 4
    assert state["devices"]["a"]["ema"]["scores"] is not None
    assert not {m for m in pickled_modules(state) if m.startswith("simfed")}
    restored = trainer()
    restored.load_state_dict(pickle.loads(pickle.dumps(state)))
    for d in ("a", "b"):
        kept, back = tr.kept(d), restored.kept(d)
        assert all(np.array_equal(x, y) for x, y in zip(kept.groups + kept.channels, back.groups + back.channels))
        for key, lin in adapted_linears(tr.state(d).model).items():
            assert torch.equal(lin.weight, adapted_linears(restored.state(d).model)[key].weight)
    assert run(restored, 1, 0.25, 0.5) == run(tr, 1, 0.25, 0.5)
    assert restored.train_steps == tr.train_steps
