"""Benchmark: one round of per-device decisions (select + update) at 10^4, 10^5 and 10^6 devices.

Issue #14, item 5. For S-UCB, UCB1 and the fixed arm, per-device state (one learner object per device,
driven through the dict interface ``select``/``update``, as the server loop calls it today) against the
vectorised state (``backend="arrays"``, driven through ``select_array``/``update_array`` with integer
positions). Every device takes part in every round; 5 % of them fail (no reward: it counts 0) and 5 % never
report (no observation). Rewards are synthetic: a device-specific optimum in (p, log r) plus noise, in
[0, 1]. Only the policy's calls are timed (building the records or reward columns is not).

Printed per (policy, state, devices): µs per decision of select and of update in the first and the last
round and their mean over the rounds (S-UCB's trees grow by two nodes per play, so its rounds get dearer), the state's size after the last
round (the arrays' bytes; for per-device state the rise of resident memory), the process's peak RSS and
the time to register the devices (``register``: their rows and 63-bit seeds, once per run).
Each configuration runs in a fresh process (``--one``), so peaks do not mix.

Run: ``python benchmarks/bench_policies.py [--devices 10000,100000,1000000] [--rounds 10]
[--policies sucb,ucb1,fixed] [--per-device-max 100000] [--per-device-backend mersenne]``.
Per-device state of the learning policies above ``--per-device-max`` devices is skipped (10^6 S-UCB trees as Python objects take
about 10 minutes and 8 GB for 10 rounds on this 2-core machine; the rows printed show how it scales).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from simfed.decisions.arms import ArmSpace  # noqa: E402
from simfed.decisions.policies import make_policy  # noqa: E402
from simfed.records import Observation, Outcome  # noqa: E402

SPACE = ArmSpace()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _rewards(p: np.ndarray, r: np.ndarray, best_p: np.ndarray, best_lr: np.ndarray, noise: np.ndarray) -> np.ndarray:
    dist = np.abs(p - best_p) / SPACE.p_max + np.abs(np.log2(r) - best_lr) / SPACE.log2_span
    return np.clip(1.0 - 0.7 * dist + noise, 0.0, 1.0)


def run_one(policy_name: str, state: str, n: int, rounds: int, per_device_backend: str) -> dict:
    """One configuration; returns the measurements (see the module docstring)."""
    rng = np.random.default_rng(0)
    ids = [f"dev{i:07d}" for i in range(n)]
    best_p = rng.uniform(0.0, SPACE.p_max, n)
    best_lr = rng.uniform(1.0, 5.0, n)
    params = {} if policy_name == "fixed" else {"backend": "arrays" if state == "vectorised" else per_device_backend}
    rss0 = _rss_bytes()
    policy = make_policy(policy_name, arm_space=SPACE, seed=0, **params)
    t0 = time.perf_counter()
    positions = policy.register(ids) if state == "vectorised" else None
    register_s = time.perf_counter() - t0
    rows = []
    for t in range(rounds):
        fail = rng.random(n) < 0.05
        silent = rng.random(n) < 0.05
        noise = rng.normal(0.0, 0.1, n)
        report = np.flatnonzero(~silent)
        if state == "vectorised":
            t0 = time.perf_counter()
            p, r = policy.select_array(t, positions)
            t1 = time.perf_counter()
            rewards = _rewards(p, r, best_p, best_lr, noise)
            rewards[fail] = np.nan
            cols = {"ok": ~fail[report]}
            t2 = time.perf_counter()
            policy.update_array(t, positions[report], cols, rewards[report])
            t3 = time.perf_counter()
        else:
            t0 = time.perf_counter()
            arms = policy.select(t, ids)
            t1 = time.perf_counter()
            p = np.fromiter((arms[d].p for d in ids), dtype=np.float64, count=n)
            r = np.fromiter((arms[d].r for d in ids), dtype=np.int64, count=n)
            rewards = _rewards(p, r, best_p, best_lr, noise)
            observations, reward_of = [], {}
            for i in report.tolist():
                d = ids[i]
                observations.append(Observation(round=t, device_id=d, arm=arms[d],
                                                outcome=Outcome.OOM if fail[i] else Outcome.OK, completion_s=1.0,
                                                round_mean_completion_s=1.0, sparsity_before=0.0,
                                                sparsity_after=0.0, s_star=0.5))
                if not fail[i]:
                    reward_of[d] = float(rewards[i])
            del arms
            t2 = time.perf_counter()
            policy.update(t, observations, reward_of)
            t3 = time.perf_counter()
            del observations, reward_of
        rows.append({"select_us": (t1 - t0) / n * 1e6, "update_us": (t3 - t2) / max(1, report.size) * 1e6})
    if state == "vectorised" and hasattr(policy, "_arrays") and policy._arrays is not None:
        state_bytes = policy._arrays.nbytes()
    elif state == "vectorised":
        state_bytes = sum(getattr(policy, k).nbytes for k in ("_p", "_r", "_selected"))
    else:
        state_bytes = _rss_bytes() - rss0
    return {"policy": policy_name, "state": state, "devices": n, "rounds": rounds,
            "first": rows[0], "last": rows[-1],
            "mean": {k: float(np.mean([row[k] for row in rows])) for k in rows[0]}, "state_bytes": state_bytes, "register_s": register_s,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", default="10000,100000,1000000")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--policies", default="sucb,ucb1,fixed")
    ap.add_argument("--per-device-max", type=int, default=100_000)
    ap.add_argument("--per-device-backend", default="mersenne", choices=["mersenne", "learners"])
    ap.add_argument("--one", nargs=3, metavar=("POLICY", "STATE", "DEVICES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        name, state, n = args.one
        print(json.dumps(run_one(name, state, int(n), args.rounds, args.per_device_backend)))
        return
    print(f"{'policy':7} {'state':10} {'devices':>9} | {'select µs/decision':>23} {'update µs/decision':>23} | "
          f"{'state MB':>9} {'peak RSS MB':>11} {'register s':>10}")
    print(f"{'':7} {'':10} {'':>9} | {'round 1':>7} {'last':>7} {'mean':>7} {'round 1':>7} {'last':>7} {'mean':>7} |")
    for name in args.policies.split(","):
        for n in (int(float(x)) for x in args.devices.split(",")):
            for state in ("per-device", "vectorised"):
                if state == "per-device" and n > args.per_device_max and name != "fixed":
                    continue  # (fixed keeps arrays either way: its per-device row is the dict interface)
                cmd = [sys.executable, __file__, "--one", name, state, str(n), "--rounds", str(args.rounds),
                       "--per-device-backend", args.per_device_backend]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    print(f"{name:7} {state:10} {n:>9} | failed: {out.stderr.strip().splitlines()[-1:]}")
                    continue
                m = json.loads(out.stdout.strip().splitlines()[-1])
                f, last, mean = m["first"], m["last"], m["mean"]
                print(f"{name:7} {state:10} {n:>9} | {f['select_us']:7.2f} {last['select_us']:7.2f} "
                      f"{mean['select_us']:7.2f} {f['update_us']:7.2f} {last['update_us']:7.2f} "
                      f"{mean['update_us']:7.2f} | {m['state_bytes'] / 1e6:9.1f} "
                      f"{m['peak_rss_bytes'] / 1e6:11.0f} {m['register_s']:10.2f}", flush=True)


if __name__ == "__main__":
    main()
