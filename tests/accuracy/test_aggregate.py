"""Heterogeneous LoRA aggregation: exact, hand-checkable cases on a tiny shape."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from simfed.accuracy.adapters import DeviceUpdate, LoRAFactors, module_dims
from simfed.accuracy.aggregators import (
    AGGREGATORS,
    layer_energy_in_top,
    make_aggregator,
    scale_rule,
    singular_value_energy,
)
from simfed.accuracy.aggregators.base import restriction
from simfed.accuracy.aggregators.hetlora import linear_update_norm as update_norm
from aggregation_fixtures import FULL, HALF, RULE, SHAPE, pruned, random_update  # tests/accuracy is on sys.path

R_MAX = 4
ATOL = 1e-5


def scattered(update: DeviceUpdate, key) -> tuple[torch.Tensor, torch.Tensor]:
    """The update's delta in full coordinates and its 0/1 coverage mask."""
    d_out, d_in = module_dims(SHAPE, key[1])
    full = torch.zeros(d_out, d_in)
    mask = torch.zeros(d_out, d_in)
    rows, cols = restriction(SHAPE, update.kept, key)
    rows = torch.arange(d_out) if rows is None else rows
    cols = torch.arange(d_in) if cols is None else cols
    full[rows[:, None], cols[None, :]] = update.factors.delta(key)
    mask[rows[:, None], cols[None, :]] = 1.0
    return full, mask


def make(name: str, seed: int = 0):
    return make_aggregator(name, SHAPE, R_MAX, RULE, seed)


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
@pytest.mark.parametrize("kept", [FULL, HALF], ids=["full", "pruned"])
def test_identical_updates_aggregate_to_themselves(name, kept):
    """Averaging copies of one update gives that update back, in delta and in what the downlink applies
    (flora: merged into the base, ``base_delta``, with a fresh adapter whose B is 0)."""
    agg = make(name)
    one = random_update(2, kept, 5, seed=1)
    twin = DeviceUpdate(one.factors, kept.copy(), n_samples=9)
    agg.aggregate([one, twin])
    deltas = agg.delta_for(kept)
    down = agg.factors_for(2, kept)
    for key in agg.keys():
        torch.testing.assert_close(deltas[key], one.factors.delta(key), atol=ATOL, rtol=1e-5)
        applied = down.delta(key) + (down.base_delta[key] if down.base_delta is not None else 0)
        torch.testing.assert_close(applied, one.factors.delta(key), atol=ATOL, rtol=1e-5)
    if name not in ("flexlora", "flora"):  # factor methods hand the factors themselves back
        for key in agg.keys():
            torch.testing.assert_close(down.A[key], one.factors.A[key], atol=ATOL, rtol=1e-5)
            torch.testing.assert_close(down.B[key], one.factors.B[key], atol=ATOL, rtol=1e-5)


def test_flexlora_coverage_weighted_by_data_size():
    """Each coordinate is the n-weighted mean over the devices that keep it; others keep device values."""
    agg = make("flexlora")
    a = random_update(2, FULL, n_samples=1, seed=2)
    b = random_update(3, HALF, n_samples=3, seed=3)
    agg.aggregate([a, b])
    deltas = agg.delta_for(FULL)
    for key in agg.keys():
        da, ma = scattered(a, key)
        db, mb = scattered(b, key)
        want = torch.where(mb > 0, 0.25 * da + 0.75 * db, da)
        torch.testing.assert_close(deltas[key], want, atol=ATOL, rtol=1e-5)


def test_flexlora_coordinate_kept_by_one_device_takes_its_value():
    """Rows (q, k, v, gate, up) and columns (o, down) only one device keeps equal that device's update."""
    agg = make("flexlora")
    a = random_update(2, pruned([0], [0, 1, 2]), n_samples=4, seed=4)
    b = random_update(1, pruned([1], [3, 4]), n_samples=1, seed=5)
    agg.aggregate([a, b])
    deltas = agg.delta_for(FULL)
    for key in agg.keys():
        da, ma = scattered(a, key)
        db, mb = scattered(b, key)
        assert not torch.any((ma > 0) & (mb > 0))  # disjoint structures
        want = da + db  # channel 5 nobody keeps: stays 0 (its previous value)
        torch.testing.assert_close(deltas[key], want, atol=ATOL, rtol=1e-5)
    assert torch.all(deltas[(0, "gate")][5] == 0) and torch.all(deltas[(1, "down")][:, 5] == 0)


