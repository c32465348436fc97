"""The SimPy engine on hand-sized devices: exact event logs with hand-computed times, every outcome,
transfer contention, determinism and errors.

Devices (plan cost: 1000 FLOPs, 20 B down, 10 B up, 100 B memory unless said otherwise):
- A: 100 FLOP/s, 10 B/s down, 5 B/s up, latency 1 s: download 0+1+2 = 3, compute 3+10 = 13,
  upload 13+1+2 = 16.
- B: 50 FLOP/s until t=10 then 200 FLOP/s, 20 B/s down, 10 B/s up, latency 0.5: download
  0.5+1 = 1.5, compute 1.5 -> 10 does 425 FLOPs, the other 575 take 2.875 s -> 12.875, upload
  12.875+0.5+1 = 14.375.
- C: online [5, 30) every 100 s, 100 FLOP/s, 10 B/s both ways, no latency: online 5, download 7,
  compute 17, upload 18.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _helpers import ROUND_CONFIG_IDS, TableCost, device, fixed_loop, random_population, round_configs, round_rows, timing_rows  # noqa: E402

from simfed.records import Arm, DeviceTiming, Event, Outcome, Plan  # noqa: E402
from simfed.timing.cost import PlanCost  # noqa: E402
from simfed.timing.engine import Engine, EngineConfig, EngineError, waiting_s  # noqa: E402
from simfed.timing.traces import Availability, Population  # noqa: E402

COST = TableCost(PlanCost(flops=1000.0, down_bytes=20.0, up_bytes=10.0, memory_bytes=100.0))
NAN = float("nan")


def _a():
    return device("A")


def _b():
    return device("B", compute=(50.0, 200.0), compute_times=(0.0, 10.0), down=20.0, up=10.0, latency=0.5)


def _c(avail=None):
    return device("C", down=10.0, up=10.0, latency=0.0, avail=avail or Availability.make([5.0], [30.0], 100.0))


def _run(devs, config=EngineConfig(), rounds=1, cost=COST, driver=None):
    driver = driver or fixed_loop(Arm(0.1, 4), s_star=0.5, local_iters=10, tau=5)
    return Engine(Population(tuple(devs)), cost, config, driver).run(rounds)


def _log(res, round_=None):
    return [(e.time_s, e.device_id, e.kind) for e in res.events if round_ is None or e.round == round_]


def test_exact_event_log_all_finish() -> None:
    """Every phase of every device at its hand-computed time, in canonical order."""
    res = _run([_a(), _b(), _c()])
    assert _log(res) == [
        (0.0, "", "round_start"),
        (0.0, "A", "select"),
        (0.0, "B", "select"),
        (0.0, "C", "select"),
        (0.0, "A", "online"),
        (0.0, "B", "online"),
        (1.5, "B", "download_end"),
        (3.0, "A", "download_end"),
        (5.0, "C", "online"),
        (7.0, "C", "download_end"),
        (12.875, "B", "compute_end"),
        (13.0, "A", "compute_end"),
        (14.375, "B", "upload_end"),
        (16.0, "A", "upload_end"),
        (17.0, "C", "compute_end"),
        (18.0, "C", "upload_end"),
        (18.0, "", "round_end"),
    ]
    assert res.events[1] == Event(0.0, 0, "A", "select", "p=0.1 r=4")
    a, b, c = res.timings
    assert a == DeviceTiming(0, "A", Outcome.OK, 0.0, 0.0, 3.0, 13.0, 16.0, 16.0, 1000.0, 20.0, 10.0, 100.0)
    assert (b.download_end_s, b.compute_end_s, b.end_s) == (1.5, 12.875, 14.375)
    assert (c.ready_s, c.end_s, c.completion_s) == (5.0, 18.0, 18.0)
    (rt,) = res.rounds
    assert (rt.start_s, rt.end_s, rt.reason, rt.n_ok) == (0.0, 18.0, "all", 3)
    assert [waiting_s(t, rt.end_s) for t in res.timings] == [2.0, 3.625, 0.0]
    assert rt.mean_waiting_s == pytest.approx(5.625 / 3)


def test_rounds_chain_and_sparsity_advances() -> None:
    """Round 1 starts when round 0 ends; the driver's plans follow next_sparsity on OK devices."""
    plans_seen: list[list[Plan]] = []

    driver = fixed_loop(Arm(0.25, 4), s_star=0.5, local_iters=10, tau=5)
    plans = driver.plans

    def spy(round, now_s, device_ids):
        out = plans(round, now_s, device_ids)
        plans_seen.append(out)
        return out

    driver.plans = spy
    res = _run([_a(), _b()], rounds=3, driver=driver)
    assert [r.start_s for r in res.rounds] == [0.0, 16.0, 32.0]
    # A's second round starts at 16: 16+1+2 = 19, compute 29, upload 29+1+2 = 32
    assert res.rounds[1].end_s == 32.0
    assert [(p.sparsity_before, p.sparsity_after) for p in (ps[0] for ps in plans_seen)] == [(0.0, 0.25), (0.25, 0.5), (0.5, 0.5)]


