"""S-UCB, FedSpine's "Smooth Upper Confidence Bound" bandit (Yao et al., arXiv 2501.02438), as simfed
defines it (DESIGN §3; reconstruction in ``reference/fedspine-paper-notes.md`` §4.2): a tree-structured
continuum bandit per device in the style of HOO (Bubeck, Munos, Stoltz & Szepesvári, "X-Armed
Bandits", JMLR 2011), with discounted statistics because the rewards drift as training goes on.

The arm space is the unit square (u_p, u_r) (:class:`~simfed.decisions.arms.ArmSpace`: p = u_p·p_max,
r = 2^(log2 r_min + u_r·log2(r_max/r_min)) rounded to an integer rank). Each node v is a cell of the
square at depth h(v) with discounted statistics: n_v = Σ γ^(t−s) over the device's plays s that fell
in the cell, and μ_v the matching discounted mean reward (t counts the device's own plays).

    U_v = μ_v + c·√(2 ln n / n_v) + ν·ρ^h(v)       (Eq. 7; n = n_root; U_v = +∞ if v was never played)
    B_v = min(U_v, max(B_child1, B_child2))       (Eq. 8; B = +∞ for a leaf never played)

``select`` descends from the root to the child with the larger B (ties at random) until it reaches a
leaf, plays a point of that cell (its centre, or a seeded uniform point), and splits the leaf in two
by halving its longer side (in unit coordinates; equal sides alternate p, r, p, … by depth).
``update`` discounts every node by γ once per play and adds the reward to the n and sum of every
node on the played path. ν·ρ^h is the "smooth" term: if the mean reward is Lipschitz on the square,
no point of a depth-h cell beats its centre by more than about ν·ρ^h. A leaf at ``max_depth`` is
not split further (the rank axis is integer anyway; this bounds the tree at 2^(max_depth+1) nodes).

Defaults (docs/decisions.md): γ = 0.9 (memory of about 10 plays; DESIGN §3), c = 0.5, ν = 0.5
(the reward varies by at most about that much across the square), ρ = 2^(−1/2) (a cell's diameter
halves every two splits), centre play, ``max_depth = 10``. Set ``discount=1`` for plain (stationary) HOO.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from simfed.decisions.arms import ArmSpace
from simfed.decisions.policies.base import PerDevicePolicy, argmax_random_ties
from simfed.options import Annotated, Choices, Range
from simfed.records import Arm

PLAY_POINTS = ("centre", "uniform")
DISCOUNT_MODES = ("visits", "plays")


@dataclass
class Cell:
    """One node of a device's S-UCB tree: a box of the unit square and its discounted statistics."""

    lo: tuple[float, float]
    hi: tuple[float, float]
    depth: int
    n: float = 0.0  # discounted play count, as of play number ``stamp``
    total: float = 0.0  # discounted reward sum, as of ``stamp``
    stamp: int = 0
    ewma: float = 0.0  # the cell's exponentially weighted mean reward over its own visits ("visits" mode)
    played: bool = False
    visits: int = 0  # plays that fell in the cell (undiscounted; decides when a leaf splits)
    children: list["Cell"] = field(default_factory=list)

    def centre(self) -> tuple[float, float]:
        return (0.5 * (self.lo[0] + self.hi[0]), 0.5 * (self.lo[1] + self.hi[1]))

    def contains(self, u: tuple[float, float]) -> bool:
        return all(self.lo[k] <= u[k] <= self.hi[k] for k in (0, 1))


