"""PlanBatch and ObservationBatch: columns that read as lists of records (simfed/records.py)."""

import math
import pickle

import numpy as np
import pytest

from simfed.records import Arm, Observation, ObservationBatch, Outcome, Plan, PlanBatch

PLANS = [Plan(3, "a", Arm(0.1, 4), 0.0, 0.1, 10, 5), Plan(3, "b", Arm(0.0, 8), 0.2, 0.2, 10, 5, base_download=True)]


def test_a_plan_batch_reads_as_its_plans_and_survives_pickling():
    batch = PlanBatch.of(PLANS)
    assert batch == PLANS and list(batch) == PLANS and batch[1] == PLANS[1] and len(batch) == 2
    assert batch.r.tolist() == [4, 8] and batch.base_download.tolist() == [False, True]
    assert pickle.loads(pickle.dumps(batch)) == PLANS
    assert batch.take(np.array([True, False])) == PLANS[:1]
    assert batch.take(np.array([1, 0])) == PLANS[::-1]
    capped = batch.with_columns(r=np.array([4, 6]))
    assert [p.rank for p in capped] == [4, 6] and [p.rank for p in batch] == [4, 8]
    # scalars are spread over every device
    assert PlanBatch(0, ["x", "y"], 0.0, 2, 0.0, 0.0, 1, 1).r.tolist() == [2, 2]


@pytest.mark.parametrize("p, r, match", [
    ([0.1, -0.1], [4, 4], "device 'b': p must be a finite number >= 0"),
    ([0.1, math.nan], [4, 4], "device 'b': p must be"),
    ([0.1, 0.1], [4, 0], "device 'b': r must be a positive integer rank"),
    ([0.1, 0.1], [4.0, 2.5], "device 'b': r must be an integer rank"),
    ([0.1], [4, 4], r"PlanBatch.p: shape \(1,\), expected \(2,\)"),
])
def test_a_plan_batch_refuses_what_an_arm_refuses(p, r, match):
    with pytest.raises(ValueError, match=match):
        PlanBatch(0, ["a", "b"], p, r, 0.0, 0.0, 1, 1)


def test_an_observation_batch_reads_as_its_observations():
    obs = [Observation(2, "a", Arm(0.1, 4), Outcome.OK, 10.0, 12.0, 0.0, 0.1, 0.5, 3.0, 2.5, 0.7, 3.0),
           Observation(2, "b", Arm(0.0, 8), Outcome.LATE, math.nan, 12.0, 0.2, 0.2, 0.5)]
    batch = ObservationBatch.of(obs)
    assert batch[0] == obs[0] and batch[1].outcome is Outcome.LATE and batch[1].arm == Arm(0.0, 8)
    assert batch.ok.tolist() == [True, False] and len(batch) == 2
    cols = batch.columns()
    assert cols["outcome"].tolist() == ["ok", "late"] and cols["ok"].tolist() == [True, False]
    assert math.isnan(batch.loss_before[1]) and batch.update_norm[0] == 0.7
    with pytest.raises(ValueError, match="unknown column"):
        ObservationBatch(0, ["a"], 0.0, 2, 0, completion=1.0)
