import math

import pytest

from simfed.decisions.reward import RewardWeights, RoundContext, reward, reward_terms, round_rewards
from simfed.records import Arm, Observation, Outcome

NAN = float("nan")


def obs(dev="d", p=0.1, r=8, t=10.0, tbar=10.0, sb=0.0, sa=None, s_star=0.5, lb=NAN, la=NAN, norm=NAN, outcome=Outcome.OK):
    return Observation(round=0, device_id=dev, arm=Arm(p, r), outcome=outcome, completion_s=t,
                       round_mean_completion_s=tbar, sparsity_before=sb,
                       sparsity_after=sb + p if sa is None else sa, s_star=s_star,
                       loss_before=lb, loss_after=la, update_norm=norm)


@pytest.mark.parametrize("outcome", [Outcome.OOM, Outcome.OFFLINE, Outcome.LATE, Outcome.STRAGGLER, Outcome.UNAVAILABLE])
def test_failures_get_zero(outcome):
    assert reward(obs(outcome=outcome, t=NAN)) == 0.0


def test_timing_only_reward_is_progress_times_capacity_times_speed():
    w = RewardWeights()
    o = obs(p=0.1, r=8, t=20.0, tbar=10.0)
    terms = reward_terms(o, w)
    assert terms.loss == 1.0 and terms.importance == 1.0  # neutral without losses and norms
    assert terms.prune == pytest.approx(0.5 + 0.5 * 0.1 / 0.5)
    assert terms.rank == pytest.approx((8 / 32) ** w.rank)
    assert terms.time == pytest.approx(0.5**2)
    assert terms.total == pytest.approx(terms.prune * terms.rank * terms.time)
    assert 0.0 < terms.total <= 1.0


def test_time_factor_capped_for_fast_devices_and_uncapped_on_request():
    fast = obs(t=5.0, tbar=10.0)
    assert reward_terms(fast).time == 1.0
    assert reward_terms(fast, RewardWeights(time_cap=math.inf)).time == pytest.approx(4.0)


def test_progress_is_full_once_target_reached():
    assert reward_terms(obs(sb=0.5, sa=0.5, p=0.2)).prune == 1.0
    assert reward_terms(obs(sb=0.4, sa=0.5, p=0.2)).prune == 1.0  # covered all the remaining way


def test_round_normalises_loss_drop_and_importance():
    round_obs = [obs("a", lb=2.0, la=1.5, norm=3.0), obs("b", lb=2.0, la=1.75, norm=1.0),
                 obs("c", lb=2.0, la=2.2, norm=2.0), obs("x", outcome=Outcome.OOM, t=NAN)]
    ctx = RoundContext.from_observations(round_obs)
    assert ctx.max_loss_drop == pytest.approx(0.25) and ctx.mean_update_norm == pytest.approx(2.0)
    rewards = round_rewards(round_obs)
    assert rewards["x"] == 0.0
    assert rewards["a"] > rewards["b"] > rewards["c"] > 0
    ta = reward_terms(round_obs[0], context=ctx)
    assert ta.loss == 1.0 and ta.importance == pytest.approx(0.7 + 0.3 * 3 / 5)


def test_straggler_prefers_smaller_rank_fast_device_larger():
    """With T_i = k_i * (a + b r) (rank-linear cost), argmax over r differs by speed (docs/decisions.md)."""
    ranks = [2, 4, 8, 16, 32]
    tbar = 10.0

    def best_rank(k):
        return max(ranks, key=lambda r: reward(obs(r=r, t=k * (6.0 + 0.25 * r), tbar=tbar)))

    assert best_rank(2.0) < best_rank(0.5)
    assert best_rank(0.5) == 32
    # the plain Eq. 9 ratio makes the choice independent of speed: the reason for the cap
    plain = RewardWeights(time_cap=math.inf)
    choices = {k: max(ranks, key=lambda r: reward(obs(r=r, t=k * (6.0 + 0.25 * r), tbar=tbar), plain)) for k in (0.5, 2.0)}
    assert choices[0.5] == choices[2.0]


def test_bad_weights_name_the_field():
    with pytest.raises(ValueError, match="prune"):
        RewardWeights(prune=2.0)
    with pytest.raises(ValueError, match="bogus"):
        RewardWeights.from_dict({"bogus": 1})


def test_time_reference_mean_quantile_and_others_max():
    times = {"a": 10.0, "b": 20.0, "c": 30.0, "d": 40.0}
    round_obs = [obs(k, t=v, tbar=25.0) for k, v in times.items()]
    ctx = RoundContext.from_observations(round_obs)
    assert ctx.completion_s == (10.0, 20.0, 30.0, 40.0)
    assert ctx.time_reference_s(round_obs[3], RewardWeights()) == 25.0
    assert ctx.time_reference_s(round_obs[3], RewardWeights(time_reference="quantile", time_quantile=0.5)) == 25.0
    assert ctx.time_reference_s(round_obs[0], RewardWeights(time_reference="quantile", time_quantile=0.9)) == pytest.approx(37.0)
    om = RewardWeights(time_reference="others-max")
    assert ctx.time_reference_s(round_obs[3], om) == 30.0  # the straggler is charged against the runner-up
    assert ctx.time_reference_s(round_obs[1], om) == 40.0
    r = {k: t.time for k, t in __import__("simfed.decisions.reward", fromlist=["x"]).round_reward_terms(round_obs, om).items()}
    assert r["a"] == r["c"] == 1.0 and r["d"] == pytest.approx((30 / 40) ** 2)
    with pytest.raises(ValueError, match="time_reference"):
        RewardWeights(time_reference="median")
