"""Records that cross the three layers (time, accuracy, decisions).

These frozen dataclasses are the whole vocabulary the layers share. The timing engine turns a
:class:`Plan` into a :class:`DeviceTiming`; the trainer turns a :class:`Plan` into a
:class:`DeviceReport`; the server loop folds both into an :class:`Observation`, the only thing a
policy ever sees about a device. Nothing here knows how time, training or decisions work.

Units are in the field names (``_s`` seconds of *simulated* time, ``_bytes``, ``_flops``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Iterable

import numpy as np


@dataclass(frozen=True, order=True)
class Arm:
    """One choice for one device in one round.

    ``p`` is this round's pruning *increment* (the device's sparsity grows by ``p`` until it reaches
    the target ``s_star``); ``r`` is the LoRA rank the device trains at (an integer).
    """

    p: float
    r: int

    def __post_init__(self) -> None:
        if not (self.p >= 0.0 and math.isfinite(self.p)):
            raise ValueError(f"Arm.p must be a finite number >= 0, got {self.p!r}")
        if int(self.r) != self.r or self.r < 1:
            raise ValueError(f"Arm.r must be a positive integer rank, got {self.r!r}")


@dataclass(frozen=True)
class Plan:
    """What the server asks one device to do in one round.

    ``sparsity_before``/``sparsity_after`` are *nominal* sparsities (the fraction of prunable heads
    and MLP channels the device is asked to have removed); the structure a nominal sparsity maps to
    is fixed by :func:`simfed.structure.structure_at`, so the timing layer can cost a plan before any
    training happens.
    """

    round: int
    device_id: str
    arm: Arm
    sparsity_before: float
    sparsity_after: float
    local_iters: int
    tau: int
    base_download: bool = False  # the device also downloads the (pruned) base model this round (its first)
    down_rank: int | None = None  # rank of the adapter modules it downloads (FLoRA: stacked, may be 0); None: arm.r

    @property
    def rank(self) -> int:
        return self.arm.r

    @property
    def download_rank(self) -> int:
        """The rank of the adapter modules the device downloads: ``down_rank``, else its own rank."""
        return self.arm.r if self.down_rank is None else self.down_rank


class Outcome(str, Enum):
    """How a device's participation in a round ended."""

    OK = "ok"  # finished and its update was accepted
    LATE = "late"  # finished after the round's deadline: work discarded
    STRAGGLER = "straggler"  # over-commitment: the round closed after the first K finished
    OFFLINE = "offline"  # went offline mid-round: work lost
    UNAVAILABLE = "unavailable"  # never came online before the round closed
    OOM = "oom"  # the configuration does not fit the device's RAM
    FAILED = "failed"  # finished, but its training diverged (non-finite or exploding update): not aggregated


#: The outcomes in code order: columns store an outcome as its index here (int8).
OUTCOMES: tuple[Outcome, ...] = tuple(Outcome)
OUTCOME_CODE: dict[Outcome, int] = {o: i for i, o in enumerate(OUTCOMES)}
OK_CODE = OUTCOME_CODE[Outcome.OK]


@dataclass(frozen=True)
class DeviceTiming:
    """The simulated timeline of one device in one round (absolute simulated times, seconds).

    Phases a device did not reach are ``nan``. ``end_s`` is when its participation ended, whatever
    the outcome; ``completion_s`` (the paper's T_i) is ``end_s - start_s``.
    """

    round: int
    device_id: str
    outcome: Outcome
    start_s: float  # the round started for this device (it was selected)
    ready_s: float  # it was online and began downloading
    download_end_s: float
    compute_end_s: float
    upload_end_s: float
    end_s: float
    compute_flops: float
    down_bytes: float
    up_bytes: float
    memory_bytes: float

    @property
    def completion_s(self) -> float:
        return self.end_s - self.start_s