def test_deadline_makes_late_and_unavailable() -> None:
    """Deadline 15: B finished (14.375), A is late mid-upload, C (online only from 20) never came online."""
    res = _run([_a(), _b(), _c(Availability.make([20.0], [30.0], 100.0))], EngineConfig(deadline_s=15.0))
    a, b, c = res.timings
    assert b.outcome is Outcome.OK
    assert a.outcome is Outcome.LATE and (a.compute_end_s, a.end_s) == (13.0, 15.0) and math.isnan(a.upload_end_s)
    assert c.outcome is Outcome.UNAVAILABLE and math.isnan(c.ready_s) and c.end_s == 15.0
    assert _log(res)[-3:] == [(15.0, "A", "late"), (15.0, "C", "unavailable"), (15.0, "", "round_end")]
    assert res.rounds[0].reason == "deadline" and res.rounds[0].n_late == 1 and res.rounds[0].n_unavailable == 1


def test_finishing_exactly_at_the_deadline_is_on_time() -> None:
    res = _run([_a(), _b()], EngineConfig(deadline_s=16.0))
    assert [t.outcome for t in res.timings] == [Outcome.OK, Outcome.OK]
    assert res.rounds[0].reason == "all"


def test_offline_mid_round_loses_work() -> None:
    """C goes offline at 17.5, after its compute (17) but before its upload ends (18)."""
    res = _run([_a(), _c(Availability.make([5.0], [17.5], 100.0))])
    c = res.timings[1]
    assert c.outcome is Outcome.OFFLINE and c.end_s == 17.5 and c.compute_end_s == 17.0 and math.isnan(c.upload_end_s)
    assert (17.5, "C", "offline") in _log(res)
    assert res.rounds[0].end_s == 17.5  # A ends at 16, C's drop at 17.5 is the last thing the server waits for


def test_offline_during_download() -> None:
    res = _run([_c(Availability.make([5.0], [6.0], 100.0))])
    (c,) = res.timings
    assert c.outcome is Outcome.OFFLINE and c.end_s == 6.0 and math.isnan(c.download_end_s)


def test_oom_after_download() -> None:
    res = _run([_a(), device("S", ram=50.0)])
    s = res.timings[1]
    assert s.outcome is Outcome.OOM and s.end_s == 3.0 and s.download_end_s == 3.0 and math.isnan(s.compute_end_s)
    assert (3.0, "S", "oom") in _log(res)
    assert res.rounds[0].n_oom == 1 and res.rounds[0].n_ok == 1


def test_overcommit_closes_at_kth_finish_and_makes_stragglers() -> None:
    """K=2, over-commitment 1.5: 3 selected; C' (always on: 2, 12, 13) and B finish; A is a straggler."""
    c_always = device("C", down=10.0, up=10.0, latency=0.0)
    res = _run([_a(), _b(), c_always], EngineConfig(participants=2, overcommit=1.5))
    a, b, c = res.timings
    assert (b.outcome, c.outcome, a.outcome) == (Outcome.OK, Outcome.OK, Outcome.STRAGGLER)
    assert res.rounds[0].end_s == 14.375 and res.rounds[0].reason == "quota"
    assert a.end_s == 14.375 and a.compute_end_s == 13.0 and math.isnan(a.upload_end_s)
    assert _log(res)[-2:] == [(14.375, "A", "straggler"), (14.375, "", "round_end")]


