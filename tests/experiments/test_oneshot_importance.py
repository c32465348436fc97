"""A one-shot method's importance criterion reaches the pruning step (it used to be hard-coded to Taylor)."""

from __future__ import annotations

import numpy as np
import pytest

from simfed import config as C
from simfed.decisions.arms import ArmSpace
from simfed.decisions.methods import build_method
from simfed.decisions.methods.prune_then_tune import PruneThenTune
from simfed.experiments.learner import FullLearner
from simfed.experiments.runner import build_training


class MagnitudeThenTune(PruneThenTune):
    name = "magnitude-then-tune"
    importance = "magnitude"


@pytest.mark.slow
def test_oneshot_masks_follow_the_method_importance(tmp_path):
    cfg = C.from_dict({"method": "prune-then-tune", "traces": {"generator": "fedspine-testbed", "devices": 3},
                       "train": {"local_iters": 2, "tau": 1}})
    devices = ["d0", "d1", "d2"]

    def kept_after_oneshot(method_cls):
        method = build_method(method_cls, ArmSpace(), devices, {d: "tx2" for d in devices}, 0, {"rank": 8, "s_star": 0.5})
        trainer, aggregator = build_training(cfg, method, devices, {})
        learner = FullLearner(trainer, aggregator, devices)
        method.oneshot(learner, devices, 0.5)
        return {d: learner.kept(d) for d in devices}

    taylor, magnitude = kept_after_oneshot(PruneThenTune), kept_after_oneshot(MagnitudeThenTune)
    assert PruneThenTune.importance == "taylor"
    for d in devices:
        assert taylor[d].structure() == magnitude[d].structure()  # the same counts (structure_at(0.5))
    # but different heads/channels chosen: the criterion reached the pruning step
    differs = [not all(np.array_equal(a, b) for a, b in zip(taylor[d].channels, magnitude[d].channels)) for d in devices]
    assert any(differs)
