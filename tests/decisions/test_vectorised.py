"""Vectorised per-device state (issue #14, item 5): the arrays choose exactly what the per-device learners choose.

The scenario (``_policy_scenario``: 12 devices, 100 rounds, late joiners, devices that sit out or never
report, failures with and without a reward, quantised rewards that make indices tie) is played by each
policy with ``backend="learners"`` (one learner object per device, counter-based draws) and with
``backend="arrays"`` (state as arrays over devices) through both the dict and the array interface; the
arms must agree round for round. ``backend="mersenne"`` must still make the choices the implementation
made before the arrays existed (fingerprints recorded from it), and checkpoints must restore exactly.
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from simfed.decisions.arms import ArmSpace
from simfed.decisions.policies import POLICIES, make_policy
from simfed.decisions.policies.counter_rng import (CounterStream, beta_draws, gamma_draws, normal_draws, uniform,
                                                   uniforms)
from simfed.decisions.policies.sucb import ranks_at
from simfed.records import Arm

from ._policy_scenario import digest, observation, play

SPACE = ArmSpace()
SMALL = SPACE.grid(n_p=2, ranks=[2, 8, 32])  # 6 arms: the scenario gets well past the initial sweep

VECTORISED = [
    ("sucb", {}), ("sucb", {"play": "uniform", "discount": 1.0}), ("sucb", {"fix_r": 8}),
    ("sucb", {"fix_p": 0.1, "max_depth": 3}), ("sucb", {"discount_by": "plays"}),
    ("sucb", {"discount_by": "plays", "play": "uniform", "split_after": 1.0}),
    ("sucb", {"split_after": 2.0, "play": "uniform"}), ("sucb", {"max_depth": 0}), ("sucb", {"fix_p": 0.1, "fix_r": 4}),
    ("ucb1", {}), ("ucb1", {"arms": SMALL}), ("ucb1", {"arms": SMALL, "exploration": 0.3}),
    ("discounted-ucb", {}), ("discounted-ucb", {"arms": SMALL, "discount": 0.8}),
    ("sliding-window-ucb", {"arms": SMALL}), ("sliding-window-ucb", {"arms": SMALL, "window": 5}),
    ("exp3", {}), ("exp3", {"arms": SMALL, "gamma": 0.5}),
    ("thompson", {}), ("thompson", {"arms": SMALL, "discount": 0.9}), ("thompson", {"arms": SMALL, "prior": "gaussian"}),
    ("thompson", {"prior": "gaussian", "discount": 0.8}),
    ("random", {}), ("random", {"arms": SMALL}),
]
TIES = {"sucb", "ucb1", "discounted-ucb", "sliding-window-ucb"}  # policies whose random draws break ties


def _case_id(case):
    name, params = case
    return name + "".join(f"-{k}={'small' if k == 'arms' else v}" for k, v in params.items())


def _make(name, params, backend, seed=0):
    return make_policy(name, arm_space=SPACE, seed=seed, backend=backend, **params)


# --- the counter-based draws ---------------------------------------------------------------------
def test_counter_uniforms_python_and_numpy_agree_bit_for_bit():
    rng = np.random.default_rng(1)
    keys = rng.integers(0, 2**63, 2000, dtype=np.uint64)
    counters = rng.integers(0, 10**6, 2000)
    slots = rng.integers(0, 2**21, 2000)
    vec = uniforms(keys, counters, slots)
    assert [uniform(int(k), int(c), int(s)) for k, c, s in zip(keys, counters, slots)] == vec.tolist()
    assert ((vec >= 0.0) & (vec < 1.0)).all()


def test_counter_uniforms_look_uniform_and_independent():
    u = uniforms(np.uint64(12345), np.arange(200_000), 0)
    counts = np.histogram(u, bins=20, range=(0, 1))[0]
    # 10,000 expected per bin, sd 98: 5 sd of slack
    assert np.abs(counts - 10_000).max() < 500, counts
    v = uniforms(np.uint64(12345), np.arange(200_000), 1)  # another slot of the same device
    w = uniforms(np.uint64(12346), np.arange(200_000), 0)  # the next device's key
    for other in (v, w):
        assert abs(np.corrcoef(u, other)[0, 1]) < 0.01
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.01  # successive counters


def test_numpy_elementwise_functions_do_not_depend_on_array_position():
    """The premise of sharing the variate kernels: an element's log/exp/cos/sqrt is the same alone or in a big array."""
    x = np.random.default_rng(2).uniform(1e-9, 50.0, 10_007)
    for f in (np.log, np.exp, np.cos, np.sqrt):
        whole = f(x)
        alone = np.array([f(x[i : i + 1])[0] for i in range(0, x.size, 97)])
        assert (whole[::97] == alone).all(), f.__name__
        assert (f(x[3::5]) == whole[3::5]).all(), f.__name__