def test_uncovered_coordinates_keep_previous_value():
    """A row no device keeps this round keeps the value the last round gave it (all three methods)."""
    for name in ("flexlora", "fedavg", "hetlora"):
        agg = make(name)
        first = random_update(2, FULL, 1, seed=6)
        agg.aggregate([first])
        before = agg.delta_for(FULL)
        agg.aggregate([random_update(2, HALF, 1, seed=7)])
        after = agg.delta_for(FULL)
        for key in agg.keys():
            _, mask = scattered(random_update(2, HALF, 1, seed=0), key)
            if name == "flexlora":
                untouched = mask == 0
                torch.testing.assert_close(after[key][untouched], before[key][untouched])
            else:  # factor methods: uncovered rows of B (cols of A) keep theirs; compare the factors
                rows, cols = restriction(SHAPE, HALF, key)
                if rows is not None:
                    keep = torch.ones(module_dims(SHAPE, key[1])[0], dtype=torch.bool)
                    keep[rows] = False
                    assert torch.any(keep)
                    full_down = agg.factors_for(2, FULL)
                    torch.testing.assert_close(
                        full_down.B[key][keep], first.factors.B[key][keep] * first.factors.scale / RULE(2)
                    )


def test_flexlora_downlink_full_rank_is_exact_and_low_rank_is_best_approximation():
    """At a rank covering the average, scale*B*A reproduces it; below, it is the truncated SVD."""
    agg = make("flexlora")
    agg.aggregate([random_update(2, FULL, 2, seed=8), random_update(2, HALF, 5, seed=9)])
    for kept in (FULL, HALF):
        deltas = agg.delta_for(kept)
        full = agg.factors_for(R_MAX, kept)  # two rank-2 updates: the average has rank <= 4
        assert full.scale == pytest.approx(RULE(R_MAX))
        for key in agg.keys():
            torch.testing.assert_close(full.delta(key), deltas[key], atol=1e-4, rtol=1e-4)
        for rank in (1, 2, 3):
            low = agg.factors_for(rank, kept)
            assert low.scale == pytest.approx(RULE(rank))
            for key in agg.keys():
                u, s, vh = torch.linalg.svd(deltas[key].double(), full_matrices=False)
                k = min(rank, len(s))
                best = (u[:, :k] * s[:k]) @ vh[:k]
                torch.testing.assert_close(low.delta(key).double(), best, atol=1e-4, rtol=1e-4)
                assert low.A[key].shape[0] == rank and low.B[key].shape[1] == rank
                # the singular values are split evenly between the factors
                bn = low.B[key].double().norm(dim=0)[:k]
                an = low.A[key].double().norm(dim=1)[:k]
                torch.testing.assert_close(bn, an, atol=1e-4, rtol=1e-4)


def test_flexlora_dead_components_get_init_rows_and_zero_b():
    """Beyond the restriction's rank: B column 0 (product unchanged) and A row = round-0 init row."""
    agg = make("flexlora")
    one_group = pruned([0], [0, 1])
    agg.aggregate([random_update(1, one_group, 1, seed=10)])
    down = agg.factors_for(3, one_group)
    key = (0, "k")  # the restriction is 2 x 8 of rank 1
    assert torch.all(down.B[key][:, 1:] == 0)
    torch.testing.assert_close(down.A[key][1:], agg.init_A[key][1:3])
    torch.testing.assert_close(down.delta(key), agg.delta_for(one_group)[key], atol=ATOL, rtol=1e-5)


def test_hetlora_zero_pads_and_weights_by_update_norm():
    """HetLoRA: A, B averaged with S_k = ||s_k B_k A_k||_F / sum; missing ranks count as zeros."""
    agg = make("hetlora")
    a = random_update(1, FULL, n_samples=100, seed=11)
    b = random_update(3, FULL, n_samples=1, seed=12)
    agg.aggregate([a, b])
    down = agg.factors_for(3, FULL)
    for key in agg.keys():
        wa = torch.linalg.matrix_norm(a.factors.delta(key)).item()
        wb = torch.linalg.matrix_norm(b.factors.delta(key)).item()
        assert update_norm(a, key) == pytest.approx(wa, rel=1e-5)
        pa, pb = wa / (wa + wb), wb / (wa + wb)
        want_a = pb * b.factors.A[key].clone()
        want_a[0] += pa * a.factors.A[key][0]
        want_bs = pb * b.factors.scale * b.factors.B[key].clone()
        want_bs[:, 0] += pa * a.factors.scale * a.factors.B[key][:, 0]
        torch.testing.assert_close(down.A[key], want_a, atol=ATOL, rtol=1e-5)
        torch.testing.assert_close(down.B[key] * down.scale, want_bs, atol=ATOL, rtol=1e-5)
        # rank 4 = r_max was uploaded by nobody: its A row keeps the init, its B column stays 0
        top = agg.factors_for(4, FULL)
        torch.testing.assert_close(top.A[key][3], agg.init_A[key][3])
        assert torch.all(top.B[key][:, 3] == 0)


