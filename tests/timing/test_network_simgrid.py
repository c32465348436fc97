"""simfed.timing.network against SimGrid's CM02 flow-level model, on generated access-point scenarios.

Each scenario (seeded) has a server, 2-4 access points (APs) and 6-13 devices. Every device
downloads from the server and most also upload to it, at different start times, some overlapping
their own download. A transfer crosses the device's own link (its trace rate: a periodic
piecewise-constant series, so caps change in the middle of transfers, up and down), its AP and the
server's link. APs alternate between half duplex (SimGrid ``SHARED``: one capacity for both
directions) and full duplex (``SPLITDUPLEX``: one capacity per direction); the server's link is
half duplex in odd scenarios, full duplex in even ones. Capacities are drawn so that shared
links and the devices' own rates both bind somewhere (asserted on our side per scenario, with the
other features listed in ``ALL_FEATURES``).

In simfed the device's own link is the flow's ``cap``; an AP or the server is one link index when
half duplex and two (up, down) when full duplex. In SimGrid (3.32, Debian ``python3-simgrid``)
every one of those is a link in a full-routing zone: device -> server crosses
``[device_up, AP (UP), server (UP)]``, server -> device ``[server (DOWN), AP (DOWN), device_down]``.
A device link's bandwidth follows its series through a daemon actor that calls
``Link.set_bandwidth(values[i])`` at each breakpoint ``k * period + times[i]`` (the Python
bindings name every string bandwidth profile "", so only one ``set_bandwidth_profile`` is
accepted per process). Each transfer is a ``Comm.sendto_async`` from an actor that sleeps until
its start. Every end time must equal SimGrid's within 1e-6 relative.

SimGrid configuration, and why (option names as in SimGrid 3.32):

- ``network/model:CM02``: the max-min model of Casanova and Marchal, with latency factor 1,
  bandwidth factor 1 and weight-S 0 (the default LV08 scales bandwidths by 0.97, latencies by 13.01
  and adds a bandwidth-dependent weight to each flow).
- ``network/crosstraffic:0``: on by default (the default host model turns it on); it charges each
  flow 5% of its rate on the reverse route (on a SHARED link that is the same link, so a flow
  weighs 1.05) -- not pure max-min (with it on, end times here differ from ours by up to 114%).
- zero link latency: CM02 applies the TCP window bound ``network/TCP-gamma / (2 * latency)`` to a
  flow only when its route latency is > 0, and a flow's sharing weight is its route latency once
  that is > 0 (RTT unfairness). With zero latency every flow has weight 1 and no window bound, so
  ``network/TCP-gamma`` needs no setting.
- ``maxmin/precision:1e-9`` (default 1e-5; ``precision/work-amount`` in later releases): the
  solver treats a link whose unused capacity is below precision x capacity as full, and an
  action's remaining bytes below precision x ``surf/precision`` as done; 1e-9 keeps both far below
  the 1e-6 tolerance (the default gave the same end times here). ``surf/precision:1e-9`` (the
  default; seconds; ``precision/timing`` later) is set for the record. ``network/optim`` stays at
  its default (Lazy); Full gave the same results.
- ``--log=root.thres:critical`` keeps SimGrid quiet; the one line it prints on import
  (``contexts/factory``) goes to the subprocess's stderr, which the test captures.

SimGrid 3.32 also bounds each flow, when it starts, by the smallest bandwidth on its route at that
instant, and never lifts that bound (``NetworkCm02Model::comm_action_set_bounds``): a device whose
rate rises during a transfer would stay at its starting rate (end times up to 3.4x ours in these
scenarios). That is not max-min sharing, so each transfer's actor sets its device link's bandwidth
to 1e300 just before ``sendto_async`` and back to the series' current value right after (the
same instant: no time passes, nothing is solved in between); the flow is then bounded only by the
links' constraints, which SimGrid updates at every ``set_bandwidth``.

SimGrid's engine is a process-wide singleton (a second ``Engine`` continues the first one's clock
and platform), so each scenario runs in its own ``sys.executable`` subprocess.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from simfed.timing.network import FlowNetwork, FlowSpec, simulate
from simfed.timing.traces import Series

_DIST = "/usr/lib/python3/dist-packages"


def _have_simgrid() -> bool:
    added = _DIST not in sys.path
    if added:
        sys.path.append(_DIST)  # at the end: Debian's packages must not shadow the venv's
    try:
        import simgrid  # noqa: F401
    except ImportError:
        return False
    finally:
        if added:
            sys.path.remove(_DIST)
    return True


pytestmark = pytest.mark.skipif(
    not _have_simgrid(), reason="SimGrid Python bindings (Debian python3-simgrid) not installed"
)

SEEDS = range(6)

# Runs one scenario (JSON file in argv[1]) in SimGrid and prints {flow key: end time} as JSON.
_DRIVER = r'''
import json, sys
sys.path.append("/usr/lib/python3/dist-packages")
from simgrid import Actor, Comm, Engine, LinkInRoute, NetZone, this_actor

sc = json.load(open(sys.argv[1]))
e = Engine(["simfed-check", "--cfg=network/model:CM02", "--cfg=network/crosstraffic:0",
            "--cfg=maxmin/precision:1e-9", "--cfg=surf/precision:1e-9", "--log=root.thres:critical"])
zone = NetZone.create_full_zone("world")
server = zone.create_host("server", 1).seal()

def shared(name, bw, full):
    if full:
        link = zone.create_split_duplex_link(name, bw).set_latency(0).seal()
        return LinkInRoute(link, LinkInRoute.Direction.UP), LinkInRoute(link, LinkInRoute.Direction.DOWN)
    link = zone.create_link(name, bw).set_latency(0).seal()
    return LinkInRoute(link), LinkInRoute(link)

srv_up, srv_down = shared("server", sc["server"]["bw"], sc["server"]["full"])
aps = [shared(f"ap{j}", ap["bw"], ap["full"]) for j, ap in enumerate(sc["aps"])]
hosts, own, varying = [], [], []
for d, dev in enumerate(sc["devices"]):
    host = zone.create_host(f"dev{d}", 1).seal()
    links = {}
    for way in ("up", "down"):
        s = dev[way]
        links[way] = zone.create_link(f"dev{d}_{way}", s["values"][0]).set_latency(0).seal()
        if len(s["times"]) > 1:
            varying.append((links[way], s))
    ap_up, ap_down = aps[dev["ap"]]
    zone.add_route(host.netpoint, server.netpoint, None, None, [LinkInRoute(links["up"]), ap_up, srv_up], False)
    zone.add_route(server.netpoint, host.netpoint, None, None, [srv_down, ap_down, LinkInRoute(links["down"])], False)
    hosts.append(host)
    own.append(links)
zone.seal()

def follow(link, s):
    Actor.self().daemonize()
    times, values, period = s["times"], s["values"], s["period"]
    k, i = 0, 1
    while True:
        this_actor.sleep_until(k * period + times[i])
        link.set_bandwidth(values[i])
        i += 1
        if i == len(times):
            k, i = k + 1, 0

ends = {}

def transfer(f):
    this_actor.sleep_until(f["start"])
    d = f["device"]
    link = own[d][f["way"]]
    src, dst = (hosts[d], server) if f["way"] == "up" else (server, hosts[d])
    link.set_bandwidth(1e300)  # see the test's docstring: no start-time bound
    comm = Comm.sendto_async(src, dst, f["nbytes"])
    link.set_bandwidth(f["cap_at_start"])
    comm.wait()
    ends[f["key"]] = Engine.clock

for j, (link, s) in enumerate(varying):
    Actor.create(f"follow{j}", server, follow, link, s)
for i, f in enumerate(sc["flows"]):
    Actor.create(f"transfer{i}", server, transfer, f)
e.run()
json.dump(ends, sys.stdout)
'''


def _series(rng: np.random.Generator) -> dict:
    if rng.random() < 0.25:
        return {"times": [0.0], "values": [float(rng.uniform(0.3e6, 3e6))], "period": 1.0}
    n = int(rng.integers(2, 5))
    period = float(rng.integers(20, 60))
    cuts = np.sort(rng.choice(np.arange(1, int(period)), n - 1, replace=False)).astype(float)
    return {"times": [0.0, *cuts.tolist()], "values": rng.uniform(0.3e6, 3e6, n).round(-3).tolist(), "period": period}


def make_scenario(seed: int) -> dict:
    """A generated scenario: capacities in bytes/s, times in s, sizes in whole bytes (SimGrid's payloads)."""
    rng = np.random.default_rng(seed)
    n_ap = int(rng.integers(2, 5))
    sc = {
        "server": {"bw": float(rng.uniform(4e6, 1.5e7)), "full": seed % 2 == 0},
        "aps": [{"bw": float(rng.uniform(1.5e6, 6e6)), "full": (j + seed) % 2 == 1} for j in range(n_ap)],
        "devices": [],
        "flows": [],
    }
    for d in range(int(rng.integers(6, 14))):
        sc["devices"].append({"ap": int(rng.integers(n_ap)), "up": _series(rng), "down": _series(rng)})
        t = float(rng.uniform(0, 30))
        size = int(rng.integers(5e6, 6e7))
        sc["flows"].append({"key": f"d{d}-down", "device": d, "way": "down", "start": t, "nbytes": size})
        if rng.random() < 0.85:
            t_up = t + float(rng.uniform(0, 60))
            size = int(rng.integers(5e6, 6e7))
            sc["flows"].append({"key": f"d{d}-up", "device": d, "way": "up", "start": t_up, "nbytes": size})
    return sc


def to_network(sc: dict) -> tuple[list[float], list[str], list[FlowSpec]]:
    """The scenario as FlowNetwork input; also stores each flow's cap at its start in ``sc``."""
    capacities: list[float] = []
    names: list[str] = []

    def add(name: str, bw: float, full: bool) -> tuple[int, int]:
        if full:
            capacities.extend([bw, bw])
            names.extend([f"{name}_up", f"{name}_down"])
            return len(capacities) - 2, len(capacities) - 1
        capacities.append(bw)
        names.append(name)
        return len(capacities) - 1, len(capacities) - 1

    server = add("server", sc["server"]["bw"], sc["server"]["full"])
    aps = [add(f"ap{j}", ap["bw"], ap["full"]) for j, ap in enumerate(sc["aps"])]
    specs = []
    for f in sc["flows"]:
        dev = sc["devices"][f["device"]]
        s = dev[f["way"]]
        cap = Series.make(s["times"], s["values"], s["period"], where=f"{f['key']} cap")
        f["cap_at_start"] = cap.rate_at(f["start"])
        up, down = aps[dev["ap"]]
        links = [up, server[0]] if f["way"] == "up" else [server[1], down]
        specs.append(FlowSpec(f["key"], f["start"], f["nbytes"], links, cap))
    return capacities, names, specs


def features(capacities, names, specs) -> set[str]:
    """What a scenario exercises, from a replay of our model (rates inspected after every event)."""
    seen: set[str] = set()
    net = FlowNetwork(capacities, names)
    by_start = sorted(specs, key=lambda f: f.start_s)
    info = {f.key: f for f in by_start}
    ends = simulate(specs, capacities, names)
    i = 0
    for _ in range(100_000):  # events (a runaway loop fails below instead of hanging)
        if not (i < len(by_start) or len(net)):
            break
        nt = net.next_time()
        ts = by_start[i].start_s if i < len(by_start) else math.inf
        if nt <= ts:
            net.advance(nt)
        else:
            f = by_start[i]
            net.start(ts, f.key, f.nbytes, f.links, f.cap)
            i += 1
        for k in [k for k in info if k in net]:
            cap_now = info[k].cap.rate_at(net.now)
            r = net.rate(k)
            if r >= cap_now * (1 - 1e-12):
                seen.add("device rate binds")
            else:
                seen.add("a shared link binds")
    else:
        raise AssertionError("runaway event loop")
    for f in specs:
        t = f.start_s
        while (t := f.cap.next_change(t)) < ends[f.key]:
            before, after = f.cap.rate_at(np.nextafter(t, -math.inf)), f.cap.rate_at(t)
            if after > before:
                seen.add("cap rises mid-transfer")
            elif after < before:
                seen.add("cap falls mid-transfer")
    if len({f.start_s for f in specs}) == len(specs):
        seen.add("distinct start times")
    if {k.rsplit("-", 1)[1] for k in info} == {"up", "down"}:
        seen.add("uploads and downloads")
    return seen


ALL_FEATURES = {
    "device rate binds",
    "a shared link binds",
    "cap rises mid-transfer",
    "cap falls mid-transfer",
    "distinct start times",
    "uploads and downloads",
}


def _simgrid_ends(sc: dict, tmp_path) -> dict[str, float]:
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps(sc))
    out = subprocess.run([sys.executable, "-c", _DRIVER, str(path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"SimGrid run failed (rc {out.returncode}):\n{out.stderr[-3000:]}"
    return json.loads(out.stdout)


@pytest.mark.parametrize("seed", SEEDS)
def test_end_times_match_simgrid_cm02(seed, tmp_path):
    sc = make_scenario(seed)
    capacities, names, specs = to_network(sc)
    assert len(sc["aps"]) >= 2
    assert {ap["full"] for ap in sc["aps"]} == {True, False}  # half- and full-duplex APs side by side
    assert features(capacities, names, specs) == ALL_FEATURES
    ours = simulate(specs, capacities, names)
    theirs = _simgrid_ends(sc, tmp_path)
    assert set(theirs) == set(ours)
    for key, t in ours.items():
        assert math.isfinite(t)
        assert theirs[key] == pytest.approx(t, rel=1e-6), f"seed {seed}, {key}: ours {t!r}, SimGrid {theirs[key]!r}"
