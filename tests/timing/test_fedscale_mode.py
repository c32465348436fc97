"""FedScale mode: the published worked example, and the engine configuration agreeing with the
standalone reference rule on a synthetic population."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _helpers import fixed_loop  # noqa: E402
from fedscale_reference import client_duration_s, fedscale_rounds  # noqa: E402

from simfed.records import Arm, Outcome  # noqa: E402
from simfed.timing.engine import Engine  # noqa: E402
from simfed.timing.fedscale import FedScaleCost, fedscale_config, fedscale_engine, fedscale_population  # noqa: E402
from simfed.timing.traces import TraceError  # noqa: E402


def test_worked_example_from_fedscale_trace() -> None:
    """reference/simulators.md §2.1: computation 162 ms, 5648.1 kbit/s, batch 20 x 5 steps -> 48.6 s
    compute; ResNet-18 (~365,600 kbit) both ways -> ~130 s communication."""
    d = client_duration_s(162.0, 5648.109619499134, 20, 5, 365_600.0)
    assert d == pytest.approx(48.6 + 2 * 365_600.0 / 5648.109619499134)
    assert 2 * 365_600.0 / 5648.109619499134 == pytest.approx(129.5, abs=0.1)


def _synthetic(n: int, seed: int):
    rng = np.random.default_rng(seed)
    caps = [{"computation": float(rng.lognormal(4.5, 0.7)), "communication": float(rng.lognormal(8.5, 0.8))} for _ in range(n)]
    behaviours = []
    for _ in range(n):
        if rng.random() < 0.2:
            behaviours.append(None)
            continue
        period = 6 * 3600.0
        cuts = np.sort(rng.uniform(0, period, 8))
        behaviours.append({"active": cuts[0::2].tolist(), "inactive": cuts[1::2].tolist(), "finish_time": period})
    return caps, behaviours


@pytest.mark.parametrize("contended", [True, False], ids=["simpy", "vectorised"])
def test_engine_configuration_agrees_with_reference(contended: bool) -> None:
    caps, behaviours = _synthetic(300, seed=4)
    K, rounds = 20, 15
    ref = fedscale_rounds(caps, behaviours, K, rounds, batch_size=20, local_steps=5, model_kbit=20_000.0, seed=6)
    driver = fixed_loop(Arm(0.0, 1), 0.0, 1, 1)
    if contended:  # forced onto the SimPy path (nothing is shared: it must agree)
        eng = Engine(fedscale_population(caps, behaviours), FedScaleCost(20, 5, 20_000.0), fedscale_config(K, seed=6),
                     driver, contended=True)
    else:
        eng = fedscale_engine(caps, behaviours, K, 20, 5, 20_000.0, driver, seed=6)
    res = eng.run(rounds)
    assert sum(len(r.dropped) for r in ref) > 0 and sum(len(r.stragglers) for r in ref) > 0  # both rules exercised
    for rr, rt in zip(ref, res.rounds):
        mine = [t for t in res.timings if t.round == rr.round]
        pos = {t.device_id: int(t.device_id[len("client") :]) for t in mine}
        assert tuple(pos[t.device_id] for t in mine) == rr.sampled
        assert tuple(pos[t.device_id] for t in mine if t.outcome is Outcome.OK) == rr.ran
        assert tuple(pos[t.device_id] for t in mine if t.outcome is Outcome.OFFLINE) == rr.dropped
        assert tuple(pos[t.device_id] for t in mine if t.outcome is Outcome.STRAGGLER) == rr.stragglers
        assert rt.select_s == pytest.approx(rr.clock_s, rel=1e-9)
        assert rt.end_s - rt.select_s == pytest.approx(rr.duration_s, rel=1e-9)


def test_bad_fedscale_entries_name_the_client() -> None:
    with pytest.raises(TraceError, match="FedScale client 1: capacity entry lacks 'communication'"):
        fedscale_population([{"computation": 1.0, "communication": 2.0}, {"computation": 1.0}])
    with pytest.raises(TraceError, match="FedScale client 0"):
        fedscale_population([{"computation": -1.0, "communication": 2.0}])