def test_overcommit_tie_goes_to_population_order() -> None:
    """Two identical devices finish at the same instant; with K=1 the first in the population is OK."""
    res = _run([device("X"), device("Y")], EngineConfig(participants=1, overcommit=2.0))
    x, y = res.timings
    assert (x.outcome, y.outcome) == (Outcome.OK, Outcome.STRAGGLER)
    assert x.end_s == 16.0 and y.end_s == 16.0 and y.upload_end_s == 16.0


def test_participants_are_sampled_among_online_devices_and_wait_when_none() -> None:
    """C is offline at 0; with K=1 only online devices can be chosen. If nobody is online the
    selection waits for the first device to come online."""
    res = _run([_a(), _c()], EngineConfig(participants=1, seed=3), rounds=1)
    assert [t.device_id for t in res.timings] == ["A"]
    res = _run([_c()], EngineConfig(participants=1), rounds=1)
    (c,) = res.timings
    assert (res.rounds[0].start_s, res.rounds[0].select_s, c.start_s, c.end_s) == (0.0, 5.0, 5.0, 18.0)


def test_transfer_slots_queue_transfers() -> None:
    """One server slot: B's download waits for A's (0..3): 3+0.5+1 = 4.5; B computes to 13.625;
    A uploads 13..16; B's upload waits for the slot until 16: 16+0.5+1 = 17.5."""
    res = _run([_a(), _b()], EngineConfig(max_concurrent_transfers=1))
    a, b = res.timings
    assert (a.download_end_s, a.compute_end_s, a.upload_end_s) == (3.0, 13.0, 16.0)
    assert (b.download_end_s, b.compute_end_s, b.upload_end_s) == (4.5, 13.625, 17.5)
    assert res.rounds[0].end_s == 17.5
    # with two slots nothing waits: same as no contention
    free = _run([_a(), _b()], EngineConfig(max_concurrent_transfers=2))
    assert timing_rows(free.timings) == timing_rows(_run([_a(), _b()]).timings)


def test_offline_while_queued_for_a_slot() -> None:
    """C2 is online [0, 2): A holds the only slot until 3, so C2 drops at 2 while waiting."""
    c2 = device("C2", down=10.0, up=10.0, latency=0.0, avail=Availability.make([0.0], [2.0], 100.0))
    res = _run([_a(), c2], EngineConfig(max_concurrent_transfers=1))
    assert res.timings[1].outcome is Outcome.OFFLINE and res.timings[1].end_s == 2.0
    assert res.timings[0].outcome is Outcome.OK


def test_deterministic_and_seed_matters() -> None:
    pop = random_population(30, seed=5)
    cfg = EngineConfig(participants=8, overcommit=1.3, deadline_s=200.0, seed=11)

    def go(c):
        return Engine(pop, COST_RANDOM, c, fixed_loop(Arm(0.1, 8), 0.5, 20, 10)).run(4)

    a, b = go(cfg), go(cfg)
    assert a.events == b.events and timing_rows(a.timings) == timing_rows(b.timings) and round_rows(a.rounds) == round_rows(b.rounds)
    other = go(EngineConfig(participants=8, overcommit=1.3, deadline_s=200.0, seed=12))
    assert [t.device_id for t in other.timings] != [t.device_id for t in a.timings]


COST_RANDOM = TableCost(PlanCost(flops=2e10, down_bytes=4e6, up_bytes=4e6, memory_bytes=6e9))


def test_never_finishing_round_is_an_error_not_a_hang() -> None:
    dead = device("Z", compute=(0.0,))
    with pytest.raises(EngineError, match="round 0 can never close"):
        _run([_a(), dead])
    # a deadline closes it
    res = _run([_a(), dead], EngineConfig(deadline_s=20.0))
    assert res.timings[1].outcome is Outcome.LATE


def test_driver_can_stop_and_bad_plans_are_rejected() -> None:
    res = _run([_a()], rounds=5, driver=fixed_loop(Arm(0.1, 4), 0.5, 10, 5, rounds=1))
    assert len(res.rounds) == 1  # the loop's last round stops the engine

    wrong = fixed_loop(Arm(0.1, 4), 0.5, 10, 5)
    plans = wrong.plans
    wrong.plans = lambda round, now_s, device_ids: list(reversed(plans(round, now_s, device_ids)))
    with pytest.raises(ValueError, match="plan 0 is for device 'B'"):
        _run([_a(), _b()], driver=wrong)


