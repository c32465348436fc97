"""HetLoRA's rank self-pruning (Cho et al., arXiv 2401.06432): the regulariser, the trainer's decision, the
truncated upload, and the method's rank bookkeeping."""

import math

import numpy as np
import pytest
import torch

from simfed.accuracy.adapters import LoRAFactors
from simfed.accuracy.lora import lora_scale, truncate_rank
from simfed.accuracy.train import self_prune_tail, tail_norm
from simfed.records import Arm, Observation, Outcome, Plan
from test_train import factors_for, make_trainer  # tests/accuracy is on sys.path (rootdir-relative import)


def test_the_tail_starts_at_floor_gamma_r_and_is_off_without_weight():
    assert self_prune_tail(16, 0.9, 0.01) == 14  # floor(14.4)
    assert self_prune_tail(4, 0.9, 0.01) == 3
    assert self_prune_tail(1, 0.9, 0.01) is None  # nothing would be left
    assert self_prune_tail(16, 0.9, 0.0) is None and self_prune_tail(16, 1.0, 0.01) is None


def test_the_regulariser_is_the_product_of_the_tails_frobenius_norms():
    class Lin(torch.nn.Module):
        def __init__(self, A, B):
            super().__init__()
            self.lora_A, self.lora_B = A, B

    A = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])  # rank 3 x d_in 2
    B = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]])  # d_out 2 x rank 3
    # tail from component 2: ||B[:, 2:]|| = 2, ||A[2:, :]|| = 5; twice the same linear
    assert float(tail_norm([Lin(A, B), Lin(A, B)], 2)) == pytest.approx(2 * 2.0 * 5.0)


def test_truncating_keeps_exactly_the_first_components_update():
    g = torch.Generator().manual_seed(0)
    f = LoRAFactors(rank=4, scale=lora_scale(4, 8.0))
    f.A[(0, "q")], f.B[(0, "q")] = torch.randn(4, 6, generator=g), torch.randn(5, 4, generator=g)
    t = truncate_rank(f, 2, alpha=8.0)
    assert t.rank == 2 and t.scale == lora_scale(2, 8.0)
    expected = f.scale * f.B[(0, "q")][:, :2] @ f.A[(0, "q")][:2]
    assert torch.allclose(t.delta((0, "q")), expected, atol=1e-6)
    with pytest.raises(ValueError, match="truncate rank-4 factors to rank 5"):
        truncate_rank(f, 5)


def _round(tr, round_, rank):
    plan = Plan(round_, "a", Arm(0.0, rank), 0.0, 0.0, local_iters=6, tau=6)
    (report,) = tr.run_round([plan], {"a": factors_for(tr, "a", rank, seed=round_)})
    return report


def test_a_device_shrinks_its_rank_only_when_its_tail_norm_fell():
    tr = make_trainer(self_prune_decay=0.5, self_prune_weight=0.1)
    first = _round(tr, 0, 4)
    assert first.rank_after == 4 and first.update.factors.rank == 4  # no earlier norm to compare with
    assert math.isfinite(tr.state("a").tail_norm) and tr.state("a").tail_norm > 0
    tr.state("a").tail_norm = 0.0  # an earlier round whose tail was smaller: no shrinking
    assert _round(tr, 1, 4).rank_after == 4
    tr.state("a").tail_norm = 1e9  # an earlier round whose tail was larger: shrink to floor(0.5 * 4)
    shrunk = _round(tr, 2, 4)
    assert shrunk.rank_after == 2 and shrunk.update.factors.rank == 2
    assert all(A.shape[0] == 2 for A in shrunk.update.factors.A.values())
    tr.revert("a")  # a rejected round takes its self-pruning memory back too
    assert tr.state("a").tail_norm == 1e9


def test_the_regulariser_shrinks_the_tail():
    def tail_after(weight):
        tr = make_trainer(self_prune_decay=0.5, self_prune_weight=weight)
        _round(tr, 0, 4)
        return tr.state("a").tail_norm

    tr = make_trainer()  # off: no regulariser, the trainer keeps no tail norm
    assert _round(tr, 0, 4).rank_after == 4 and tr.state("a").tail_norm == math.inf
    assert tail_after(50.0) < tail_after(1e-6)


def test_hetlora_plans_the_rank_a_device_shrank_to_and_keeps_it_in_its_state():
    from simfed.decisions.arms import ArmSpace
    from simfed.decisions.methods import build_method

    ids, types = ["agx-0", "tx2-1"], {"agx-0": "agx", "tx2-1": "tx2"}
    method = build_method("hetlora", ArmSpace(), ids, types, 0)
    assert method.train_options() == {"self_prune_decay": 0.9, "self_prune_weight": 0.01}
    plans = method.plans(0, ids, np.zeros(2), s_star=0.5, local_iters=1, tau=1)
    assert plans.r.tolist() == [16, 4]
    obs = [Observation(0, "agx-0", Arm(0.0, 16), Outcome.OK, 1.0, 1.0, 0.0, 0.0, 0.0, rank_after=14.0),
           Observation(0, "tx2-1", Arm(0.0, 4), Outcome.FAILED, math.nan, 1.0, 0.0, 0.0, 0.0, rank_after=1.0)]
    method.learn(0, obs, {"agx-0": 0.5})
    assert method.plans(1, ids, np.zeros(2), s_star=0.5, local_iters=1, tau=1).r.tolist() == [14, 4]  # rejected: kept
    clone = build_method("hetlora", ArmSpace(), ids, types, 0)
    clone.load_state_dict(method.state_dict())
    assert clone.plans(2, ids, np.zeros(2), s_star=0.5, local_iters=1, tau=1).r.tolist() == [14, 4]
    off = build_method("hetlora", ArmSpace(), ids, types, 0, {"self_prune_weight": 0.0})
    assert off.train_options()["self_prune_weight"] == 0.0