@pytest.mark.parametrize("a,b", [(1.0, 1.0), (3.0, 1.0), (1.5, 7.25), (40.0, 12.0)])
def test_beta_draws_have_the_beta_mean_and_variance(a, b):
    n = 100_000
    x = beta_draws(np.full(n, a), np.full(n, b), np.full(n, 99, dtype=np.uint64), np.arange(n), np.zeros(n, int), 1)
    mean, var = a / (a + b), a * b / ((a + b) ** 2 * (a + b + 1))
    assert abs(x.mean() - mean) < 5 * math.sqrt(var / n)
    assert abs(x.var() / var - 1) < 0.03
    assert ((x > 0) & (x < 1)).all()


def test_gamma_and_normal_draws_match_their_moments():
    n = 100_000
    for shape in (1.0, 2.5, 30.0):
        g = gamma_draws(np.full(n, shape), np.full(n, 7, dtype=np.uint64), np.arange(n), np.zeros(n, int), 1)
        assert abs(g.mean() - shape) < 5 * math.sqrt(shape / n) and abs(g.var() / shape - 1) < 0.03
    z = normal_draws(np.full(n, 5, dtype=np.uint64), np.arange(n), np.ones(n, int))
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.01
    with pytest.raises(ValueError, match="shape must be >= 1"):
        gamma_draws(np.array([0.5]), np.zeros(1, np.uint64), np.zeros(1, int), np.zeros(1, int), 1)


def test_ranks_at_is_rank_at_elementwise():
    u = np.concatenate([np.linspace(0.0, 1.0, 4001), [-0.1, 1.2]])
    for space in (SPACE, ArmSpace(r_min=1, r_max=64), ArmSpace(rank_rounding="pow2"), ArmSpace(r_min=3, r_max=48)):
        # u at which 2**x + 0.5 is (nearly) an integer: the rounding boundaries
        lo, span = math.log2(space.r_min), space.log2_span
        edges = [(math.log2(k - 0.5) - lo) / span for k in range(space.r_min + 1, space.r_max + 1)]
        grid = np.concatenate([u, edges, np.nextafter(edges, 2), np.nextafter(edges, -1)])
        assert ranks_at(space, grid).tolist() == [space.rank_at(float(v)) for v in grid]


# --- arrays == learners ----------------------------------------------------------------------------
@pytest.mark.parametrize("case", VECTORISED, ids=_case_id)
def test_arrays_choose_what_the_per_device_learners_choose(case, monkeypatch):
    name, params = case
    ties = []
    choice = CounterStream.choice

    def counting_choice(self, seq, slot=0):
        ties.append(len(seq))
        return choice(self, seq, slot)

    monkeypatch.setattr(CounterStream, "choice", counting_choice)
    for seed in (0, 7):
        ties.clear()
        reference = play(_make(name, params, "learners", seed))
        if name in TIES and params.get("max_depth") != 0 and not {"fix_p", "fix_r"} <= set(params):  # a tree that splits
            assert sum(k > 1 for k in ties) >= 10, "the scenario should exercise random tie-breaking"
        assert play(_make(name, params, "arrays", seed)) == reference
        assert play(_make(name, params, "arrays", seed), arrays=True) == reference
        assert play(_make(name, params, "arrays", seed), arrays=lambda t: t % 3 == 1) == reference


def test_arrays_trees_have_the_learners_shapes():
    learners, arrays = _make("sucb", {}, "learners"), _make("sucb", {}, "arrays")
    play(learners)
    play(arrays)
    state = arrays._arrays
    for dev, tree in learners._learners.items():
        row = arrays.register([dev])[0]
        assert state.n_nodes[row] == tree.size()
        assert state.plays[row] == tree._t
        assert state.visits[row, 0] == tree.root.visits


