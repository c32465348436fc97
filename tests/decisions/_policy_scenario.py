"""A closed-loop, many-round scenario for per-device policies (used by the vectorised-state tests).

Twelve devices over 100 rounds: three join late (rounds 6, 30 and 70), every round about a fifth of
the joined devices sit out, about a tenth are selected but never report (no observation: their
pending choice is dropped), about a sixth fail (half of them with no reward in the dict, half with an
explicit 0). OK devices earn a reward that depends only on (device, round, arm), quantised to
{0, .25, .5, .75, 1} so that bandit indices tie often. Nothing here depends on a policy's RNG, so two
policies that choose alike see alike rewards.
"""

from __future__ import annotations

import hashlib
import math
import random
from typing import Any, Callable

import numpy as np

from simfed.records import Arm, Observation, Outcome

DEVICES = [f"d{i:02d}" for i in range(12)]
JOIN = {"d09": 6, "d10": 30, "d11": 70}
ROUNDS = 100


def _u(*labels: Any) -> float:
    """A uniform in [0, 1) from labels (a hash: no RNG state shared with anything)."""
    digest = hashlib.blake2b(repr(labels).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def plan(round_: int) -> tuple[list[str], set[str], dict[str, str]]:
    """(selected devices in a shuffled order, those that never report, failures: id -> 'none'|'zero')."""
    joined = [d for d in DEVICES if JOIN.get(d, 0) <= round_]
    selected = [d for d in joined if _u("sel", round_, d) < 0.8]
    random.Random(round_).shuffle(selected)
    silent = {d for d in selected if _u("silent", round_, d) < 0.1}
    failed = {}
    for d in selected:
        if d not in silent and _u("fail", round_, d) < 0.17:
            failed[d] = "none" if _u("how", round_, d) < 0.5 else "zero"
    return selected, silent, failed


def reward(device: str, round_: int, arm: Arm, p_max: float = 0.2) -> float:
    """A quantised reward: best near p = 0.1, r = 8 for even devices and p = 0.2, r = 2 for odd ones."""
    odd = int(device[1:]) % 2
    target_p, target_lr = (0.2, 1.0) if odd else (0.1, 3.0)
    dist = abs(arm.p - target_p) / p_max + abs(math.log2(arm.r) - target_lr) / 4.0
    x = max(0.0, 1.0 - 0.6 * dist) + 0.3 * (_u("noise", device, round_) - 0.5)
    return min(1.0, max(0.0, round(4.0 * x) / 4.0))


def observation(round_: int, device: str, arm: Arm, ok: bool) -> Observation:
    return Observation(round=round_, device_id=device, arm=arm, outcome=Outcome.OK if ok else Outcome.OOM,
                       completion_s=1.0 if ok else math.nan, round_mean_completion_s=1.0, sparsity_before=0.0,
                       sparsity_after=min(arm.p, 0.5) if ok else 0.0, s_star=0.5)


def play(policy: Any, rounds: int = ROUNDS, *, arrays: bool | Callable[[int], bool] = False,
         on_round: Callable[[int, Any], Any] | None = None) -> list[list[tuple[str, float, int]]]:
    """Run ``policy`` through the scenario; the arms of each round as [(device, p, r)] in selection order.

    ``arrays``: use ``select_array``/``update_array`` (with device ids on even rounds and integer positions
    on odd ones) instead of ``select``/``update``; a callable decides per round. ``on_round(t, policy)``
    runs after each round and may return a replacement policy (checkpoint tests).
    """
    history = []
    for t in range(rounds):
        selected, silent, failed = plan(t)
        use_arrays = arrays(t) if callable(arrays) else arrays
        if use_arrays:
            devices: Any = selected if t % 2 == 0 else policy.register(selected)
            p, r = policy.select_array(t, devices)
            arms = {d: Arm(float(pp), int(rr)) for d, pp, rr in zip(selected, p, r)}
        else:
            arms = policy.select(t, selected)
        history.append([(d, arms[d].p, arms[d].r) for d in selected])
        reporting = [d for d in selected if d not in silent]
        rewards = {d: reward(d, t, arms[d]) for d in reporting if d not in failed}
        rewards.update({d: 0.0 for d, how in failed.items() if how == "zero"})
        if use_arrays:
            order = list(reversed(reporting))  # a different order from the selection's
            devices = order if t % 2 == 0 else policy.register(order)
            ok = np.array([d not in failed for d in order])
            values = np.array([rewards.get(d, math.nan) for d in order], dtype=float)
            policy.update_array(t, devices, {"ok": ok}, values)
        else:
            policy.update(t, [observation(t, d, arms[d], d not in failed) for d in reporting], rewards)
        if on_round is not None:
            policy = on_round(t, policy) or policy
    return history


def digest(history: list) -> str:
    """A short fingerprint of a history (exact: floats by repr)."""
    return hashlib.sha256(repr(history).encode()).hexdigest()[:16]