@pytest.mark.parametrize(
    "kwargs,word",
    [
        ({"participants": 0}, "participants"),
        ({"overcommit": 0.5}, "overcommit"),
        ({"deadline_s": -1.0}, "deadline_s"),
        ({"max_concurrent_transfers": 0}, "max_concurrent_transfers"),
        ({"availability": "sometimes"}, "availability"),
    ],
)
def test_bad_config_names_the_field(kwargs, word) -> None:
    with pytest.raises(ValueError, match=word):
        EngineConfig(**kwargs)


def test_with_the_real_cost_model() -> None:
    """The engine costs plans with CostModel: a pruned round is cheaper than an unpruned one."""
    from simfed.structure import ModelShape
    from simfed.timing.cost import CostModel

    shape = ModelShape(n_layers=2, d_model=64, n_heads=4, n_kv_heads=4, head_dim=16, d_ff=256, vocab_size=65)
    cost = CostModel(shape, batch_size=4, seq_len=32)
    fast_dev = device("F", compute=(1e9,), down=1e6, up=1e6, latency=0.0, ram=1e11)
    res = _run([fast_dev], rounds=4, cost=cost, driver=fixed_loop(Arm(0.25, 8), s_star=0.5, local_iters=20, tau=10))
    flops = [t.compute_flops for t in res.timings]
    assert flops[0] > flops[1] > flops[2] == flops[3]
    assert [t.outcome for t in res.timings] == [Outcome.OK] * 4


def test_event_log_is_columnar_and_built_on_demand() -> None:
    """The engine records columns; Event records are built once, on first access, in canonical order."""
    from simfed.timing.engine import EVENT_KINDS

    res = _run([_a(), _b(), _c()], rounds=2)
    cols = res.log.columns()
    assert len(res.log) == len(cols["time_s"]) == 2 * 17
    events = res.events
    assert events is res.events  # cached
    assert [(e.time_s, e.round, e.device_id, e.kind) for e in events] == [
        (t, r, "" if p < 0 else "ABC"[p], EVENT_KINDS[k])
        for t, r, p, k in zip(cols["time_s"].tolist(), cols["round"].tolist(), cols["position"].tolist(), cols["kind"].tolist())
    ]
    assert [e.detail for e in events if e.kind == "round_end"] == ["reason=all ok=3/3", "reason=all ok=2/3"]  # C drops at 30 in round 1
    quiet = _run([_a(), _b()], EngineConfig(log_events=False))
    assert quiet.log is None and quiet.events == []
    assert timing_rows(quiet.timings) == timing_rows(_run([_a(), _b()]).timings)


def test_oom_event_keeps_its_detail() -> None:
    res = _run([device("S", ram=50.0)])
    (oom,) = [e for e in res.events if e.kind == "oom"]
    assert oom.detail == "need=100B ram=50B" and oom.time_s == 3.0


# ---------------------------------------------------------------- batched vs scalar trace lookups

BATCH_CONFIGS = round_configs()


def _engine_pair(pop, cost, cfg, rounds):
    def go(contended):
        driver = fixed_loop(Arm(0.1, 8), 0.5, 20, 10, arms={"dev0003": Arm(0.3, 2), "dev0010": Arm(0.0, 16)})
        eng = Engine(pop, cost, cfg, driver, contended=contended)
        assert eng.contended is contended
        return eng.run(rounds)

    return go(False), go(True)


@pytest.mark.parametrize("cfg", BATCH_CONFIGS, ids=ROUND_CONFIG_IDS)
def test_vectorised_path_equals_simpy_path(cfg: EngineConfig) -> None:
    """Where nothing is shared, the vectorised path (all selected devices at once, numpy) and the SimPy path
    (one process per device answering its transfers in simulated time) give the same timings, round times
    and event log (with details)."""
    from simfed.structure import ModelShape
    from simfed.timing.cost import CostModel

    pop = random_population(60, seed=21)
    shape = ModelShape(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=256, vocab_size=50)
    a, b = _engine_pair(pop, CostModel(shape, batch_size=4, seq_len=32), cfg, rounds=6)
    assert round_rows(a.rounds) == round_rows(b.rounds)
    assert timing_rows(a.timings) == timing_rows(b.timings)
    assert a.events == b.events
    assert [e.detail for e in a.events] == [e.detail for e in b.events]