@dataclass
class DeviceReport:
    """What a device sends back after its local prune-and-tune (the accuracy layer's output).

    The scalar fields are what a real server observes. ``update`` is the LoRA update itself (factors
    sliced to the device's rank and structure, plus its kept indices); only aggregators look inside.
    """

    round: int
    device_id: str
    arm: Arm
    sparsity_before: float  # measured fraction of prunable parameters removed, at round start
    sparsity_after: float  # the same after the round's pruning steps
    loss_before: float  # mean local training loss over the first iterations of the round
    loss_after: float  # mean local training loss over the last iterations of the round
    update_norm: float  # ||s * B @ A||_F summed over adapted layers
    n_samples: int  # local training examples (aggregation weight)
    rank_after: int | None = None  # the rank of the uploaded update when the device shrank it (HetLoRA); None: arm.r
    update: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Observation:
    """Everything a policy may learn about one device after one round.

    Built by the server loop from the device's :class:`DeviceTiming` and (when it trained and
    reported) its :class:`DeviceReport`. Loss and norm fields are ``nan`` when the device failed or
    when the run has no training (timing-only mode).
    """

    round: int
    device_id: str
    arm: Arm
    outcome: Outcome
    completion_s: float  # T_i (nan if the device never reported)
    round_mean_completion_s: float  # mean T_j over the devices that reported this round
    sparsity_before: float
    sparsity_after: float
    s_star: float
    loss_before: float = float("nan")
    loss_after: float = float("nan")
    update_norm: float = float("nan")
    rank_after: float = float("nan")  # the rank the device shrank its adapter to (HetLoRA self-pruning); nan: not reported

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK


def _column(values: Any, dtype: Any, n: int, owner: str, name: str) -> np.ndarray:
    """``values`` (an array, a sequence or one scalar for all) as a 1-d array of length ``n``."""
    arr = np.asarray(values, dtype=dtype)
    if arr.ndim == 0:
        return np.full(n, arr, dtype=dtype)
    if arr.shape != (n,):
        raise ValueError(f"{owner}.{name}: shape {arr.shape}, expected ({n},) like device_ids")
    return arr


class RecordColumns(Sequence):
    """Columns that also read as a list of records: indexing, iterating and ``==`` build the records once
    (:meth:`rows`, cached) from the subclass's :meth:`_make_rows`; ``len`` does not. The shape shared by
    :class:`PlanBatch`, :class:`ObservationBatch` and the engine's timing rows."""

    __slots__ = ()

    def _make_rows(self) -> list:
        raise NotImplementedError

    def rows(self) -> list:
        """The records (a cached list)."""
        if self._rows is None:
            self._rows = self._make_rows()
        return self._rows

    def __getitem__(self, i):
        return self.rows()[i]

    def __iter__(self):
        return iter(self.rows())

    def __eq__(self, other) -> bool:
        if isinstance(other, (list, type(self))):
            return self.rows() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(round={self.round}, n={len(self)})"


