"""Records that cross the three layers (time, accuracy, decisions).

These frozen dataclasses are the whole vocabulary the layers share. The timing engine turns a
:class:`Plan` into a :class:`DeviceTiming`; the trainer turns a :class:`Plan` into a
:class:`DeviceReport`; the server loop folds both into an :class:`Observation`, the only thing a
policy ever sees about a device. Nothing here knows how time, training or decisions work.

Units are in the field names (``_s`` seconds of *simulated* time, ``_bytes``, ``_flops``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


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

    @property
    def rank(self) -> int:
        return self.arm.r


class Outcome(str, Enum):
    """How a device's participation in a round ended."""

    OK = "ok"  # finished and its update was accepted
    LATE = "late"  # finished after the round's deadline: work discarded
    STRAGGLER = "straggler"  # over-commitment: the round closed after the first K finished
    OFFLINE = "offline"  # went offline mid-round: work lost
    UNAVAILABLE = "unavailable"  # never came online before the round closed
    OOM = "oom"  # the configuration does not fit the device's RAM
    FAILED = "failed"  # finished, but its training diverged (non-finite or exploding update): not aggregated


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

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK


@dataclass(frozen=True)
class Event:
    """One line of the event log: something that happened at a simulated time."""

    time_s: float
    round: int
    device_id: str  # "" for server events
    kind: str  # e.g. round_start, select, online, download_end, compute_end, upload_end, drop, oom, late, round_end
    detail: str = ""