def test_hetlora_coverage_in_pruned_dimension():
    """Rows only the full device keeps take its (padded) factors; shared rows are norm-weighted."""
    agg = make("hetlora")
    a = random_update(2, FULL, 1, seed=13)
    b = random_update(2, HALF, 1, seed=14)
    agg.aggregate([a, b])
    down = agg.factors_for(2, FULL)
    key = (1, "up")
    rows, _ = restriction(SHAPE, HALF, key)
    only_a = torch.ones(SHAPE.d_ff, dtype=torch.bool)
    only_a[rows] = False
    torch.testing.assert_close(down.B[key][only_a], a.factors.B[key][only_a], atol=ATOL, rtol=1e-5)
    wa, wb = update_norm(a, key), update_norm(b, key)
    shared = (wa * a.factors.B[key][rows] + wb * b.factors.B[key]) / (wa + wb)
    torch.testing.assert_close(down.B[key][rows], shared, atol=ATOL, rtol=1e-5)
    key = (1, "down")  # input-pruned: coverage over A's columns
    _, cols = restriction(SHAPE, HALF, key)
    only_a = torch.ones(SHAPE.d_ff, dtype=torch.bool)
    only_a[cols] = False
    torch.testing.assert_close(down.A[key][:, only_a], a.factors.A[key][:, only_a], atol=ATOL, rtol=1e-5)


def test_fedavg_averages_factors_by_data_size_and_rejects_mixed_ranks():
    agg = make("fedavg")
    a = random_update(2, FULL, n_samples=1, seed=15)
    b = random_update(2, FULL, n_samples=3, seed=16)
    agg.aggregate([a, b])
    down = agg.factors_for(2, FULL)
    for key in agg.keys():
        torch.testing.assert_close(down.A[key], 0.25 * a.factors.A[key] + 0.75 * b.factors.A[key], atol=ATOL, rtol=1e-5)
        torch.testing.assert_close(down.B[key], 0.25 * a.factors.B[key] + 0.75 * b.factors.B[key], atol=ATOL, rtol=1e-5)
    before = agg.delta_for(FULL)
    with pytest.raises(ValueError, match=r"fedavg.*ranks \[1, 2\]"):
        agg.aggregate([random_update(1, FULL, 1, seed=17), random_update(2, FULL, 1, seed=18)])
    after = agg.delta_for(FULL)
    assert all(torch.equal(before[k], after[k]) for k in agg.keys())


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_round0_is_one_shared_init_sliced(name):
    """Before any aggregation every device gets slices of the same seeded A, and B = 0."""
    agg = make(name, seed=3)
    big = agg.factors_for(4, FULL)
    small = agg.factors_for(2, HALF)
    assert big.scale == pytest.approx(RULE(4)) and small.scale == pytest.approx(RULE(2))
    for key in agg.keys():
        rows, cols = restriction(SHAPE, HALF, key)
        want = big.A[key][:2] if cols is None else big.A[key][:2, cols]
        torch.testing.assert_close(small.A[key], want)
        assert torch.all(big.B[key] == 0) and torch.all(small.B[key] == 0)
        assert small.B[key].shape == (module_dims(SHAPE, key[1])[0] if rows is None else len(rows), 2)
        bound = 1 / math.sqrt(module_dims(SHAPE, key[1])[1])
        assert big.A[key].abs().max() <= bound and big.A[key].std() > 0
    # the init depends on the seed only, the same for every method
    other = make("flexlora" if name != "flexlora" else "fedavg", seed=3).factors_for(4, FULL)
    assert all(torch.equal(other.A[k], big.A[k]) for k in agg.keys())
    assert not torch.equal(make(name, seed=4).factors_for(4, FULL).A[(0, "q")], big.A[(0, "q")])
    assert all(torch.all(d == 0) for d in agg.delta_for(HALF).values())


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_devices_with_different_scales_aggregate_applied_updates(name):
    """Uploads are read with the scale they carry: the same applied update at two scales averages to itself."""
    agg = make(name)
    a = random_update(2, FULL, 1, seed=19, scale=0.5)
    twin_f = LoRAFactors(rank=2, scale=2.0, A=dict(a.factors.A), B={k: v / 4 for k, v in a.factors.B.items()})
    agg.aggregate([a, DeviceUpdate(twin_f, FULL, 1)])
    deltas = agg.delta_for(FULL)
    for key in agg.keys():
        torch.testing.assert_close(deltas[key], a.factors.delta(key), atol=ATOL, rtol=1e-5)


def test_empty_round_changes_nothing():
    agg = make("flexlora")
    agg.aggregate([])
    assert agg.rounds == 0
    assert torch.all(agg.factors_for(2, FULL).B[(0, "q")] == 0)


