"""UCB1, EXP3 and Thompson sampling reproduce river.bandit's choices on fixed reward streams and seeds.

The single-device learners follow river's conventions exactly (running mean, untried arms first,
ties broken by ``random.Random(seed).choice``; EXP3's one ``random()`` against cumulative
probabilities; Thompson's per-arm samplers seeded from the policy RNG in arm order). Thompson's
streams are 0/1 rewards: for fractional rewards simfed draws a Bernoulli success (Agrawal & Goyal's
trick) while river counts any non-zero reward as a success -- an intended difference.
"""

import random

import pytest

river_bandit = pytest.importorskip("river.bandit")
from river import proba  # noqa: E402

from simfed.decisions.policies.exp3 import EXP3Learner  # noqa: E402
from simfed.decisions.policies.thompson import BetaThompsonLearner  # noqa: E402
from simfed.decisions.policies.ucb1 import UCB1Learner  # noqa: E402

K = 6
STEPS = 300


def _reward_table(seed, binary):
    rng = random.Random(seed)
    means = [rng.uniform(0.1, 0.9) for _ in range(K)]
    stream = random.Random(seed + 1000)
    # reward of arm a at step t is fixed in advance, whatever is played
    return [[(1.0 if stream.random() < m else 0.0) if binary else min(1.0, max(0.0, stream.gauss(m, 0.2)))
             for m in means] for _ in range(STEPS)]


def _compare(ours, theirs, table):
    arms = list(range(K))
    ours_choices, river_choices = [], []
    for t in range(STEPS):
        a = ours.choose()
        b = theirs.pull(arms)
        ours_choices.append(a)
        river_choices.append(b)
        ours.learn(a, table[t][a])
        theirs.update(b, table[t][b])
    return ours_choices, river_choices


@pytest.mark.parametrize("seed", [0, 1, 42])
def test_ucb1_matches_river_ucb(seed):
    table = _reward_table(seed, binary=False)
    ours, theirs = _compare(UCB1Learner(K, seed), river_bandit.UCB(delta=1, seed=seed), table)
    assert ours == theirs
    assert len(set(ours[K:])) > 1  # the stream exercised more than the initial sweep


@pytest.mark.parametrize("seed,gamma", [(0, 0.1), (3, 0.5), (9, 0.9)])
def test_exp3_matches_river_exp3(seed, gamma):
    table = _reward_table(seed, binary=False)
    ours, theirs = _compare(EXP3Learner(K, seed, gamma), river_bandit.Exp3(gamma=gamma, seed=seed), table)
    assert ours == theirs


@pytest.mark.parametrize("seed", [0, 5, 101])
def test_beta_thompson_matches_river_on_binary_rewards(seed):
    table = _reward_table(seed, binary=True)
    ours, theirs = _compare(BetaThompsonLearner(K, seed), river_bandit.ThompsonSampling(reward_obj=proba.Beta(), seed=seed), table)
    assert ours == theirs
