"""The arm space of FedSpine's per-device decision: a pruning increment ``p`` and a LoRA rank ``r``.

DESIGN §3: p ∈ [0, p_max] is the round's pruning increment; r ∈ [r_min, r_max] is searched on a
log2 scale and rounded to an integer rank when played. Continuum policies (S-UCB, HOO-style; Bubeck
et al., "X-Armed Bandits", JMLR 2011) work on the *unit square* ``(u_p, u_r) ∈ [0, 1]²``, with
``p = u_p · p_max`` and ``log2 r = log2 r_min + u_r · (log2 r_max − log2 r_min)``; discrete
policies (UCB1, EXP3, …) work on a finite :meth:`ArmSpace.grid`.

Rank rounding (why log2): the cost of a LoRA rank is linear in r while its benefit saturates, so
equal steps in log r are equal relative steps in cost. A point of the square is played as the
integer rank nearest to ``2**x`` (``floor(2**x + 0.5)``, halves round up), clamped to
``[r_min, r_max]``; with ``rank_rounding="pow2"`` it is the nearest power of two in log space
instead (``2**floor(x + 0.5)``), which is what hardware-friendly deployments use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from simfed.records import Arm

RANK_ROUNDINGS = ("integer", "pow2")


@dataclass(frozen=True)
class ArmSpace:
    """The box of arms ``[0, p_max] × [r_min, r_max]`` and its unit-square coordinates."""

    p_max: float = 0.2
    r_min: int = 2
    r_max: int = 32
    rank_rounding: str = "integer"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.p_max) and 0.0 <= self.p_max < 1.0):
            raise ValueError(f"ArmSpace.p_max must be in [0, 1), got {self.p_max!r}")
        if int(self.r_min) != self.r_min or int(self.r_max) != self.r_max or not (1 <= self.r_min <= self.r_max):
            raise ValueError(f"ArmSpace ranks need integers 1 <= r_min <= r_max, got r_min={self.r_min!r}, r_max={self.r_max!r}")
        if self.rank_rounding not in RANK_ROUNDINGS:
            raise ValueError(f"ArmSpace.rank_rounding must be one of {RANK_ROUNDINGS}, got {self.rank_rounding!r}")

    # --- unit square <-> arms -------------------------------------------------------------------
    @property
    def log2_span(self) -> float:
        return math.log2(self.r_max) - math.log2(self.r_min)

    def p_at(self, u_p: float) -> float:
        return float(min(max(u_p, 0.0), 1.0)) * self.p_max

    def log2_rank_at(self, u_r: float) -> float:
        return math.log2(self.r_min) + float(min(max(u_r, 0.0), 1.0)) * self.log2_span

    def rank_at(self, u_r: float) -> int:
        """The integer rank played for unit coordinate ``u_r`` (see the module docstring for rounding)."""
        x = self.log2_rank_at(u_r)
        if self.rank_rounding == "pow2":
            r = 2 ** int(math.floor(x + 0.5))
        else:
            r = int(math.floor(2.0**x + 0.5))
        return int(min(max(r, self.r_min), self.r_max))

    def arm_at(self, u_p: float, u_r: float) -> Arm:
        """The playable arm at a point of the unit square."""
        return Arm(p=self.p_at(u_p), r=self.rank_at(u_r))

    def to_unit(self, arm: Arm) -> tuple[float, float]:
        """Unit-square coordinates of an arm (clamped into the box)."""
        u_p = 0.0 if self.p_max == 0 else min(max(arm.p / self.p_max, 0.0), 1.0)
        if self.log2_span == 0:
            u_r = 0.0
        else:
            u_r = (math.log2(min(max(arm.r, self.r_min), self.r_max)) - math.log2(self.r_min)) / self.log2_span
        return float(u_p), float(u_r)

    def contains(self, arm: Arm) -> bool:
        return 0.0 <= arm.p <= self.p_max + 1e-12 and self.r_min <= arm.r <= self.r_max

    def clip(self, arm: Arm) -> Arm:
        return Arm(p=float(min(max(arm.p, 0.0), self.p_max)), r=int(min(max(arm.r, self.r_min), self.r_max)))

    # --- discrete views -------------------------------------------------------------------------
    def grid_ranks(self) -> list[int]:
        """Powers of two from r_min to r_max (r_max included even when it is not a power of two)."""
        ranks = []
        r = self.r_min
        while r < self.r_max:
            ranks.append(r)
            r *= 2
        ranks.append(self.r_max)
        return sorted(set(ranks))

    def grid_ps(self, n_p: int = 5) -> list[float]:
        if n_p < 1:
            raise ValueError(f"n_p must be >= 1, got {n_p}")
        if n_p == 1 or self.p_max == 0:
            return [0.0]
        return [float(x) for x in np.round(np.linspace(0.0, self.p_max, n_p), 12)]

    def grid(self, n_p: int = 5, ranks: list[int] | None = None) -> list[Arm]:
        """The discrete arm set: ``n_p`` evenly spaced ratios in [0, p_max] × ranks (powers of two).

        With the defaults: p ∈ {0, .05, .1, .15, .2} × r ∈ {2, 4, 8, 16, 32}, 25 arms, ordered p-major.
        """
        rs = list(ranks) if ranks is not None else self.grid_ranks()
        for r in rs:
            if not (self.r_min <= r <= self.r_max):
                raise ValueError(f"grid rank {r} is outside [{self.r_min}, {self.r_max}]")
        return [Arm(p=p, r=int(r)) for p in self.grid_ps(n_p) for r in rs]

    def features(self, arm: Arm) -> np.ndarray:
        """Arm features for linear policies: φ = [1, u_p, u_r, u_p·u_r, u_p², u_r²] (u on the unit square).

        The quadratic terms let a linear model represent an interior optimum (a straggler's reward
        peaks at a moderate rank, not at a corner).
        """
        u_p, u_r = self.to_unit(arm)
        return np.array([1.0, u_p, u_r, u_p * u_r, u_p * u_p, u_r * u_r])
