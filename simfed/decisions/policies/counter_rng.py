"""Counter-based random draws: the uniform number for (device key, counter, slot), with no generator state.

A per-device ``random.Random`` cannot be vectorised over a million devices (its Mersenne Twister state is
2.5 KB per device and its draws are sequential). Here a draw is a pure function of three integers, in
the manner of counter-based generators (Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as easy as
1, 2, 3", SC 2011): the device's ``key`` (its 63-bit :func:`~simfed.decisions.policies.base.derived_seed`),
a ``counter`` the learner keeps (its number of selections, or of updates) and a ``slot`` naming the
purpose of the draw within that step (a tie at descent level 3, the r coordinate of a uniform play, ...).
So the same uniform comes out whether one device is served alone or a million at once, in any order.

The function: ``seed = mix(key + (slot + 1)·S)``, ``z = mix(seed + (counter + 1)·G)`` (arithmetic modulo
2^64), uniform = ``(z >> 11)·2^−53`` ∈ [0, 1), i.e. output number ``counter`` of a SplitMix64 stream seeded
by ``(key, slot)``. ``mix`` is SplitMix64's output function (Steele, Lea & Flood, "Fast splittable
pseudorandom number generators", OOPSLA 2014; constants of Stafford's "Mix13"), G = 0x9E3779B97F4A7C15
(the golden-ratio increment), S = 0xD1B54A32D192ED03 (an odd constant). :func:`uniform` (Python integers,
for the per-device learners) and :func:`uniforms` (numpy uint64 arrays) compute bit-identical values.

The variate kernels below (normal, gamma, beta) are written once over arrays and used by both the
per-device learners (on one device's arms) and the vectorised state (on all devices at once); every
element depends only on its own inputs, so the two agree exactly as long as numpy's elementwise
functions (log, cos, sqrt) return the same value for an element wherever it sits in an array
(``tests/decisions/test_vectorised.py`` checks that on the machine it runs on).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import numpy as np

MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
SLOT_STEP = 0xD1B54A32D192ED03
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_UNIT = 2.0**-53


def _mix(z: int) -> int:
    z = ((z ^ (z >> 30)) * _M1) & MASK
    z = ((z ^ (z >> 27)) * _M2) & MASK
    return z ^ (z >> 31)


def uniform(key: int, counter: int, slot: int = 0) -> float:
    """The uniform in [0, 1) of (``key``, ``counter``, ``slot``), all non-negative integers < 2^64."""
    seed = _mix((key + (slot + 1) * SLOT_STEP) & MASK)
    return (_mix((seed + (counter + 1) * GOLDEN) & MASK) >> 11) * _UNIT


def _mix_np(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_M1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_M2)
    return z ^ (z >> np.uint64(31))


def uniforms(keys: Any, counters: Any, slots: Any = 0) -> np.ndarray:
    """:func:`uniform` elementwise over broadcast arrays of keys, counters and slots (float64 array)."""
    k = np.asarray(keys, dtype=np.uint64)
    c = np.asarray(counters).astype(np.uint64)
    s = np.asarray(slots).astype(np.uint64)
    with np.errstate(over="ignore"):  # arithmetic modulo 2^64 is intended (numpy warns for 0-d operands)
        seed = _mix_np(k + (s + np.uint64(1)) * np.uint64(SLOT_STEP))
        z = _mix_np(seed + (c + np.uint64(1)) * np.uint64(GOLDEN))
    return (z >> np.uint64(11)).astype(np.float64) * _UNIT


class CounterStream:
    """The counter-based draws of one device (the per-device learners' replacement for ``random.Random``).

    ``counter`` is advanced by the learner (once per selection); :meth:`choice` has ``random.Random``'s
    signature, so :func:`~simfed.decisions.policies.base.argmax_random_ties` takes either.
    """

    def __init__(self, key: int) -> None:
        self.key = int(key)
        self.counter = 0

    def uniform(self, slot: int = 0, counter: int | None = None) -> float:
        return uniform(self.key, self.counter if counter is None else counter, slot)

    def choice(self, seq: Sequence[Any], slot: int = 0) -> Any:
        """``seq[⌊u·len(seq)⌋]`` with u the slot's uniform (the vectorised tie-break does the same)."""
        m = len(seq)
        return seq[min(int(self.uniform(slot) * m), m - 1)]

    def at(self, slot: int) -> "_SlotView":
        """A ``random.Random``-like view whose :meth:`choice` draws from ``slot``."""
        return _SlotView(self, slot)

    def __repr__(self) -> str:
        return f"CounterStream(key={self.key}, counter={self.counter})"


RNGS = ("mersenne", "counter")


def learner_rng(seed: int, rng: str) -> "random.Random | CounterStream":
    """A learner's source of random draws: ``random.Random(seed)`` (``"mersenne"``) or a
    :class:`CounterStream` keyed by ``seed`` (``"counter"``).

    Raises:
        ValueError: another ``rng``.
    """
    if rng == "mersenne":
        return random.Random(seed)
    if rng == "counter":
        return CounterStream(seed)
    raise ValueError(f"rng must be one of {RNGS}, got {rng!r}")


class _SlotView:
    def __init__(self, stream: CounterStream, slot: int) -> None:
        self.stream = stream
        self.slot = slot

    def choice(self, seq: Sequence[Any]) -> Any:
        return self.stream.choice(seq, self.slot)


def pick_index(u: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``min(⌊u·m⌋, m − 1)`` elementwise: which of ``m`` candidates a uniform ``u`` picks."""
    return np.minimum((u * m).astype(np.int64), np.asarray(m, dtype=np.int64) - 1)


# --- variates (one code path for the per-device and the vectorised implementation) ---------------------
TAU = 2.0 * math.pi


def normal_draws(keys: np.ndarray, counters: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """Standard normals by Box & Muller (1958): √(−2 ln(1 − u₁))·cos(2π u₂), u₁ from ``slots``, u₂ from ``slots + 1``."""
    u1 = uniforms(keys, counters, slots)
    u2 = uniforms(keys, counters, np.asarray(slots) + 1)
    return np.sqrt(-2.0 * np.log(1.0 - u1)) * np.cos(TAU * u2)


def gamma_draws(shape: np.ndarray, keys: np.ndarray, counters: np.ndarray, streams: np.ndarray,
                n_streams: int) -> np.ndarray:
    """Gamma(shape, 1) variates for shape ≥ 1 by Marsaglia & Tsang's squeeze-and-reject method ("A simple
    method for generating gamma variables", ACM TOMS 26(3), 2000), one per element.

    Element i's attempt m draws its normal from slots 1 + 3(m·n_streams + streams[i]) (+1) and its
    acceptance uniform from the slot after, so a rejection of one element never shifts another's draws.

    Raises:
        ValueError: a shape below 1 (Beta-Bernoulli posteriors never have one).
    """
    a = np.ascontiguousarray(shape, dtype=np.float64)
    if a.size and not (a >= 1.0).all():
        raise ValueError(f"gamma_draws: shape must be >= 1, got {a[~(a >= 1.0)][0]!r}")
    keys = np.ascontiguousarray(keys, dtype=np.uint64)
    counters = np.ascontiguousarray(counters, dtype=np.int64)
    streams = np.ascontiguousarray(streams, dtype=np.int64)
    d = a - 1.0 / 3.0
    c = 1.0 / np.sqrt(9.0 * d)
    out = np.empty_like(a)
    pending = np.arange(a.size)
    attempt = 0
    with np.errstate(divide="ignore", invalid="ignore"):
        while pending.size:
            base = 1 + 3 * (attempt * n_streams + streams[pending])
            x = normal_draws(keys[pending], counters[pending], base)
            u = uniforms(keys[pending], counters[pending], base + 2)
            dp = d[pending]
            v = 1.0 + c[pending] * x
            v3 = v * v * v
            x2 = x * x
            accept = (v > 0.0) & ((u < 1.0 - 0.0331 * x2 * x2) | (np.log(u) < 0.5 * x2 + dp * (1.0 - v3 + np.log(v3))))
            out[pending[accept]] = (dp * v3)[accept]
            pending = pending[~accept]
            attempt += 1
    return out


def beta_draws(alpha: np.ndarray, beta: np.ndarray, keys: np.ndarray, counters: np.ndarray, arms: np.ndarray,
               n_arms: int) -> np.ndarray:
    """Beta(α, β) variates (α, β ≥ 1) as X/(X + Y), X ~ Gamma(α), Y ~ Gamma(β); arm a uses streams 2a and 2a + 1."""
    arms = np.asarray(arms, dtype=np.int64)
    x = gamma_draws(alpha, keys, counters, 2 * arms, 2 * n_arms)
    y = gamma_draws(beta, keys, counters, 2 * arms + 1, 2 * n_arms)
    return x / (x + y)
