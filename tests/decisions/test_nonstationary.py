"""Sliding-window and discounted UCB recover after an abrupt change faster than UCB1.

Recovery time: plays after the change until the new best arm is first the most played arm of a
25-play window (D-UCB, with Garivier & Moulines' constants, keeps exploring the other two arms a lot). UCB1 keeps trusting ~1000 plays of the old best arm, whose mean falls below the
new best arm's only after hundreds more plays; the others forget them within about ``window``
(50) or 1/(1 − γ) (20) plays.
"""

import random

from simfed.decisions.policies.discounted_ucb import DiscountedUCBLearner
from simfed.decisions.policies.sliding_window_ucb import SlidingWindowUCBLearner
from simfed.decisions.policies.ucb1 import UCB1Learner

BEFORE = [0.8, 0.6, 0.3]
AFTER = [0.4, 0.6, 0.3]
CHANGE, AFTER_STEPS, WINDOW = 1500, 600, 25


def _recovery_steps(learner, seed):
    rng = random.Random(seed)
    recent = []
    for t in range(CHANGE + AFTER_STEPS):
        means = BEFORE if t < CHANGE else AFTER
        a = learner.choose()
        learner.learn(a, min(1.0, max(0.0, rng.gauss(means[a], 0.05))))
        if t >= CHANGE:
            recent = (recent + [a])[-WINDOW:]
            if len(recent) == WINDOW and max(range(3), key=recent.count) == 1:
                return t - CHANGE
    return AFTER_STEPS


def test_windowed_and_discounted_ucb_recover_faster_than_ucb1():
    for seed in range(3):
        ucb1 = _recovery_steps(UCB1Learner(3, seed), seed)
        sw = _recovery_steps(SlidingWindowUCBLearner(3, seed, window=50), seed)
        disc = _recovery_steps(DiscountedUCBLearner(3, seed, discount=0.95), seed)
        assert sw < 0.5 * ucb1, (seed, sw, ucb1)
        assert disc < 0.5 * ucb1, (seed, disc, ucb1)


def test_sliding_window_forgets_exactly():
    lrn = SlidingWindowUCBLearner(2, seed=0, window=3)
    for a, x in [(0, 1.0), (0, 1.0), (1, 0.0), (1, 0.0)]:
        lrn.learn(a, x)
    # the window holds (0, 1.0), (1, 0.0), (1, 0.0)
    assert lrn._counts == [1, 2]
    assert lrn._sums == [1.0, 0.0]
