"""Devices that share access points and the server's links: hand-computed rounds, the SimPy path chosen
automatically, private devices unaffected, drop-outs freeing capacity, and the trace format's ``ap``
column and ``aps.csv``.

Devices here: 1000 FLOPs at 100 FLOP/s (10 s of compute), 20 B down and 10 B up, their own links at
10 B/s both ways, no latency. On a private link: download 0..2, compute 2..12, upload 12..13.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _helpers import TableCost, device, fixed_loop, random_population, timing_rows  # noqa: E402

from simfed.records import Outcome  # noqa: E402
from simfed.timing.cost import PlanCost  # noqa: E402
from simfed.timing.engine import Engine, EngineConfig  # noqa: E402
from simfed.timing.traces import AccessPoint, Availability, Population, TraceError  # noqa: E402

COST = TableCost(PlanCost(flops=1000.0, down_bytes=20.0, up_bytes=10.0, memory_bytes=100.0))


def _dev(name: str, ap: str = "", **kw):
    return replace(device(name, down=10.0, up=10.0, latency=0.0, **kw), ap=ap)


def _run(devs, aps=None, config=EngineConfig(), rounds=1, cost=COST):
    pop = Population(tuple(devs), {}, aps or {})
    eng = Engine(pop, cost, config, fixed_loop())
    return eng, eng.run(rounds)


def _phases(res, name):
    t = next(t for t in res.timings if t.device_id == name)
    return t.download_end_s, t.compute_end_s, t.upload_end_s


def test_two_devices_share_a_half_duplex_access_point() -> None:
    """10 B/s shared: both download at 5 B/s (20 B: 0..4), compute 4..14, upload at 5 B/s (10 B: 14..16)."""
    eng, res = _run([_dev("A", "w"), _dev("B", "w")], {"w": AccessPoint("w", 10.0, 10.0, "half")})
    assert eng.contended
    assert _phases(res, "A") == _phases(res, "B") == (4.0, 14.0, 16.0)
    assert res.rounds[0].close_s == 16.0


def test_half_duplex_couples_directions_full_duplex_does_not() -> None:
    """B needs 40 B down (0..4 alone), A 20 B: on a half-duplex AP of 10 B/s both download at 5 B/s until A
    is done at 4, B then alone (10 B/s): 20 B left -> 6. A uploads 14..15 at 10 B/s (B is computing).
    Full duplex 10/10: the same here; but with A's upload during B's download they would share only in half
    duplex: give A a faster compute (2000 FLOP/s: 4..4.5) so its upload overlaps B's download."""
    cost = TableCost(COST.default, {"B": PlanCost(flops=1000.0, down_bytes=40.0, up_bytes=10.0, memory_bytes=100.0)})
    fast_a = _dev("A", "w", compute=(2000.0,))
    _, half = _run([fast_a, _dev("B", "w")], {"w": AccessPoint("w", 10.0, 10.0, "half")}, cost=cost)
    _, full = _run([fast_a, _dev("B", "w")], {"w": AccessPoint("w", 10.0, 10.0, "full")}, cost=cost)
    # both: 0..4 the two downloads share 10 B/s; A computes 4..4.5
    assert _phases(half, "A")[:2] == _phases(full, "A")[:2] == (4.0, 4.5)
    # full duplex: A's upload (10 B at its own 10 B/s) 4.5..5.5; B alone downstream from 4: 20 B -> 6
    assert _phases(full, "A")[2] == 5.5 and _phases(full, "B")[0] == 6.0
    # half duplex: from 4.5 A's upload and B's download share 10 B/s: 5 B/s each. B has 15 B left at 4.5,
    # A's 10 B end at 6.5; B did 10 B by then, the last 5 B alone at 10 B/s: 7.0
    assert _phases(half, "A")[2] == 6.5 and _phases(half, "B")[0] == 7.0


def test_the_device_own_rate_caps_its_share() -> None:
    """A's own downlink is 2 B/s: it takes 2, B the remaining 8 of the 10 B/s AP (20 B: 2.5 s)."""
    a = replace(_dev("A", "w"), down_bps=device("x", down=2.0).down_bps)
    _, res = _run([a, _dev("B", "w")], {"w": AccessPoint("w", 10.0, 10.0, "full")})
    assert _phases(res, "B")[0] == 2.5
    # A: 2 B/s until B is done at 2.5 (5 B), then still capped at 2 B/s: 15 B more -> 10.0
    assert _phases(res, "A")[0] == 10.0


def test_a_drop_frees_its_share() -> None:
    """A goes offline at 2 during its download: B got 5 B/s until then (10 B) and 10 B/s after (10 B: 3)."""
    a = _dev("A", "w", avail=Availability.make([0.0], [2.0], 1000.0))
    _, res = _run([a, _dev("B", "w")], {"w": AccessPoint("w", 10.0, 10.0, "half")})
    ta = next(t for t in res.timings if t.device_id == "A")
    assert ta.outcome is Outcome.OFFLINE and ta.end_s == 2.0
    assert _phases(res, "B")[0] == 3.0


def test_private_devices_in_a_shared_run_keep_their_own_times() -> None:
    """C has no access point: its phases are those of a private link, whatever A and B share."""
    _, shared = _run([_dev("A", "w"), _dev("B", "w"), _dev("C")], {"w": AccessPoint("w", 10.0, 10.0, "half")})
    assert _phases(shared, "C") == (2.0, 12.0, 13.0)
    assert _phases(shared, "A") == (4.0, 14.0, 16.0)