def test_paths_agree_with_oom_drops_and_never_ending_phases() -> None:
    """Edge cases: out of memory, offline mid-phase, a device whose compute
    never ends (zero throughput: it waits forever until the deadline closes the round), zero-length
    phases (no latency, nothing to download) and every outcome."""
    pop = random_population(40, seed=5)
    dead = device("dead", compute=(0.0,), latency=0.0)
    tiny_ram = device("tiny", ram=10.0)
    pop = Population(pop.devices + (dead, tiny_ram))
    costs = TableCost(PlanCost(flops=5e9, down_bytes=1e6, up_bytes=1e6, memory_bytes=5e9),
                      {"dead": PlanCost(flops=1.0, down_bytes=0.0, up_bytes=0.0, memory_bytes=1.0)})
    seen = set()
    for cfg in (
        EngineConfig(deadline_s=30.0),
        EngineConfig(participants=30, overcommit=1.4, deadline_s=20.0, seed=1),
        EngineConfig(participants=8, overcommit=2.0, seed=3),
    ):
        a, b = _engine_pair(pop, costs, cfg, rounds=4)
        assert timing_rows(a.timings) == timing_rows(b.timings)
        assert round_rows(a.rounds) == round_rows(b.rounds)
        assert a.events == b.events
        seen |= {t.outcome for t in a.timings}
        if cfg.participants is None:  # everyone selected: the dead device waits in vain until the deadline
            assert any(t.device_id == "dead" and t.outcome is Outcome.LATE and t.download_end_s == t.ready_s for t in a.timings)
    assert seen == set(Outcome) - {Outcome.FAILED}  # FAILED is the server's verdict on training, not timing


def test_timings_reach_the_driver_as_a_lazy_list() -> None:
    """The driver gets a read-only list that builds its records on first access; the result's
    timings are the same records."""
    from simfed.timing.engine import TimingRows

    got = []

    keep = fixed_loop(Arm(0.25, 4), s_star=0.5, local_iters=10, tau=5)
    done = keep.round_closed

    def closed(round, timings, close_s):
        got.append((timings, timings._rows is None))
        return done(round, timings, close_s)

    keep.round_closed = closed
    res = _run([_a(), _b(), _c()], rounds=2, driver=keep)
    first, lazy = got[0]
    assert isinstance(first, TimingRows) and lazy  # nothing built until the driver reads it
    assert len(first) == 3 and [t.device_id for t in first] == ["A", "B", "C"]
    assert first[0] == DeviceTiming(0, "A", Outcome.OK, 0.0, 0.0, 3.0, 13.0, 16.0, 16.0, 1000.0, 20.0, 10.0, 100.0)
    assert first == list(first) and first != list(first)[:2]
    assert res.timings[:3] == list(first) and res.timings[0] is first[0]
    assert sorted(got[1][0][0:3], key=lambda t: t.device_id)[0].outcome is Outcome.OK


def test_packed_population_is_built_once_per_population() -> None:
    from simfed.timing.packed import PackedPopulation

    pop = random_population(5, seed=2)
    eng = Engine(pop, COST_RANDOM, EngineConfig(), fixed_loop(Arm(0.1, 8), 0.5, 20, 10))
    assert eng.packed is PackedPopulation.of(pop)
    assert PackedPopulation.of(random_population(5, seed=2)) is not eng.packed  # another population object
    assert not eng.contended  # nothing shared: the vectorised path
    slots = Engine(pop, COST_RANDOM, EngineConfig(max_concurrent_transfers=1), fixed_loop(Arm(0.1, 8), 0.5, 20, 10))
    assert slots.contended  # transfer slots: SimPy
    with pytest.raises(ValueError, match="shares links or transfer slots"):
        Engine(pop, COST_RANDOM, EngineConfig(max_concurrent_transfers=1), fixed_loop(), contended=False)