def test_a_devices_choices_do_not_depend_on_the_others():
    """Registering other devices first, or the same ones in another order, changes no device's choices."""
    plain = _make("sucb", {"play": "uniform"}, "arrays")
    crowded = _make("sucb", {"play": "uniform"}, "arrays")
    crowded.register([f"x{i}" for i in range(50)] + [f"d{i:02d}" for i in reversed(range(12))])
    assert play(plain) == play(crowded)


@pytest.mark.parametrize("name", ["sucb", "ucb1", "exp3", "thompson"])
def test_learners_and_arrays_draw_differently_from_mersenne(name):
    """The counter-based backends are a documented change of draws, not a copy of the Mersenne streams."""
    params = {} if name == "sucb" else {"arms": SMALL}
    assert play(_make(name, params, "arrays")) != play(_make(name, params, "mersenne"))


# --- the previous implementation is kept ------------------------------------------------------------
# Fingerprints of the scenario's histories recorded from the per-device implementation as it was before the
# arrays existed (seeds 0 and 1); backend="mersenne" must reproduce them.
BEFORE = {
    ("sucb", ()): ("e3acebc053d14647", "3446cfc20a976cbc"),
    ("sucb", (("discount", 1.0), ("play", "uniform"))): ("8946b204d212f3bd", "d7271706c57df230"),
    ("sucb", (("fix_r", 8),)): ("05fa0bd393e1c533", "e3a9d1819ec41fcb"),
    ("sucb", (("fix_p", 0.1), ("max_depth", 3))): ("7245b8d22c8fa13a", "6d833a6eb9403ec0"),
    ("sucb", (("discount_by", "plays"),)): ("0ca7e6788f472fff", "ce00952e12b98e3c"),
    ("sucb", (("play", "uniform"), ("split_after", 2.0))): ("9bfa353d50f9a401", "59683ea4179231e0"),
    ("ucb1", ()): ("39e9999e108a91d0", "97c8a2a1a8732e55"),
    ("ucb1", (("arms", "small"),)): ("11de6bc4fb3b9d1a", "f510a45940f4c6d0"),
    ("discounted-ucb", ()): ("6c75e21037c2366b", "d0ec8504f11de495"),
    ("discounted-ucb", (("arms", "small"), ("discount", 0.8))): ("1cca13e3fc217552", "261c0217f2e4b585"),
    ("sliding-window-ucb", (("arms", "small"),)): ("3a19172bb6d01b01", "2d91c84a7b10b059"),
    ("sliding-window-ucb", (("arms", "small"), ("window", 5))): ("b0c36b0947a81d05", "9c378bb6e1596b8f"),
    ("exp3", ()): ("8bd579c5692feeac", "751d47f2042276c7"),
    ("exp3", (("arms", "small"), ("gamma", 0.5))): ("b09775495317840f", "4003e3376679f329"),
    ("thompson", ()): ("c26aea6c3ebe0827", "8854c1fd48ced479"),
    ("thompson", (("arms", "small"), ("discount", 0.9))): ("21975cd1ae70a1e0", "bfd14839c3372b03"),
    ("thompson", (("arms", "small"), ("prior", "gaussian"))): ("c480b56a726d7c47", "53b1a989b94addbf"),
    ("random", ()): ("0398ae9ed7a8ca96", "0fa7eebda6f6bf90"),
    ("random", (("arms", "small"),)): ("5f8eebeb9026f918", "732c200b3d8dfd3b"),
    ("linucb", ()): ("885bdc8022101564", "fcb27afa0f03a0fc"),
    ("linucb", (("arms", "small"), ("discount", 0.9))): ("f4f65c0ea3ef61ab", "32203dc5d6dc7af2"),
    ("fixed", ()): ("7f7602bedbb5b2ef", "7f7602bedbb5b2ef"),
}


@pytest.mark.parametrize("key", list(BEFORE), ids=lambda k: k[0] + "".join(f"-{a}={b}" for a, b in k[1]))
def test_mersenne_backend_makes_the_previous_choices(key):
    name, items = key
    params = {k: (SMALL if k == "arms" else v) for k, v in items}
    if "backend" in POLICIES[name].options():
        params["backend"] = "mersenne"
    for seed, want in zip((0, 1), BEFORE[key]):
        assert digest(play(make_policy(name, arm_space=SPACE, seed=seed, **params))) == want
        if name in ("linucb", "fixed"):  # the array interface's fallback (a loop over the dict interface)
            assert digest(play(make_policy(name, arm_space=SPACE, seed=seed, **params), arrays=True)) == want


