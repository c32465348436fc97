"""FLoRA's stacking aggregation (arXiv 2409.05976): exact stacks, merging, re-initialised downlinks, the
trainer's merged base, the server's FLOPs and the stacked download of the method's plans."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from simfed.accuracy.adapters import DeviceUpdate, LoRAFactors, module_dims
from simfed.accuracy.aggregators import AGGREGATORS, FLoRA, make_aggregator
from simfed.accuracy.aggregators.base import restrict, restriction
from simfed.accuracy.data import ClientData, encode
from simfed.accuracy.lora import adapted_linears
from simfed.accuracy.model import Model, ModelConfig
from simfed.accuracy.train import TrainConfig, Trainer
from simfed.records import Arm, Plan
from aggregation_fixtures import FULL, HALF, RULE, SHAPE, pruned, random_update  # tests/accuracy is on sys.path

R_MAX = 4


def scattered(update: DeviceUpdate, key) -> tuple[torch.Tensor, torch.Tensor]:
    """The update's applied delta in full coordinates (float64) and its 0/1 coverage mask."""
    d_out, d_in = module_dims(SHAPE, key[1])
    full = torch.zeros(d_out, d_in, dtype=torch.float64)
    mask = torch.zeros(d_out, d_in, dtype=torch.float64)
    rows, cols = restriction(SHAPE, update.kept, key)
    rows = torch.arange(d_out) if rows is None else rows
    cols = torch.arange(d_in) if cols is None else cols
    full[rows[:, None], cols[None, :]] = update.factors.scale * (update.factors.B[key].double() @ update.factors.A[key].double())
    mask[rows[:, None], cols[None, :]] = 1.0
    return full, mask


def coverage_average(updates: list[DeviceUpdate], key) -> torch.Tensor:
    """The n-weighted mean, per coordinate, over the devices that keep it (0 where none does)."""
    num = den = 0
    for u in updates:
        d, m = scattered(u, key)
        num = num + u.n_samples * d
        den = den + u.n_samples * m
    return torch.where(den > 0, num / torch.clamp(den, min=1e-300), torch.zeros_like(num))


def make(seed: int = 0) -> FLoRA:
    return make_aggregator("flora", SHAPE, R_MAX, RULE, seed)


# ------------------------------------------------------------------------------------------- stacking


def test_registered():
    assert AGGREGATORS["flora"] is FLoRA and isinstance(make(), FLoRA)


def test_stack_of_heterogeneous_ranks_is_the_exact_weighted_sum():
    """Ranks 1, 2, 4 and three scales: A rows carry p_k, B columns s_k, and B_stack A_stack = sum p_k s_k B_k A_k."""
    agg = make()
    ups = [random_update(1, FULL, 1, seed=1, scale=0.5), random_update(2, FULL, 2, seed=2),
           random_update(4, FULL, 5, seed=3, scale=3.0)]
    p = [1 / 8, 2 / 8, 5 / 8]
    stacks = agg.stack(ups)
    for key in agg.keys():
        b, a = stacks[key]
        assert b.shape == (module_dims(SHAPE, key[1])[0], 7) and a.shape == (7, module_dims(SHAPE, key[1])[1])
        at = 0
        want = 0
        for u, pk in zip(ups, p):
            r = u.factors.rank
            torch.testing.assert_close(a[at:at + r], pk * u.factors.A[key].double(), rtol=1e-15, atol=0)
            torch.testing.assert_close(b[:, at:at + r], u.factors.scale * u.factors.B[key].double(), rtol=1e-15, atol=0)
            want = want + pk * u.factors.scale * (u.factors.B[key].double() @ u.factors.A[key].double())
            at += r
        torch.testing.assert_close(b @ a, want, rtol=1e-12, atol=1e-12)