class SUCBTree:
    """The S-UCB learner of one device. Its choice is ``(point, path)``; ``point`` is on the unit square."""

    def __init__(self, seed: int, *, discount: float = 0.9, exploration: float = 0.2, nu: float = 0.3,
                 rho: float = 2 ** -0.5, play: str = "centre", max_depth: int = 10,
                 axes: Sequence[int] = (0, 1), fixed_point: tuple[float, float] = (0.5, 0.5),
                 discount_by: str = "visits", split_after: float = 0.0) -> None:
        self.discount = discount
        self.split_after = split_after
        self.discount_by = discount_by
        self.exploration = exploration
        self.nu = nu
        self.rho = rho
        self.play = play
        self.max_depth = max_depth
        self.axes = tuple(axes)
        self.fixed_point = fixed_point
        lo = tuple(0.0 if k in self.axes else fixed_point[k] for k in (0, 1))
        hi = tuple(1.0 if k in self.axes else fixed_point[k] for k in (0, 1))
        self.root = Cell(lo=lo, hi=hi, depth=0)  # type: ignore[arg-type]
        self._rng = random.Random(seed)
        self._t = 0  # plays learned so far

    # --- statistics -----------------------------------------------------------------------------
    def _decayed(self, cell: Cell) -> tuple[float, float]:
        if self.discount_by == "visits":
            return cell.n, cell.ewma * cell.n
        if self.discount >= 1.0 or cell.stamp == self._t:
            return cell.n, cell.total
        f = self.discount ** (self._t - cell.stamp)
        return cell.n * f, cell.total * f

    def n_of(self, cell: Cell) -> float:
        return self._decayed(cell)[0]

    def mean_of(self, cell: Cell) -> float:
        n, s = self._decayed(cell)
        return s / n if n > 0 else float("nan")

    def u_value(self, cell: Cell, log_n: float) -> float:
        n, s = self._decayed(cell)
        if not cell.played or n <= 1e-300:
            return math.inf
        return s / n + self.exploration * math.sqrt(2.0 * log_n / n) + self.nu * self.rho**cell.depth

    def b_values(self) -> dict[int, float]:
        """B-value of every node (keyed by ``id(cell)``), computed bottom-up."""
        n_root = self.n_of(self.root)
        log_n = math.log(n_root) if n_root > 1.0 else 0.0
        out: dict[int, float] = {}

        def visit(cell: Cell) -> float:
            u = self.u_value(cell, log_n)
            if not cell.children:
                b = u  # +inf for a leaf never played; a played leaf at max depth keeps its U
            else:
                b = min(u, max(visit(c) for c in cell.children))
            out[id(cell)] = b
            return b

        visit(self.root)
        return out

    # --- the two verbs --------------------------------------------------------------------------
    def choose(self) -> tuple[tuple[float, float], list[Cell]]:
        b = self.b_values()
        path = [self.root]
        cell = self.root
        while cell.children:
            cell = cell.children[argmax_random_ties([b[id(c)] for c in cell.children], self._rng)]
            path.append(cell)
        point = self._point_in(cell)
        if cell.visits + 1 >= self.split_threshold(cell.depth):
            self._split(cell)
        return point, path

    def split_threshold(self, depth: int) -> int:
        """Plays of a depth-``depth`` leaf before it splits: max(1, ceil(m·ρ^−h)), m = ``split_after``.

        m = 0 is HOO (split on the first play). m > 0 is HCT-style (Azar, Lazaric & Brunskill, ICML 2014):
        a leaf is replayed until its mean is known to about its smoothness scale ν·ρ^h, so the tree
        refines only where the evidence supports it and each device plays fewer distinct points.
        """
        if self.split_after <= 0:
            return 1
        return max(1, math.ceil(self.split_after * self.rho ** (-depth) - 1e-9))

    def learn(self, choice: tuple[tuple[float, float], list[Cell]], reward: float) -> None:
        _, path = choice
        self._t += 1
        for cell in path:
            cell.visits += 1
        if self.discount_by == "visits":
            for cell in path:
                cell.n += 1.0
                weight = max(1.0 - self.discount, 1.0 / cell.n)
                cell.ewma += weight * (reward - cell.ewma)
                cell.played = True
            return
        for cell in path:
            n, s = self._decayed(cell)
            cell.n = n + 1.0
            cell.total = s + reward
            cell.stamp = self._t
            cell.played = True

    # --- geometry -------------------------------------------------------------------------------
    def _point_in(self, cell: Cell) -> tuple[float, float]:
        if self.play == "centre":
            return cell.centre()
        return tuple(self._rng.uniform(cell.lo[k], cell.hi[k]) if k in self.axes else cell.lo[k] for k in (0, 1))  # type: ignore[return-value]

    def _split(self, cell: Cell) -> None:
        if cell.children or cell.depth >= self.max_depth or not self.axes:
            return
        sides = {k: cell.hi[k] - cell.lo[k] for k in self.axes}
        longest = max(sides.values())
        candidates = [k for k in self.axes if sides[k] >= longest - 1e-15]
        axis = candidates[cell.depth % len(candidates)] if len(candidates) > 1 else candidates[0]
        mid = 0.5 * (cell.lo[axis] + cell.hi[axis])
        lo_hi = list(cell.hi)
        lo_hi[axis] = mid
        hi_lo = list(cell.lo)
        hi_lo[axis] = mid
        cell.children = [
            Cell(lo=cell.lo, hi=tuple(lo_hi), depth=cell.depth + 1),  # type: ignore[arg-type]
            Cell(lo=tuple(hi_lo), hi=cell.hi, depth=cell.depth + 1),  # type: ignore[arg-type]
        ]

    def size(self) -> int:
        stack, count = [self.root], 0
        while stack:
            c = stack.pop()
            count += 1
            stack.extend(c.children)
        return count


