"""One contract for every registered policy (river's style: _test_params() x one parametrised test)."""

import math

import pytest

from simfed.decisions.arms import ArmSpace
from simfed.decisions.policies import POLICIES, make_policy
from simfed.records import Arm, Observation, Outcome

DEVICES = ["d0", "d1", "d2", "d3"]
SPACE = ArmSpace()


def _cases():
    for name, cls in POLICIES.items():
        for i, params in enumerate(cls._test_params()):
            yield pytest.param(name, params, id=f"{name}-{i}")


def _obs(round_, dev, arm, outcome=Outcome.OK):
    ok = outcome is Outcome.OK
    return Observation(round=round_, device_id=dev, arm=arm, outcome=outcome,
                       completion_s=1.0 if ok else math.nan, round_mean_completion_s=1.0,
                       sparsity_before=0.0, sparsity_after=min(arm.p, 0.5) if ok else 0.0, s_star=0.5)


def _play(name, params, seed, rounds=12):
    policy = make_policy(name, arm_space=SPACE, seed=seed, **params)
    history = []
    for t in range(rounds):
        arms = policy.select(t, DEVICES)
        history.append(arms)
        obs, rewards = [], {}
        for k, dev in enumerate(DEVICES):
            failed = (t + k) % 5 == 0
            obs.append(_obs(t, dev, arms[dev], Outcome.OOM if failed else Outcome.OK))
            rewards[dev] = 0.0 if failed else (0.2 + 0.6 * arms[dev].p / SPACE.p_max) * (1 - arms[dev].r / 64)
        policy.update(t, obs, rewards)
    return history


@pytest.mark.parametrize("name,params", list(_cases()))
def test_valid_arms_every_round(name, params):
    for arms in _play(name, params, seed=3):
        assert set(arms) == set(DEVICES)
        for arm in arms.values():
            assert isinstance(arm, Arm)
            assert SPACE.contains(arm), arm
            assert isinstance(arm.r, int)


@pytest.mark.parametrize("name,params", list(_cases()))
def test_deterministic_under_seed(name, params):
    assert _play(name, params, seed=7) == _play(name, params, seed=7)


@pytest.mark.parametrize("name,params", list(_cases()))
def test_failures_without_reward_and_unknown_devices(name, params):
    policy = make_policy(name, arm_space=SPACE, seed=0, **params)
    arms = policy.select(0, DEVICES[:2])
    # a failed device may come without a reward: it counts as 0
    policy.update(0, [_obs(0, "d0", arms["d0"], Outcome.OFFLINE), _obs(0, "d1", arms["d1"])], {"d1": 0.5})
    arms = policy.select(1, DEVICES[:2])
    with pytest.raises(ValueError, match="d3"):
        policy.update(1, [_obs(1, "d3", Arm(0.0, 2))], {"d3": 0.5})


@pytest.mark.parametrize("name,params", list(_cases()))
def test_clone_is_fresh_and_equal(name, params):
    policy = make_policy(name, arm_space=SPACE, seed=5, **params)
    first = policy.select(0, DEVICES)
    assert policy.clone().select(0, DEVICES) == first


def test_learning_policies_differ_across_seeds():
    # not a contract for fixed/oracle (deterministic by design); for the random and learning ones the seed matters
    for name in ("random", "exp3", "thompson", "sucb"):
        params = {"play": "uniform"} if name == "sucb" else {}
        assert _play(name, params, 1, 6) != _play(name, params, 2, 6), name


def test_unknown_policy_and_bad_argument_are_clear():
    with pytest.raises(ValueError, match="unknown policy 'nope'"):
        make_policy("nope")
    with pytest.raises(ValueError, match="sucb"):
        make_policy("sucb", rho=1.5)
    with pytest.raises(ValueError, match="ucb1"):
        make_policy("ucb1", bogus=1)
