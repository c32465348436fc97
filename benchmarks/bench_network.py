"""Benchmark: cost per event of the flow-level shared network (simfed.timing.network).

Steady state: every access point (AP) link carries ``--flows`` concurrent transfers; each completed
transfer is replaced at once by a new one on the same AP, so the load stays constant. Every flow
has a device cap that changes every 60 s with its own random phase (no two devices change at the
same instant: the worst case, one re-solve per cap change). Sizes 5-50 MB, caps 0.3-3 MB/s, AP
capacity 0.6 x the sum of the mean caps (APs and caps both bind).

Layouts:
- ``one-link``: one AP (``--flows`` flows, one component);
- ``aps+server``: ``--aps`` APs and one server link that every flow also crosses, with capacity
  0.8 x the APs' total (one component of ``--aps x --flows`` flows: every event re-solves all);
- ``aps``: the same APs without the server link (independent components: an event re-solves one AP).

An *event* is one ``advance()`` (a completion or a cap change) with the re-solve it causes and
the restarts at that instant. Reported: microseconds per event, over ``--events`` events after
the initial fill. Run: ``python benchmarks/bench_network.py [--flows 1000 --aps 10 --events 3000]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from simfed.timing.network import FlowNetwork
from simfed.timing.traces import Series


def _cap(rng: np.random.Generator) -> Series:
    phase = float(rng.uniform(0.0, 60.0))
    times = [0.0, *(phase + 60.0 * j for j in range(10))]
    return Series.make(times, rng.uniform(0.3e6, 3e6, len(times)), 600.0 + phase)


def run(layout: str, n_aps: int, per_ap: int, events: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    ap_cap = 0.6 * per_ap * 1.65e6
    capacities = [ap_cap] * n_aps
    server = layout == "aps+server"
    if server:
        capacities.append(0.8 * n_aps * ap_cap)
    net = FlowNetwork(capacities)
    caps = [_cap(rng) for _ in range(n_aps * per_ap)]
    ap_of: dict[int, int] = {}
    counter = 0

    def start(t: float, ap: int) -> None:
        nonlocal counter
        links = [ap, n_aps] if server else [ap]
        net.start(t, counter, float(rng.uniform(5e6, 5e7)), links, caps[counter % len(caps)])
        ap_of[counter] = ap
        counter += 1

    for ap in range(n_aps):
        for _ in range(per_ap):
            start(0.0, ap)
    net.next_time()  # the initial solve
    completions = 0
    t0 = time.perf_counter()
    for _ in range(events):
        t = net.next_time()
        done = net.advance(t)
        completions += len(done)
        for k in done:
            start(t, ap_of.pop(k))
    net.next_time()  # the last re-solve
    elapsed = time.perf_counter() - t0
    return {
        "layout": layout,
        "flows": len(net),
        "events": events,
        "completions": completions,
        "sim_s": net.now,
        "us_per_event": 1e6 * elapsed / events,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", type=int, default=1000, help="concurrent flows per AP")
    ap.add_argument("--aps", type=int, default=10)
    ap.add_argument("--events", type=int, default=3000)
    args = ap.parse_args()
    for layout, n_aps in (("one-link", 1), ("aps+server", args.aps), ("aps", args.aps)):
        r = run(layout, n_aps, args.flows, args.events)
        print(
            f"{r['layout']:>11}: {r['flows']:6d} flows, {r['events']} events ({r['completions']} completions) "
            f"over {r['sim_s']:.0f} s simulated: {r['us_per_event']:.0f} us/event"
        )


if __name__ == "__main__":
    main()