def test_the_server_link_is_shared_by_everyone() -> None:
    """No access points, but the server sends at most 10 B/s in all: the two downloads share it (0..4); the
    uploads are unlimited (each at its own 10 B/s: 14..15)."""
    eng, res = _run([_dev("A"), _dev("B")], config=EngineConfig(server_down_bytes_s=10.0))
    assert eng.contended
    assert _phases(res, "A") == _phases(res, "B") == (4.0, 14.0, 15.0)


def test_a_deadline_abandons_flows_and_the_next_round_starts_clean() -> None:
    """Deadline 3: both downloads (0..4 shared) are cut; the next round starts at 3 and the same happens."""
    _, res = _run([_dev("A", "w"), _dev("B", "w")], {"w": AccessPoint("w", 10.0, 10.0, "half")},
                  config=EngineConfig(deadline_s=3.0), rounds=2)
    assert [r.close_s for r in res.rounds] == [3.0, 6.0]
    assert {t.outcome for t in res.timings} == {Outcome.LATE}


def test_sharing_on_a_random_population_lengthens_rounds_and_is_deterministic() -> None:
    pop = random_population(30, seed=4, with_availability=False)
    aps = {"ap0": AccessPoint("ap0", 2e5, 2e5, "half"), "ap1": AccessPoint("ap1", 3e5, 1e5, "full")}
    shared = Population(tuple(replace(d, ap=f"ap{i % 2}") for i, d in enumerate(pop.devices)), {}, aps)
    cost = TableCost(PlanCost(flops=2e10, down_bytes=4e6, up_bytes=4e6, memory_bytes=3e9))
    private = Engine(pop, cost, EngineConfig(), fixed_loop()).run(3)
    a = Engine(shared, cost, EngineConfig(), fixed_loop()).run(3)
    b = Engine(shared, cost, EngineConfig(), fixed_loop()).run(3)
    assert timing_rows(a.timings) == timing_rows(b.timings) and a.events == b.events
    assert all(x.close_s > y.close_s for x, y in zip(a.rounds, private.rounds))
    # every device's transfers take at least as long as on its own link
    for s, p in zip(a.timings[:30], private.timings[:30]):
        assert s.download_end_s >= p.download_end_s


# ------------------------------------------------------------------------------------- the trace format


def _aps_population() -> Population:
    pop = random_population(6, seed=2)
    devs = tuple(replace(d, ap=("lab" if i < 3 else "")) for i, d in enumerate(pop.devices))
    return Population(devs, {"generator": "test"}, {"lab": AccessPoint("lab", 5e6, 2.5e6, "half")})


def test_access_points_round_trip_through_a_trace_directory(tmp_path) -> None:
    from simfed.timing.tracefile import read_population, write_population

    pop = _aps_population()
    write_population(pop, tmp_path / "t")
    assert (tmp_path / "t" / "aps.csv").is_file()
    back = read_population(tmp_path / "t")
    assert back.access_points == pop.access_points
    assert [d.ap for d in back.devices] == ["lab", "lab", "lab", "", "", ""]


def test_access_point_errors_name_the_file_and_the_field(tmp_path) -> None:
    from simfed.timing.tracefile import read_population, write_population

    write_population(_aps_population(), tmp_path / "t")
    aps = tmp_path / "t" / "aps.csv"
    text = aps.read_text()
    aps.write_text(text.replace("half", "sometimes"))
    with pytest.raises(TraceError, match=r"aps.csv: line 2: access point 'lab', field 'duplex'"):
        read_population(tmp_path / "t")
    aps.write_text(text.replace("lab", "other"))
    with pytest.raises(TraceError, match="names access point 'lab', which aps.csv does not declare"):
        read_population(tmp_path / "t")
    aps.unlink()
    with pytest.raises(TraceError, match="is on access point 'lab' but aps.csv is missing"):
        read_population(tmp_path / "t")


def test_capacities_are_read_in_the_directory_units(tmp_path) -> None:
    """aps.csv capacities follow meta.json's downlink/uplink units; half duplex may leave uplink blank."""
    import json

    from simfed.timing.tracefile import read_population, write_population

    write_population(_aps_population(), tmp_path / "t")
    meta = json.loads((tmp_path / "t" / "meta.json").read_text())
    meta["units"]["downlink"] = meta["units"]["uplink"] = "Mbit/s"
    (tmp_path / "t" / "meta.json").write_text(json.dumps(meta))
    (tmp_path / "t" / "aps.csv").write_text("ap,downlink,uplink,duplex\nlab,400,,half\n")
    ap = read_population(tmp_path / "t").access_points["lab"]
    assert ap.downlink_bps == pytest.approx(50e6) and ap.duplex == "half"


def test_library_referenced_devices_share_access_points() -> None:
    """Devices whose series reference a trace library (offset, scale) are capped by their own rate on a shared
    access point like any other device: the run completes, deterministically, and sharing slows it down."""
    from simfed.timing.generators import generate

    def run(aps: int):
        pop = generate("phones", n_devices=60, seed=1, library_size=8, access_points=aps, ap_downlink_bytes_s=1e6,
                       availability=False)
        cost = TableCost(PlanCost(flops=2e10, down_bytes=4e6, up_bytes=4e6, memory_bytes=1.0))
        return Engine(pop, cost, EngineConfig(), fixed_loop()).run(2)

    a, b, private = run(2), run(2), run(0)
    assert timing_rows(a.timings) == timing_rows(b.timings)
    assert all(x.close_s >= y.close_s for x, y in zip(a.rounds, private.rounds))
    assert a.rounds[0].close_s > private.rounds[0].close_s
