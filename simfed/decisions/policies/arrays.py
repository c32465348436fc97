"""Vectorised per-device state: the learners of all devices of one policy as arrays with one row per device.

A :class:`DeviceArrays` is what a :class:`~simfed.decisions.policies.base.PerDevicePolicy` keeps with
``backend="arrays"``. Row i is the device at position i of the policy's device table
(:meth:`Policy.register`); a fresh row is a fresh learner. Each subclass reproduces one learner class
operation for operation (the same floating-point expressions in the same order, transcendental functions
of integers from tables built with :mod:`math`, the rest through numpy on both sides), and draws its random
numbers from :mod:`~simfed.decisions.policies.counter_rng` keyed by the same per-device seed, so its choices
are the per-device learners' choices (``backend="learners"``), which ``tests/decisions/test_vectorised.py``
checks round by round.

Common per-row fields: ``key`` (the device's 63-bit seed), ``sel`` (its selections so far: the counter of
its random draws) and ``pend_round`` (the round of its pending choice, −1 for none). A selected device that
never reports is simply overwritten at its next selection, as a per-device learner's pending choice is.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from simfed.decisions.policies.counter_rng import pick_index, uniforms
from simfed.records import Arm

Field = tuple[Any, tuple[int, ...], Any]  # dtype, trailing shape, fill value


class _LogTable:
    """``math.log(k)`` for integers k ≥ 1 (0 at k = 0), grown on demand: integer logarithms computed once
    with :mod:`math`, so the arrays use exactly the values a per-device learner computes."""

    def __init__(self) -> None:
        self.values = np.zeros(1)

    def __call__(self, k: np.ndarray) -> np.ndarray:
        k = np.asarray(k, dtype=np.int64)
        top = int(k.max()) if k.size else 0
        if top >= self.values.size:
            size = max(top + 1, 2 * self.values.size)
            self.values = np.array([0.0] + [math.log(i) for i in range(1, size)])
        return self.values[k]


log_int = _LogTable()


def argmax_ties(values: np.ndarray, keys: np.ndarray, counters: np.ndarray, slot: int = 0,
                tol: float = 0.0) -> np.ndarray:
    """Row-wise :func:`~simfed.decisions.policies.base.argmax_random_ties` with counter-based draws.

    ``values`` [m, K]; the candidates of a row are the entries ≥ its maximum − ``tol``; a row with one
    candidate takes it, a row with c > 1 takes candidate ⌊u·c⌋ (in index order), u = uniform(key, counter, slot).
    """
    best = values.max(axis=1)
    cand = values >= (best - tol)[:, None]
    out = np.argmax(cand, axis=1)
    n_cand = cand.sum(axis=1)
    tied = np.flatnonzero(n_cand > 1)
    if tied.size:
        k = pick_index(uniforms(keys[tied], counters[tied], slot), n_cand[tied])
        out[tied] = np.argmax(np.cumsum(cand[tied], axis=1) > k[:, None], axis=1)
    return out


def sequential_row_sum(values: np.ndarray) -> np.ndarray:
    """Row sums added left to right (as Python's ``sum`` does; numpy's ``sum`` adds pairwise)."""
    total = values[:, 0].copy()
    for j in range(1, values.shape[1]):
        total += values[:, j]
    return total


def clip_rewards(x: np.ndarray) -> np.ndarray:
    """:func:`~simfed.decisions.policies.base.clip01` elementwise."""
    return np.where(x < 0.0, 0.0, np.where(x > 1.0, 1.0, x))


class DeviceArrays(abc.ABC):
    """The state of all devices of one policy (see the module docstring). Subclasses declare their row
    fields (:meth:`_fields`) and implement :meth:`_choose` and :meth:`_learn` over a batch of unique rows."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.n = 0
        self._cap = 0
        for name, (dtype, tail, fill) in self._all_fields().items():
            if name in ("n", "owner") or name.startswith("_") or hasattr(type(self), name):
                raise TypeError(f"{type(self).__name__}: field name {name!r} clashes with an attribute")
            setattr(self, name, np.full((0, *tail), fill, dtype=dtype))

    # --- layout ------------------------------------------------------------------------------------
    def _fields(self) -> dict[str, Field]:
        """Per-row fields of the subclass: name -> (dtype, trailing shape, initial value)."""
        return {}

    def _all_fields(self) -> dict[str, Field]:
        return {"key": (np.uint64, (), 0), "sel": (np.int64, (), 0), "pend_round": (np.int64, (), -1), **self._fields()}

    def add_rows(self, keys: Sequence[int]) -> None:
        """Append fresh rows (fresh learners) for devices with seeds ``keys``."""
        k = len(keys)
        if self.n + k > self._cap:
            cap = max(self.n + k, 2 * self._cap, 16)
            for name, (dtype, tail, fill) in self._all_fields().items():
                old = getattr(self, name)
                new = np.full((cap, *old.shape[1:]), fill, dtype=dtype)
                new[: self.n] = old[: self.n]
                setattr(self, name, new)
            self._cap = cap
        self.key[self.n : self.n + k] = np.asarray(list(keys), dtype=np.uint64)
        self.n += k

    def nbytes(self) -> int:
        """Bytes held by the arrays (allocated capacity included)."""
        return sum(getattr(self, name).nbytes for name in self._all_fields())

    # --- the two verbs -----------------------------------------------------------------------------
    def select(self, round: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Choose for ``rows`` (unique positions); ``(p, r)`` arrays in that order; the choices become pending."""
        counters = self.sel[rows]
        self.sel[rows] = counters + 1
        p, r = self._choose(rows, counters)
        self.pend_round[rows] = round
        return p, r

    def select_arms(self, round: int, rows: np.ndarray, ids: Sequence[str]) -> dict[str, Arm]:
        """:meth:`select` as the dict interface returns it."""
        p, r = self.select(round, rows)
        return {d: Arm(p=pp, r=rr) for d, pp, rr in zip(ids, p.tolist(), r.tolist())}

    def update(self, round: int, rows: np.ndarray, ok: np.ndarray, rewards: np.ndarray, ids: Sequence[str]) -> None:
        """Learn the rewards of ``rows`` (NaN: none, allowed where not ``ok``: counts 0); all checks first.

        Raises:
            ValueError: a device given twice, one with no choice pending from ``round``, or an ok device
                without a reward (each message names the device).
        """
        if rows.size and np.bincount(rows).max() > 1:
            dev = ids[int(np.flatnonzero(np.bincount(rows) > 1)[0])]
            raise ValueError(f"{self.owner}.update: observation for device {dev!r} in round {round}, "
                             "but no arm was selected for it in that round (it appears twice)")
        bad = np.flatnonzero(self.pend_round[rows] != round)
        if bad.size:
            raise ValueError(f"{self.owner}.update: observation for device {ids[rows[bad[0]]]!r} in round {round}, "
                             "but no arm was selected for it in that round")
        missing = np.isnan(rewards)
        bad = np.flatnonzero(missing & ok)
        if bad.size:
            raise ValueError(f"{self.owner}.update: no reward for device {ids[rows[bad[0]]]!r} in round {round}")
        self._learn(rows, clip_rewards(np.where(missing, 0.0, rewards)))
        self.pend_round[rows] = -1

    @abc.abstractmethod
    def _choose(self, rows: np.ndarray, counters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The arms of ``rows`` (``counters``: their selection counts before this one); record what learning needs."""

    @abc.abstractmethod
    def _learn(self, rows: np.ndarray, rewards: np.ndarray) -> None:
        """Learn clipped ``rewards`` for the pending choices of ``rows``."""

    # --- checkpoints -------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The learned state as plain arrays (copies, trimmed to the rows in use)."""
        return {name: getattr(self, name)[: self.n].copy() for name in self._all_fields()}

    def load(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state` (on arrays built with the same arguments).

        Raises:
            ValueError: a field missing or extra, or of the wrong shape.
        """
        fields = self._all_fields()
        if set(state) != set(fields):
            extra = sorted(set(state) ^ set(fields))
            raise ValueError(f"{self.owner}.load_state_dict: array field {extra[0]!r} does not belong to this state")
        n = len(state["key"])
        for name, (dtype, tail, _) in fields.items():
            arr = np.array(state[name], dtype=dtype)
            if arr.shape[0] != n or arr.shape[1:] != tuple(tail):
                raise ValueError(f"{self.owner}.load_state_dict: field {name!r} has shape {arr.shape}, "
                                 f"expected ({n}, {', '.join(map(str, tail))})")
            setattr(self, name, arr)
        self.n = self._cap = n


class DiscreteArrays(DeviceArrays):
    """Arrays of a bandit over a finite arm list: a choice is an arm index (``pend_arm``)."""

    def __init__(self, owner: str, arms: Sequence[Arm]) -> None:
        self.arms = list(arms)
        self.n_arms = len(self.arms)
        self.p_of = np.array([a.p for a in self.arms], dtype=np.float64)
        self.r_of = np.array([a.r for a in self.arms], dtype=np.int64)
        super().__init__(owner)

    def _all_fields(self) -> dict[str, Field]:
        return {**super()._all_fields(), "pend_arm": (np.int64, (), 0)}

    def _choose(self, rows: np.ndarray, counters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = self._choose_index(rows, counters)
        self.pend_arm[rows] = idx
        return self.p_of[idx], self.r_of[idx]

    def select_arms(self, round: int, rows: np.ndarray, ids: Sequence[str]) -> dict[str, Arm]:
        self.select(round, rows)
        arms = self.arms
        return {d: arms[i] for d, i in zip(ids, self.pend_arm[rows].tolist())}

    def _learn(self, rows: np.ndarray, rewards: np.ndarray) -> None:
        self._learn_index(rows, self.pend_arm[rows], rewards)

    @abc.abstractmethod
    def _choose_index(self, rows: np.ndarray, counters: np.ndarray) -> np.ndarray:
        """Arm indices of ``rows``."""

    @abc.abstractmethod
    def _learn_index(self, rows: np.ndarray, arms: np.ndarray, rewards: np.ndarray) -> None:
        """Learn ``rewards`` of arm indices ``arms`` for ``rows``."""


class RandomArrays(DiscreteArrays):
    """Uniformly random arms: arm ⌊u·K⌋ with u = uniform(key, selection, 0)."""

    def _choose_index(self, rows: np.ndarray, counters: np.ndarray) -> np.ndarray:
        return pick_index(uniforms(self.key[rows], counters, 0), np.full(rows.size, self.n_arms))

    def _learn_index(self, rows: np.ndarray, arms: np.ndarray, rewards: np.ndarray) -> None:
        return None
