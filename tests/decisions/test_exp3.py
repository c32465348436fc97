import math

import pytest

from simfed.decisions.policies.exp3 import EXP3Learner


@pytest.mark.parametrize("gamma", [0.05, 0.3, 1.0])
def test_play_probabilities_follow_the_update_rule(gamma):
    k = 5
    lrn = EXP3Learner(k, seed=11, gamma=gamma)
    weights = [1.0] * k
    rewards = [0.9, 0.1, 0.5, 0.0, 1.0, 0.7, 0.3]
    for x in rewards * 3:
        expected = [(1 - gamma) * w / sum(weights) + gamma / k for w in weights]
        assert lrn.probabilities() == pytest.approx(expected, rel=1e-12)
        a = lrn.choose()
        weights[a] *= math.exp(gamma * (x / expected[a]) / k)
        lrn.learn(a, x)
    assert sum(lrn.probabilities()) == pytest.approx(1.0)


def test_long_runs_do_not_overflow():
    lrn = EXP3Learner(3, seed=0, gamma=0.5)
    for _ in range(20000):
        a = lrn.choose()
        lrn.learn(a, 1.0 if a == 0 else 0.0)
    p = lrn.probabilities()
    assert all(math.isfinite(x) for x in p)
    assert p[0] == pytest.approx(1 - 0.5 + 0.5 / 3)