def test_stack_by_hand_with_a_pruned_device():
    """q of layer 0 (8 rows = 4 heads x 2): device a keeps every row, device b only group 1 (rows 4..7).

    a: n = 1, rank 1, scale 1, B = 1, A = 1: its update is 1 everywhere. b: n = 3, rank 2, scale 2,
    B = 1 (4 x 2), A = [1; 0]: its update is 2 on rows 4..7. Rows 0..3 are a's alone: 1. Rows 4..7:
    (1 * 1 + 3 * 2) / 4 = 1.75. In the stack, A's rows carry p = (1/4, 3/4) and B's rows the coverage
    correction N / coverage = 4 on rows 0..3 and 1 on rows 4..7.
    """
    agg = make()
    a = random_update(1, FULL, 1, seed=4, scale=1.0)
    b = random_update(2, pruned([1], [0, 1, 2, 3, 4, 5]), 3, seed=5, scale=2.0)
    key = (0, "q")
    a.factors.A[key], a.factors.B[key] = torch.ones(1, 8), torch.ones(8, 1)
    b.factors.A[key], b.factors.B[key] = torch.tensor([[1.0] * 8, [0.0] * 8]), torch.ones(4, 2)
    bs, as_ = agg.stack([a, b])[key]
    torch.testing.assert_close(as_, torch.tensor([[0.25] * 8, [0.75] * 8, [0.0] * 8], dtype=torch.float64))
    torch.testing.assert_close(bs, torch.tensor([[4.0, 0, 0]] * 4 + [[1.0, 2, 2]] * 4, dtype=torch.float64))
    torch.testing.assert_close(bs @ as_, torch.tensor([[1.0] * 8] * 4 + [[1.75] * 8] * 4, dtype=torch.float64))
    agg.aggregate([a, b])
    torch.testing.assert_close(agg.delta_for(FULL)[key], torch.tensor([[1.0] * 8] * 4 + [[1.75] * 8] * 4))


@pytest.mark.parametrize("kepts", [[FULL, HALF], [HALF, pruned([0], [1, 2])], [pruned([1], [0, 4]), pruned([0], [3])]],
                         ids=["full+half", "overlapping", "disjoint"])
def test_stack_of_pruned_structures_is_the_coverage_average(kepts):
    """Each coordinate: the n-weighted mean over the devices that keep it, as flexlora averages; none: 0."""
    agg = make()
    ups = [random_update(1 + i, kept, n_samples=2 + 3 * i, seed=10 + i) for i, kept in enumerate(kepts)]
    stacks = agg.stack(ups)
    for key in agg.keys():
        b, a = stacks[key]
        torch.testing.assert_close(b @ a, coverage_average(ups, key), rtol=1e-12, atol=1e-12)


def test_merge_accumulates_over_rounds_and_delta_for_restricts():
    """Three rounds: the merged update is the sum of the rounds' coverage averages; uncovered coordinates
    keep their merged value; delta_for(kept) is that sum restricted to kept; stacked_ranks lists sum r_k."""
    agg = make()
    dense = {key: torch.zeros(*module_dims(SHAPE, key[1]), dtype=torch.float64) for key in agg.keys()}
    rounds = [[FULL, HALF], [HALF, pruned([0], [1, 2])], [pruned([1], [0, 4])]]
    for t, kepts in enumerate(rounds):
        before = agg.delta_for(FULL)
        ups = [random_update(1 + i, kept, n_samples=2 + i, seed=100 + 10 * t + i) for i, kept in enumerate(kepts)]
        agg.aggregate(ups)
        for key in agg.keys():
            dense[key] += coverage_average(ups, key)
    assert agg.stacked_ranks == [3, 3, 1] and agg.rounds == 3
    for kept in (FULL, HALF, pruned([0], [5])):
        got = agg.delta_for(kept)
        for key in agg.keys():
            rows, cols = restriction(SHAPE, kept, key)
            torch.testing.assert_close(got[key].double(), restrict(dense[key], rows, cols), rtol=1e-5, atol=1e-5)
    # the last round kept channels 0 and 4 only: the other rows of gate and columns of down kept their value
    after = agg.delta_for(FULL)
    for c in (1, 2, 3, 5):
        assert torch.equal(after[(1, "gate")][c], before[(1, "gate")][c]) and before[(1, "gate")][c].abs().sum() > 0
        assert torch.equal(after[(1, "down")][:, c], before[(1, "down")][:, c])
    assert not torch.equal(after[(1, "gate")][0], before[(1, "gate")][0])