def test_bad_input_is_named():
    agg = make("flexlora")
    with pytest.raises(ValueError, match="unknown aggregator 'nope'"):
        make_aggregator("nope", SHAPE, R_MAX, RULE, 0)
    with pytest.raises(ValueError, match=r"rank must be an integer in \[1, r_max=4\]"):
        agg.factors_for(5, FULL)
    with pytest.raises(ValueError, match=r"n_samples must be positive"):
        agg.aggregate([random_update(2, FULL, 0, seed=1)])
    bad = random_update(2, FULL, 1, seed=1)
    bad.factors.B[(1, "gate")] = torch.zeros(5, 2)
    with pytest.raises(ValueError, match=r"update 0.*\(1, 'gate'\) has A \(2, 8\) and B \(5, 2\).*B \(6, 2\)"):
        agg.aggregate([bad])
    with pytest.raises(ValueError, match=r"Kept.channels\[0\] must hold distinct indices in \[0, 6\)"):
        agg.factors_for(2, pruned([0], [0, 9]))
    missing = random_update(2, FULL, 1, seed=1)
    del missing.factors.A[(0, "q")]
    with pytest.raises(ValueError, match=r"factors.A keys differ: missing \[\(0, 'q'\)\]"):
        agg.aggregate([missing])
    with pytest.raises(ValueError, match="unknown LoRA scale rule"):
        scale_rule("nope", 1.0)
    assert scale_rule("lora", 8.0)(4) == 2.0 and scale_rule("rslora", 8.0)(4) == 4.0


def test_modules_subset():
    """Adapting only some linears: the keys, the init and the uploads follow the subset."""
    agg = make_aggregator("flexlora", SHAPE, R_MAX, RULE, 0, modules=("v", "q"))
    assert agg.keys() == [(0, "q"), (0, "v"), (1, "q"), (1, "v")]
    assert set(agg.factors_for(2, FULL).A) == set(agg.keys())
    with pytest.raises(ValueError, match="modules must be a non-empty subset"):
        make_aggregator("flexlora", SHAPE, R_MAX, RULE, 0, modules=("attn",))


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_singular_value_energy(name):
    """A rank-1 global update puts all its energy in the first component; values match svdvals."""
    agg = make(name)
    up = random_update(1, FULL, 1, seed=20)
    agg.aggregate([up])
    sv = agg.singular_values()
    deltas = agg.delta_for(FULL)
    for key in agg.keys():
        want = torch.linalg.svdvals(deltas[key].double())[: len(sv[key])]
        torch.testing.assert_close(sv[key].double()[:R_MAX], want[:R_MAX], atol=1e-4, rtol=1e-4)
    energy = singular_value_energy(agg)
    for key, shares in energy.items():
        assert len(shares) <= R_MAX
        assert shares[0] == pytest.approx(1.0, abs=1e-5)
    per_layer = layer_energy_in_top(agg, 1)
    assert per_layer.shape == (SHAPE.n_layers,)
    np.testing.assert_allclose(per_layer, 1.0, atol=1e-5)
    # two devices of different rank-1 directions: energy spreads over two components
    agg2 = make(name)
    agg2.aggregate([random_update(2, FULL, 1, seed=21)])
    assert np.all(layer_energy_in_top(agg2, 1) < 1.0 - 1e-3)


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_deterministic(name):
    """Same seed and uploads give bitwise identical downlinks."""
    outs = []
    for _ in range(2):
        agg = make(name, seed=5)
        agg.aggregate([random_update(2, FULL, 2, seed=22), random_update(2, HALF, 3, seed=23)])
        outs.append(agg.factors_for(3, HALF))
    for key in outs[0].A:
        assert torch.equal(outs[0].A[key], outs[1].A[key]) and torch.equal(outs[0].B[key], outs[1].B[key])


def test_flexlora_matches_dense_reference_over_rounds():
    """Three rounds of changing structures: the factored global update equals Eq. 6 applied densely."""
    agg = make("flexlora")
    dense = {key: torch.zeros(*module_dims(SHAPE, key[1]), dtype=torch.float64) for key in agg.keys()}
    structures = [[FULL, HALF], [HALF, pruned([0], [1, 2])], [pruned([1], [0, 4]), pruned([1], [3])]]
    for rnd, kepts in enumerate(structures):
        ups = [random_update(1 + i, kept, n_samples=2 + i, seed=100 + 10 * rnd + i) for i, kept in enumerate(kepts)]
        agg.aggregate(ups)
        for key in agg.keys():
            num = torch.zeros_like(dense[key])
            den = torch.zeros_like(dense[key])
            for u in ups:
                d, m = scattered(u, key)
                num += u.n_samples * d.double()
                den += u.n_samples * m.double()
            dense[key] = torch.where(den > 0, num / den.clamp(min=1e-30), dense[key])
        got = agg.delta_for(FULL)
        for key in agg.keys():
            torch.testing.assert_close(got[key].double(), dense[key], atol=1e-4, rtol=1e-4)