# --- checkpoints --------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["arrays", "learners", "mersenne"])
@pytest.mark.parametrize("case", [c for c in VECTORISED if c[0] in ("sucb", "ucb1", "sliding-window-ucb", "exp3",
                                                                    "thompson", "discounted-ucb")][::2],
                         ids=_case_id)
def test_checkpoints_restore_exactly(case, backend):
    name, params = case
    reference = play(_make(name, params, backend))

    def restart(t, policy):
        if t in (20, 63):  # a fresh policy from the pickled state, mid-run (one device has pending choices)
            fresh = policy.clone()
            fresh.load_state_dict(pickle.loads(pickle.dumps(policy.state_dict())))
            return fresh
        return None

    assert play(_make(name, params, backend), on_round=restart) == reference
    assert play(_make(name, params, backend), arrays=True, on_round=restart) == reference


def test_arrays_checkpoint_is_plain_data_trimmed_to_the_devices():
    policy = _make("sucb", {}, "arrays")
    play(policy, rounds=10)
    state = policy.state_dict()
    assert set(state) == {"_ids", "_arrays"} and len(state["_ids"]) == 10
    assert all(isinstance(v, np.ndarray) and v.shape[0] == 10 for v in state["_arrays"].values())
    assert state["_arrays"]["visits"].shape[1] == state["_arrays"]["n_nodes"].max()
    with pytest.raises(ValueError, match="'bogus'"):
        policy.clone().load_state_dict({**state, "_arrays": {**state["_arrays"], "bogus": np.zeros(10)}})


def test_fixed_checkpoint_restores():
    policy = make_policy("fixed", per_device={"d03": Arm(0.2, 2)})
    policy.select(0, ["d01", "d03"])
    fresh = policy.clone()
    fresh.load_state_dict(policy.state_dict())
    assert fresh.select_array(1, fresh.register(["d03", "d01", "d05"]))[1].tolist() == [2, 8, 8]


# --- the array interface's checks ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sucb", "ucb1", "fixed", "linucb"])
def test_array_interface_errors_name_the_device_or_column(name):
    policy = make_policy(name, arm_space=SPACE, seed=0)
    pos = policy.register(["a", "b", "c"])
    p, r = policy.select_array(0, pos[:2])
    assert p.dtype == np.float64 and r.dtype == np.int64 and p.shape == r.shape == (2,)
    with pytest.raises(ValueError, match="'c'"):  # never selected this round
        policy.update_array(0, pos, {"ok": np.ones(3, bool)}, np.full(3, 0.5))
    with pytest.raises(ValueError, match="'zz'"):  # never seen at all
        policy.update_array(0, ["a", "zz"], {"ok": np.ones(2, bool)}, np.full(2, 0.5))
    with pytest.raises(ValueError, match="'completion'"):
        policy.update_array(0, pos[:2], {"ok": np.ones(2, bool), "completion": np.ones(2)}, np.full(2, 0.5))
    with pytest.raises(ValueError, match="'ok' has shape"):
        policy.update_array(0, pos[:2], {"ok": np.ones(3, bool)}, np.full(2, 0.5))
    with pytest.raises(ValueError, match="position 7 is not registered"):
        policy.select_array(1, np.array([0, 7]))
    if name != "fixed":
        with pytest.raises(ValueError, match="'b'"):  # an ok device without a reward
            policy.update_array(0, pos[:2], {"ok": np.ones(2, bool)}, np.array([0.5, np.nan]))
        with pytest.raises(ValueError, match="'a'"):
            policy.select_array(1, np.array([0, 0]))
    # a failed device may come without a reward (it counts 0); the outcome may be given instead of ok
    policy.update_array(0, pos[:2], {"outcome": np.array(["ok", "oom"], dtype=object)}, np.array([0.5, np.nan]))


def test_dict_and_array_interfaces_mix_on_the_arrays_backend():
    policy = _make("ucb1", {"arms": SMALL}, "arrays")
    arms = policy.select(0, ["a", "b"])
    policy.update_array(0, ["b", "a"], {"ok": np.array([True, False])}, np.array([0.7, np.nan]))
    p, r = policy.select_array(1, ["a", "b"])
    policy.update(1, [observation(1, "a", Arm(p[0], int(r[0])), True)], {"a": 0.2})
    assert set(arms) == {"a", "b"} and policy.vectorised and not make_policy("linucb").vectorised