class PlanBatch(RecordColumns):
    """One round's plans as columns, aligned with ``device_ids``; a ``Sequence[Plan]`` as well.

    At 10^6 devices a round's plans cost as much to build as records as to simulate, so methods
    return them as arrays: ``p`` (float64), ``r`` (int64), ``sparsity_before``/``sparsity_after``
    (float64, nominal), ``local_iters``/``tau`` (int64), ``base_download`` (bool) and ``down_rank``
    (int64 >= 0, the rank of the adapter modules downloaded, or None: each plan's ``r``, see
    :attr:`download_rank`); a scalar is spread over every device. Indexing and iterating give :class:`Plan` records (made on first such
    access, then cached), so code written for ``list[Plan]`` reads a batch unchanged.

    Raises:
        ValueError: a column not aligned with ``device_ids``, or an arm outside the rules of
            :class:`Arm` (p finite and >= 0, r a positive integer), or a negative ``down_rank``, naming the
            first such device.
    """

    __slots__ = ("round", "device_ids", "p", "r", "sparsity_before", "sparsity_after", "local_iters", "tau",
                 "base_download", "down_rank", "_rows")

    def __init__(self, round: int, device_ids: Sequence[str], p: Any, r: Any, sparsity_before: Any,
                 sparsity_after: Any, local_iters: Any, tau: Any, base_download: Any = False,
                 down_rank: Any = None) -> None:
        n = len(device_ids)
        self.round = int(round)
        self.device_ids = device_ids if isinstance(device_ids, list) else list(device_ids)
        self.p = _column(p, np.float64, n, "PlanBatch", "p")
        r_in = np.asarray(r)
        self.r = _column(r, np.int64, n, "PlanBatch", "r")
        self.sparsity_before = _column(sparsity_before, np.float64, n, "PlanBatch", "sparsity_before")
        self.sparsity_after = _column(sparsity_after, np.float64, n, "PlanBatch", "sparsity_after")
        self.local_iters = _column(local_iters, np.int64, n, "PlanBatch", "local_iters")
        self.tau = _column(tau, np.int64, n, "PlanBatch", "tau")
        self.base_download = _column(base_download, bool, n, "PlanBatch", "base_download")
        self.down_rank = None if down_rank is None else _column(down_rank, np.int64, n, "PlanBatch", "down_rank")
        if self.down_rank is not None and (self.down_rank < 0).any():
            bad = np.flatnonzero(self.down_rank < 0)
            raise ValueError(f"PlanBatch: device {self.device_ids[bad[0]]!r}: down_rank must be >= 0, "
                             f"got {self.down_rank[bad[0]]!r}")
        bad = np.flatnonzero(~(np.isfinite(self.p) & (self.p >= 0)))
        if bad.size:
            raise ValueError(f"PlanBatch: device {self.device_ids[bad[0]]!r}: p must be a finite number >= 0, "
                             f"got {self.p[bad[0]]!r}")
        if r_in.dtype.kind == "f" and r_in.ndim and not np.array_equal(r_in, self.r):
            bad = np.flatnonzero(r_in != self.r)
            raise ValueError(f"PlanBatch: device {self.device_ids[bad[0]]!r}: r must be an integer rank, got {r_in[bad[0]]!r}")
        bad = np.flatnonzero(self.r < 1)
        if bad.size:
            raise ValueError(f"PlanBatch: device {self.device_ids[bad[0]]!r}: r must be a positive integer rank, "
                             f"got {self.r[bad[0]]!r}")
        self._rows: list[Plan] | None = None

    @classmethod
    def of(cls, plans: "Iterable[Plan] | PlanBatch", round: int | None = None) -> "PlanBatch":
        """``plans`` as a batch (a batch is returned as it is). ``round``: for an empty list."""
        if isinstance(plans, PlanBatch):
            return plans
        plans = list(plans)
        if plans:
            round = plans[0].round
            bad = [p for p in plans if p.round != round]
            if bad:
                raise ValueError(f"PlanBatch.of: plans of rounds {round} and {bad[0].round} in one batch")
        return cls(round or 0, [p.device_id for p in plans], [p.arm.p for p in plans], [p.arm.r for p in plans],
                   [p.sparsity_before for p in plans], [p.sparsity_after for p in plans],
                   [p.local_iters for p in plans], [p.tau for p in plans], [p.base_download for p in plans],
                   [p.download_rank for p in plans] if any(p.down_rank is not None for p in plans) else None)

    @property
    def download_rank(self) -> np.ndarray:
        """Per plan, the rank of the adapter modules the device downloads (int64): ``down_rank``, else ``r``."""
        return self.r if self.down_rank is None else self.down_rank

    def with_columns(self, **columns: Any) -> "PlanBatch":
        """A copy with some columns replaced (``r``, ``base_download``, ...; ``down_rank`` None follows ``r``)."""
        values = {k: getattr(self, k) for k in ("p", "r", "sparsity_before", "sparsity_after", "local_iters", "tau",
                                                 "base_download", "down_rank")}
        unknown = set(columns) - set(values)
        if unknown:
            raise ValueError(f"PlanBatch.with_columns: unknown column(s) {sorted(unknown)}")
        values.update(columns)
        return PlanBatch(self.round, self.device_ids, **values)

    def _make_rows(self) -> list[Plan]:
        r = self.round
        down = [None] * len(self) if self.down_rank is None else self.down_rank.tolist()
        return [
            Plan(r, d, Arm(p, k), sb, sa, li, t, bd, dr)
            for d, p, k, sb, sa, li, t, bd, dr in zip(
                self.device_ids, self.p.tolist(), self.r.tolist(), self.sparsity_before.tolist(),
                self.sparsity_after.tolist(), self.local_iters.tolist(), self.tau.tolist(), self.base_download.tolist(),
                down)
        ]

    def __len__(self) -> int:
        return len(self.device_ids)

    def __reduce__(self):
        return (PlanBatch, (self.round, self.device_ids, self.p, self.r, self.sparsity_before, self.sparsity_after,
                            self.local_iters, self.tau, self.base_download, self.down_rank))

    def take(self, index: np.ndarray) -> "PlanBatch":
        """The plans at ``index`` (int positions or a bool mask), in that order."""
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        ids = self.device_ids
        return PlanBatch(self.round, [ids[i] for i in index.tolist()], self.p[index], self.r[index],
                         self.sparsity_before[index], self.sparsity_after[index], self.local_iters[index],
                         self.tau[index], self.base_download[index],
                         None if self.down_rank is None else self.down_rank[index])