class SUCB(PerDevicePolicy):
    """FedSpine's S-UCB: one discounted HOO tree per device over the (p, log r) square.

    ``fix_p`` / ``fix_r`` pin one coordinate (the ``fedspine-fixed-ratio`` / ``fedspine-fixed-rank``
    ablations): the tree then splits only the other axis.
    """

    name = "sucb"

    def __init__(self, *, arm_space: ArmSpace | None = None, seed: int = 0,
                 discount: Annotated[float, Range(gt=0, le=1), "γ"] = 0.9,
                 exploration: Annotated[float, Range(ge=0), "c"] = 0.2,
                 nu: Annotated[float, Range(ge=0), "ν"] = 0.3,
                 rho: Annotated[float, Range(gt=0, lt=1), "ρ"] = 2 ** -0.5,
                 play: Annotated[str, Choices(PLAY_POINTS)] = "centre",
                 max_depth: Annotated[int, Range(ge=0)] = 10,
                 fix_p: Annotated[float | None, Range(ge=0)] = None,
                 fix_r: Annotated[int | None, Range(ge=1)] = None,
                 discount_by: Annotated[str, Choices(DISCOUNT_MODES)] = "visits",
                 split_after: Annotated[float, Range(ge=0), "m"] = 0.0) -> None:
        super().__init__(arm_space=arm_space, seed=seed)
        self._check_options(locals())
        if fix_p is not None and not (0.0 <= fix_p <= self.arm_space.p_max):
            raise ValueError(f"sucb: fix_p={fix_p!r} is outside [0, p_max={self.arm_space.p_max}]")
        if fix_r is not None and not (self.arm_space.r_min <= fix_r <= self.arm_space.r_max):
            raise ValueError(f"sucb: fix_r={fix_r!r} is outside [{self.arm_space.r_min}, {self.arm_space.r_max}]")
        self.discount = discount
        self.exploration = exploration
        self.nu = nu
        self.rho = rho
        self.play = play
        self.max_depth = int(max_depth)
        self.fix_p = fix_p
        self.fix_r = fix_r
        self.discount_by = discount_by
        self.split_after = split_after

    def _new_learner(self, seed: int) -> SUCBTree:
        fixed = self.arm_space.to_unit(Arm(p=self.fix_p or 0.0, r=self.fix_r or self.arm_space.r_min))
        axes = tuple(k for k, pinned in ((0, self.fix_p is not None), (1, self.fix_r is not None)) if not pinned)
        return SUCBTree(seed, discount=self.discount, exploration=self.exploration, nu=self.nu, rho=self.rho,
                        play=self.play, max_depth=self.max_depth, axes=axes, fixed_point=fixed,
                        discount_by=self.discount_by, split_after=self.split_after)

    def _arm_of(self, choice) -> Arm:
        (u_p, u_r), _ = choice
        p = self.fix_p if self.fix_p is not None else self.arm_space.p_at(u_p)
        r = self.fix_r if self.fix_r is not None else self.arm_space.rank_at(u_r)
        return Arm(p=float(p), r=int(r))

    @classmethod
    def _test_params(cls) -> list[dict]:
        return [{}, {"play": "uniform", "discount": 1.0}, {"fix_r": 8}, {"fix_p": 0.1, "max_depth": 3}]