def test_empty_round_changes_nothing():
    agg = make()
    agg.aggregate([random_update(2, FULL, 1, seed=1)])
    before = {k: v.clone() for k, v in agg.merged.items()}
    agg.aggregate([])
    assert agg.rounds == 1 and agg.stacked_ranks == [2]
    assert all(torch.equal(agg.merged[k], before[k]) for k in agg.keys())


# ------------------------------------------------------------------------------------------- downlink


def test_downlink_is_a_fresh_adapter_and_the_merged_base():
    """After a merge: B = 0 at the device's rank and structure, A a fresh Kaiming draw (one per round, the
    same for every device, a prefix across ranks), and base_delta = delta_for(kept), restricted when read."""
    agg = make(seed=3)
    round0 = agg.factors_for(4, FULL)
    assert round0.base_delta is None
    agg.aggregate([random_update(2, FULL, 1, seed=1), random_update(3, HALF, 2, seed=2)])
    big, small = agg.factors_for(4, FULL), agg.factors_for(2, HALF)
    assert small.scale == pytest.approx(RULE(2)) and small.rank == 2
    for key in agg.keys():
        rows, cols = restriction(SHAPE, HALF, key)
        d_out, d_in = module_dims(SHAPE, key[1])
        assert torch.all(small.B[key] == 0) and small.B[key].shape == (d_out if rows is None else len(rows), 2)
        torch.testing.assert_close(small.A[key], big.A[key][:2] if cols is None else big.A[key][:2, cols])
        assert big.A[key].abs().max() <= 1 / math.sqrt(d_in) and big.A[key].std() > 0
        assert not torch.equal(big.A[key], round0.A[key])  # re-initialised, not the round-0 init
        torch.testing.assert_close(small.base_delta[key], agg.delta_for(HALF)[key], rtol=0, atol=0)
        assert big.base_delta[key].data_ptr() == agg.merged[key].data_ptr()  # whole structure: no copy
    # the next round draws another A; an old downlink keeps the merged update it was sent
    old = {k: big.base_delta[k].clone() for k in agg.keys()}
    agg.aggregate([random_update(1, FULL, 1, seed=3)])
    nxt = agg.factors_for(4, FULL)
    assert not torch.equal(nxt.A[(0, "q")], big.A[(0, "q")])
    assert all(torch.equal(big.base_delta[k], old[k]) for k in agg.keys())
    # deterministic: the draw depends on the seed and the round only
    again = make(seed=3)
    again.aggregate([random_update(2, FULL, 1, seed=1), random_update(3, HALF, 2, seed=2)])
    assert all(torch.equal(again.factors_for(4, FULL).A[k], big.A[k]) for k in agg.keys())


def test_merge_flops_by_hand():
    """Two linears (8 x 8 and 4 x 8); 3 devices of rank 2 (dims (8, 8), (2, 8)) and 1 of rank 4; R = 10.

    Per linear 2mnR + (m + n) [+ mn once merged]: 1280 + 16 [+ 64] and 640 + 12 [+ 32]. Per update
    r(m_k + n_k): 3 * (2 * 16 + 2 * 10) = 156 and 4 * 16 + 4 * 12 = 112.
    """
    full = [(8, 8), (4, 8)]
    updates = [(2, [(8, 8), (2, 8)], 3), (4, [(8, 8), (4, 8)], 1)]
    assert FLoRA.merge_flops(full, updates, merged_before=True) == 1280 + 16 + 64 + 640 + 12 + 32 + 156 + 112
    assert FLoRA.merge_flops(full, updates, merged_before=False) == 1280 + 16 + 640 + 12 + 156 + 112
    assert FLoRA.merge_flops(full, [], merged_before=True) == 0.0


def test_bad_input_is_named():
    agg = make()
    bad = random_update(2, FULL, 1, seed=1)
    bad.factors.B[(1, "up")] = torch.zeros(5, 2)
    with pytest.raises(ValueError, match=r"flora.aggregate\(update 0\).*\(1, 'up'\) has A \(2, 8\) and B \(5, 2\)"):
        agg.stack([bad])
    with pytest.raises(ValueError, match=r"flora.factors_for: rank must be an integer in \[1, r_max=4\]"):
        agg.factors_for(0, FULL)