#: The float columns of an :class:`ObservationBatch` (NaN where not measured).
OBSERVATION_FLOATS = ("completion_s", "round_mean_completion_s", "sparsity_before", "sparsity_after", "s_star",
                      "loss_before", "loss_after", "update_norm", "rank_after")


class ObservationBatch(RecordColumns):
    """One round's observations as columns aligned with ``device_ids``; a ``Sequence[Observation]`` as well.

    Columns: ``p`` and ``r`` (the arm played), ``outcome`` (int8 codes into :data:`OUTCOMES`) and the float
    columns :data:`OBSERVATION_FLOATS` (a scalar is spread over every device; a missing one is NaN).
    Records are built on first indexing or iteration, as for :class:`PlanBatch`.
    """

    __slots__ = ("round", "device_ids", "p", "r", "outcome", *OBSERVATION_FLOATS, "_rows")

    def __init__(self, round: int, device_ids: Sequence[str], p: Any, r: Any, outcome: Any, **floats: Any) -> None:
        n = len(device_ids)
        unknown = set(floats) - set(OBSERVATION_FLOATS)
        if unknown:
            raise ValueError(f"ObservationBatch: unknown column(s) {sorted(unknown)}; known: {', '.join(OBSERVATION_FLOATS)}")
        self.round = int(round)
        self.device_ids = device_ids if isinstance(device_ids, list) else list(device_ids)
        self.p = _column(p, np.float64, n, "ObservationBatch", "p")
        self.r = _column(r, np.int64, n, "ObservationBatch", "r")
        self.outcome = _column(outcome, np.int8, n, "ObservationBatch", "outcome")
        for name in OBSERVATION_FLOATS:
            setattr(self, name, _column(floats.get(name, math.nan), np.float64, n, "ObservationBatch", name))
        self._rows: list[Observation] | None = None

    @classmethod
    def of(cls, observations: "Iterable[Observation] | ObservationBatch", round: int | None = None) -> "ObservationBatch":
        """``observations`` as a batch (a batch is returned as it is)."""
        if isinstance(observations, ObservationBatch):
            return observations
        obs = list(observations)
        if obs:
            round = obs[0].round
        return cls(round or 0, [o.device_id for o in obs], [o.arm.p for o in obs], [o.arm.r for o in obs],
                   [OUTCOME_CODE[Outcome(o.outcome)] for o in obs],
                   **{name: [getattr(o, name) for o in obs] for name in OBSERVATION_FLOATS})

    @property
    def ok(self) -> np.ndarray:
        """Bool array: the device's update was accepted."""
        return self.outcome == OK_CODE

    def columns(self) -> dict[str, np.ndarray]:
        """The observation columns a policy's ``update_array`` takes (``ok``, ``outcome`` as strings, the floats)."""
        values = np.array([o.value for o in OUTCOMES], dtype=object)
        return {"ok": self.ok, "outcome": values[self.outcome],
                **{name: getattr(self, name) for name in OBSERVATION_FLOATS}}

    def _make_rows(self) -> list[Observation]:
        r = self.round
        cols = [getattr(self, name).tolist() for name in OBSERVATION_FLOATS]
        return [
            Observation(r, d, Arm(p, k), OUTCOMES[o], *values)
            for d, p, k, o, values in zip(self.device_ids, self.p.tolist(), self.r.tolist(), self.outcome.tolist(),
                                          zip(*cols))
        ]

    def __len__(self) -> int:
        return len(self.device_ids)


@dataclass(frozen=True)
class Event:
    """One line of the event log: something that happened at a simulated time."""

    time_s: float
    round: int
    device_id: str  # "" for server events
    kind: str  # e.g. round_start, select, online, download_end, compute_end, upload_end, drop, oom, late, round_end
    detail: str = ""