# ------------------------------------------------------------------------------------------- the trainer

CONFIG = ModelConfig(vocab_size=97, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=32, max_seq_len=32)
TEXT = "to be, or not to be, that is the question; whether tis nobler in the mind to suffer. " * 12


def trainer(base: Model | None = None) -> Trainer:
    if base is None:
        torch.manual_seed(0)
        base = Model(CONFIG)
    data = {"a": ClientData("a", "play", "A", encode(TEXT[:800]), encode(TEXT[800:]), 20, 5)}
    return Trainer(base, data, TrainConfig(batch_size=2, seq_len=16, lr=1e-2, seed=1))


def downlink(tr: Trainer, device: str, rank: int, delta: dict | None) -> LoRAFactors:
    agg = make_aggregator("flora", tr.shape, R_MAX, RULE, 0)
    factors = agg.factors_for(rank, tr.kept(device))
    factors.base_delta = delta
    return factors


def random_delta(tr: Trainer, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {key: 0.05 * torch.randn(*lin.weight.shape, generator=gen)
            for key, lin in adapted_linears(tr.state("a").model).items()}


def report_values(rep) -> tuple:
    f = rep.update.factors
    return (rep.loss_before, rep.loss_after, rep.update_norm, [f.A[k].tolist() for k in sorted(f.A)],
            [f.B[k].tolist() for k in sorted(f.B)])


@pytest.mark.parametrize("p", [0.0, 0.5], ids=["no-pruning", "pruned-mid-round"])
def test_trainer_trains_on_the_merged_base_and_leaves_the_base_untouched(p):
    """A round with base_delta D on base W is bit-identical to the same round on a base whose weights are W + D;
    afterwards the device's model is the base index-selected to its structure again, and W was never written."""
    tr = trainer()
    base_weights = {k: lin.weight.detach().clone() for k, lin in adapted_linears(tr.base).items()}
    delta = random_delta(tr, seed=9)
    plan = Plan(0, "a", Arm(p, 2), 0.0, p, local_iters=6, tau=3)
    (rep,) = tr.run_round([plan], {"a": downlink(tr, "a", 2, delta)})

    torch.manual_seed(0)
    moved = Model(CONFIG)
    with torch.no_grad():
        for key, lin in adapted_linears(moved).items():
            lin.weight.add_(delta[key])
    ref = trainer(moved)
    (want,) = ref.run_round([plan], {"a": downlink(ref, "a", 2, None)})
    assert report_values(rep) == report_values(want)
    assert tr.kept("a").structure() == ref.kept("a").structure()

    for key, lin in adapted_linears(tr.base).items():
        assert torch.equal(lin.weight, base_weights[key])  # the shared base was never written
    device = adapted_linears(tr.state("a").model)
    kept = tr.kept("a")
    for key, lin in device.items():
        rows, cols = restriction(tr.shape, kept, key)
        torch.testing.assert_close(lin.weight, restrict(base_weights[key], rows, cols), rtol=0, atol=0)
        if p == 0.0:  # unpruned: the device shares the base's tensors again
            assert lin.weight is adapted_linears(tr.base)[key].weight


def test_trainer_refuses_a_base_delta_of_another_shape():
    tr = trainer()
    delta = random_delta(tr, seed=1)
    delta[(1, "gate")] = torch.zeros(3, 16)
    plan = Plan(0, "a", Arm(0.0, 2), 0.0, 0.0, local_iters=2, tau=2)
    with pytest.raises(ValueError, match=r"device 'a': base_delta for layer 1 module 'gate' is \(3, 16\); its weight is \(32, 16\)"):
        tr.run_round([plan], {"a": downlink(tr, "a", 2, delta)})
    assert all(lin.weight is adapted_linears(tr.base)[key].weight for key, lin in adapted_linears(tr.state("a").model).items())


# ------------------------------------------------------------------------------------------- the download


def test_method_plans_the_stacked_download_by_hand():
    """Round 0: no stack yet (down_rank 0). After round 0 (tx2 r4 and nx r8 ok, agx r16 a straggler) the stack
    has rank 12; every device lacks it in round 1. Round 1: tx2 and agx ok, nx unavailable: stack 4 + 16. Round 2:
    tx2 and agx lack only round 1's 20; nx (merged nothing since round 0) lacks 12 + 20."""
    from simfed.decisions.arms import ArmSpace
    from simfed.decisions.methods import build_method
    from simfed.records import OUTCOME_CODE, ObservationBatch, Outcome

    ids = ["agx-2", "nx-1", "tx2-0"]
    types = {"tx2-0": "tx2", "nx-1": "xavier-nx", "agx-2": "agx-xavier"}
    method = build_method("flora", ArmSpace(), ids, types, 0)
    assert (method.prune_mode, method.aggregator) == ("none", "flora")

    def plans(rnd):
        return method.plans(rnd, ids, np.zeros(3), s_star=0.0, local_iters=4, tau=2)

    def learn(rnd, batch, outcomes):
        codes = [OUTCOME_CODE[o] for o in outcomes]
        obs = ObservationBatch(rnd, batch.device_ids, batch.p, batch.r, codes)
        method.learn(rnd, obs, np.zeros(3))

    p0 = plans(0)
    assert p0.r.tolist() == [16, 8, 4] and p0.down_rank.tolist() == [0, 0, 0]
    learn(0, p0, [Outcome.STRAGGLER, Outcome.OK, Outcome.OK])
    p1 = plans(1)
    assert p1.down_rank.tolist() == [12, 12, 12] and [p.download_rank for p in p1] == [12, 12, 12]
    learn(1, p1, [Outcome.OK, Outcome.UNAVAILABLE, Outcome.OK])
    state = method.state_dict()
    p2 = plans(2)
    assert p2.down_rank.tolist() == [20, 32, 20]
    again = build_method("flora", ArmSpace(), ids, types, 0)
    again.load_state_dict(state)
    assert again.plans(2, ids, np.zeros(3), s_star=0.0, local_iters=4, tau=2).down_rank.tolist() == [20, 32, 20]


def test_plans_cost_their_download_rank():
    """CostModel.download_bytes costs adapter_bytes at the download rank; a batch without down_rank downloads
    at r, also after r is replaced; the column survives take, pickling and Plan records."""
    import pickle

    from simfed.records import PlanBatch
    from simfed.structure import structure_at
    from simfed.timing.cost import CostModel
    from simfed.timing.round import plan_cost_columns

    cost = CostModel(SHAPE, batch_size=1, seq_len=4, lora_bytes=4)
    st = structure_at(SHAPE, 0.0)
    batch = PlanBatch(1, ["a", "b", "c"], 0.0, [4, 4, 2], 0.0, 0.0, 4, 2, down_rank=[0, 12, 12])
    _, down, up, _ = plan_cost_columns(cost, batch)
    assert down.tolist() == [0.0, cost.adapter_bytes(st, 12), cost.adapter_bytes(st, 12)]
    assert up[0] == up[1] == cost.upload_bytes(batch[0])  # the upload is still the plan's own rank
    plain = PlanBatch(1, ["a", "b"], 0.0, [4, 8], 0.0, 0.0, 4, 2)
    assert plain.down_rank is None and plain.download_rank.tolist() == [4, 8]
    assert plain.with_columns(r=np.array([2, 2])).download_rank.tolist() == [2, 2]
    assert plan_cost_columns(cost, plain)[1].tolist() == [cost.adapter_bytes(st, 4), cost.adapter_bytes(st, 8)]
    kept = batch.with_columns(r=np.array([2, 2, 2])).take(np.array([2, 0]))
    assert kept.down_rank.tolist() == [12, 0] and [p.download_rank for p in kept] == [12, 0]
    assert pickle.loads(pickle.dumps(batch)) == list(batch) and PlanBatch.of(list(batch)).down_rank.tolist() == [0, 12, 12]
    with pytest.raises(ValueError, match="device 'b': down_rank must be >= 0"):
        PlanBatch(1, ["a", "b"], 0.0, 4, 0.0, 0.0, 4, 2, down_rank=[0, -1])
