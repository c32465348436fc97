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

Defaults (docs/decisions.md): γ = 0.9 (memory of about 10 plays; DESIGN §3), c = 0.2, ν = 0.3
(chosen on the bandit studies; ν is about the spread of the reward across the square), ρ = 2^(−1/2) (a cell's diameter
halves every two splits), centre play, ``max_depth = 10``. Set ``discount=1`` for plain (stationary) HOO.

Random draws (ties in the descent, uniform play points): with ``rng="mersenne"`` a tree owns a
``random.Random``; with ``rng="counter"`` a tie at descent step ℓ takes child ⌊2u⌋ with u = uniform(device
key, selection, slot ℓ), and a uniform play point's axis k uses slot ``PLAY_SLOT + k``
(:mod:`.counter_rng`). :class:`SUCBArrays` keeps the trees of all devices as node tables
[devices, nodes] (visits, children, parents, depths and the discounted statistics) and computes the
B-values bottom-up by depth and the descent level by level for all devices at once, with those draws.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simfed.decisions.arms import ArmSpace
from simfed.decisions.policies.arrays import DeviceArrays, Field, log_int
from simfed.decisions.policies.base import BACKENDS, PerDevicePolicy, argmax_random_ties
from simfed.decisions.policies.counter_rng import CounterStream, learner_rng, pick_index, uniforms
from simfed.options import Annotated, Choices, Range
from simfed.records import Arm

PLAY_POINTS = ("centre", "uniform")
DISCOUNT_MODES = ("visits", "plays")
#: Counter-based slot of a uniform play point's axis k: ``PLAY_SLOT + k`` (ties use slot = descent step).
PLAY_SLOT = 1 << 20


def split_threshold(depth: int, split_after: float, rho: float) -> int:
    """Plays of a depth-``depth`` leaf before it splits: max(1, ceil(m·ρ^−h)), m = ``split_after``.

    m = 0 is HOO (split on the first play). m > 0 is HCT-style (Azar, Lazaric & Brunskill, ICML 2014):
    a leaf is replayed until its mean is known to about its smoothness scale ν·ρ^h, so the tree
    refines only where the evidence supports it and each device plays fewer distinct points.
    """
    if split_after <= 0:
        return 1
    return max(1, math.ceil(split_after * rho ** (-depth) - 1e-9))


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
                 discount_by: str = "visits", split_after: float = 0.0, rng: str = "mersenne") -> None:
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
        self._rng = learner_rng(seed, rng)
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
        counter = isinstance(self._rng, CounterStream)
        while cell.children:
            rng = self._rng.at(len(path) - 1) if counter else self._rng
            cell = cell.children[argmax_random_ties([b[id(c)] for c in cell.children], rng)]
            path.append(cell)
        point = self._point_in(cell)
        if cell.visits + 1 >= self.split_threshold(cell.depth):
            self._split(cell)
        if counter:
            self._rng.counter += 1
        return point, path

    def split_threshold(self, depth: int) -> int:
        """Plays of a depth-``depth`` leaf before it splits (:func:`split_threshold`)."""
        return split_threshold(depth, self.split_after, self.rho)

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
        if isinstance(self._rng, CounterStream):
            return tuple(cell.lo[k] + (cell.hi[k] - cell.lo[k]) * self._rng.uniform(PLAY_SLOT + k) if k in self.axes
                         else cell.lo[k] for k in (0, 1))  # type: ignore[return-value]
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


def ranks_at(space: ArmSpace, u_r: np.ndarray) -> np.ndarray:
    """:meth:`ArmSpace.rank_at` elementwise (int64), exactly: numpy's ``2**x`` may differ from the C
    library's in the last bit, so a value within 1e-9 of a rounding boundary is recomputed by ``rank_at``."""
    u = np.asarray(u_r, dtype=np.float64)
    x = math.log2(space.r_min) + np.minimum(np.maximum(u, 0.0), 1.0) * space.log2_span
    if space.rank_rounding == "pow2":
        r = (2 ** np.floor(x + 0.5).astype(np.int64)).astype(np.int64)
    else:
        y = np.power(2.0, x) + 0.5
        r = np.floor(y).astype(np.int64)
        near = np.flatnonzero(np.abs(y - np.round(y)) <= 1e-9 * y)
        r[near] = [space.rank_at(float(v)) for v in u[near]]  # already clamped
    return np.minimum(np.maximum(r, space.r_min), space.r_max)


class SUCBArrays(DeviceArrays):
    """The :class:`SUCBTree` (counter draws) of every device as node tables [devices, width].

    Node 0 is the root; a split appends the two children at ``n_nodes`` and ``n_nodes + 1`` (so a child's
    index exceeds its parent's). Per node: ``visits`` (its plays; > 0 means played), ``child`` (the first
    child, −1 for a leaf), ``parent``, ``depth``, and the statistics: ``ewma`` (``discount_by="visits"``;
    there n_v = visits) or ``nsum``, ``total``, ``stamp`` (``"plays"``, lazily discounted as the tree does).
    Cells' bounds are not stored: the descent recomputes them from the root by the tree's split rule.
    ``arms_at(u_p, u_r) -> (p, r)`` maps played points to arms.
    """

    def __init__(self, owner: str, *, discount: float, exploration: float, nu: float, rho: float, play: str,
                 max_depth: int, axes: Sequence[int], fixed_point: tuple[float, float], discount_by: str,
                 split_after: float, arms_at: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]) -> None:
        self.discount = discount
        self.exploration = exploration
        self.play = play
        self.max_depth = int(max_depth)
        self.axes = tuple(axes)
        self.discount_by = discount_by
        self.arms_at = arms_at
        self.root_lo = np.array([0.0 if k in self.axes else fixed_point[k] for k in (0, 1)])
        self.root_hi = np.array([1.0 if k in self.axes else fixed_point[k] for k in (0, 1)])
        self.max_nodes = 2 ** (self.max_depth + 1) - 1 if self.axes else 1
        self.width = min(self.max_nodes, 8)
        self.nu_rho = np.array([nu * rho**d for d in range(self.max_depth + 1)])
        self.thresholds = np.array([split_threshold(d, split_after, rho) for d in range(self.max_depth + 1)])
        self._pow = np.ones(1)  # discount ** k, as the tree computes it
        self._root_log = np.zeros(1)  # ln n_root after t plays ("plays" mode), as the tree computes it
        super().__init__(owner)

    # --- layout ------------------------------------------------------------------------------------
    def _fields(self) -> dict[str, Field]:
        w = (self.width,)
        fields: dict[str, Field] = {
            "n_nodes": (np.int32, (), 1), "plays": (np.int64, (), 0), "pend_leaf": (np.int32, (), 0),
            "visits": (np.int32, w, 0), "child": (np.int32, w, -1), "parent": (np.int32, w, -1),
            "depth": (np.int16 if self.max_depth < 2**15 else np.int32, w, 0)}
        if self.discount_by == "visits":
            fields["ewma"] = (np.float64, w, 0.0)
        else:
            fields.update(nsum=(np.float64, w, 0.0), total=(np.float64, w, 0.0), stamp=(np.int64, w, 0))
        return fields

    def _widen(self, width: int) -> None:
        for name, (dtype, tail, fill) in self._fields().items():
            if tail:
                old = getattr(self, name)
                new = np.full((old.shape[0], width), fill, dtype=dtype)
                new[:, : old.shape[1]] = old
                setattr(self, name, new)
        self.width = width

    def state(self) -> dict[str, Any]:
        used = int(self.n_nodes[: self.n].max()) if self.n else 1
        out = super().state()
        for name, (_, tail, _) in self._fields().items():
            if tail:
                out[name] = out[name][:, :used].copy()
        return out

    def load(self, state: dict[str, Any]) -> None:
        self.width = int(np.shape(state["visits"])[1])
        super().load(state)

    # --- tables of values the trees compute with Python floats -----------------------------------
    def _pow_of(self, k: np.ndarray) -> np.ndarray:
        top = int(k.max()) if k.size else 0
        if top >= self._pow.size:
            self._pow = np.array([self.discount**i for i in range(max(top + 1, 2 * self._pow.size))])
        return self._pow[k]

    def _log_root(self, t: np.ndarray) -> np.ndarray:
        top = int(t.max()) if t.size else 0
        if top >= self._root_log.size:
            n, logs = 0.0, [0.0]
            for _ in range(max(top + 1, 2 * self._root_log.size) - 1):
                n = (n if self.discount >= 1.0 else n * self.discount) + 1.0
                logs.append(math.log(n) if n > 1.0 else 0.0)
            self._root_log = np.array(logs)
        return self._root_log[t]

    # --- the two verbs -----------------------------------------------------------------------------
    def _b_values(self, rows: np.ndarray, width: int) -> np.ndarray:
        """B of every node of ``rows``' trees [m, width] (+inf for unplayed nodes and columns past a tree)."""
        visits = self.visits[rows, :width]
        depth = self.depth[rows, :width]
        t = self.plays[rows]
        if self.discount_by == "visits":
            n = visits.astype(np.float64)
            s = self.ewma[rows, :width] * n
            log_n = log_int(t)
        else:
            f = self._pow_of(t[:, None] - self.stamp[rows, :width])
            n = self.nsum[rows, :width] * f
            s = self.total[rows, :width] * f
            log_n = self._log_root(t)
        with np.errstate(divide="ignore", invalid="ignore"):
            b = s / n + self.exploration * np.sqrt(2.0 * log_n[:, None] / n) + self.nu_rho[depth]
        b[(visits == 0) | (n <= 1e-300)] = np.inf
        child = self.child[rows, :width].ravel()
        internal = np.flatnonzero(child >= 0)
        if internal.size:
            flat = b.ravel()
            levels = depth.ravel()[internal]
            first = internal - internal % width + child[internal]  # the first child's flat index
            for level in range(int(levels.max()), -1, -1):
                at = np.flatnonzero(levels == level)
                node, kid = internal[at], first[at]
                flat[node] = np.minimum(flat[node], np.maximum(flat[kid], flat[kid + 1]))
        return b

    def _split_axis(self, lo: np.ndarray, hi: np.ndarray, depth: int) -> np.ndarray:
        if len(self.axes) == 1:
            return np.full(lo.shape[0], self.axes[0], dtype=np.int64)
        s0, s1 = hi[:, 0] - lo[:, 0], hi[:, 1] - lo[:, 1]
        longest = np.maximum(s0, s1)
        c0, c1 = s0 >= longest - 1e-15, s1 >= longest - 1e-15
        return np.where(c0 & c1, depth % 2, np.where(c0, 0, 1)).astype(np.int64)

    def _choose(self, rows: np.ndarray, counters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m = rows.size
        if m == 0:
            return np.empty(0), np.empty(0, dtype=np.int64)
        need = int(self.n_nodes[rows].max()) + 2
        if need > self.width and self.width < self.max_nodes:  # trees hold 1 + 2k nodes, as many as max_nodes
            self._widen(min(max(need, self.width + max(8, self.width // 2)), self.max_nodes))
        width = int(self.n_nodes[rows].max())
        b = self._b_values(rows, width)
        child = self.child[rows, :width]
        keys = self.key[rows]
        cur = np.zeros(m, dtype=np.int64)
        lo = np.tile(self.root_lo, (m, 1))
        hi = np.tile(self.root_hi, (m, 1))
        active = np.flatnonzero(child[:, 0] >= 0)
        level = 0
        while active.size:
            first = child[active, cur[active]].astype(np.int64)
            b0, b1 = b[active, first], b[active, first + 1]
            pick = (b1 > b0).astype(np.int64)
            tie = np.flatnonzero(b0 == b1)
            if tie.size:
                pick[tie] = pick_index(uniforms(keys[active[tie]], counters[active[tie]], level), np.full(tie.size, 2))
            axis = self._split_axis(lo[active], hi[active], level)
            mid = 0.5 * (lo[active, axis] + hi[active, axis])
            left = pick == 0
            hi[active[left], axis[left]] = mid[left]
            lo[active[~left], axis[~left]] = mid[~left]
            cur[active] = first + pick
            level += 1
            active = active[child[active, cur[active]] >= 0]
        if self.play == "centre":
            point = 0.5 * (lo + hi)
        else:
            point = lo.copy()
            for k in self.axes:
                point[:, k] = lo[:, k] + (hi[:, k] - lo[:, k]) * uniforms(keys, counters, PLAY_SLOT + k)
        leaf_depth = self.depth[rows, cur].astype(np.int64)
        if self.axes:
            split = np.flatnonzero((self.visits[rows, cur] + 1 >= self.thresholds[leaf_depth])
                                   & (leaf_depth < self.max_depth))
            if split.size:
                r, leaf = rows[split], cur[split]
                new = self.n_nodes[r].astype(np.int64)
                self.child[r, leaf] = new
                for k in (0, 1):
                    self.parent[r, new + k] = leaf
                    self.depth[r, new + k] = leaf_depth[split] + 1
                self.n_nodes[r] += 2
        self.pend_leaf[rows] = cur
        return self.arms_at(point[:, 0], point[:, 1])

    def _learn(self, rows: np.ndarray, rewards: np.ndarray) -> None:
        t = self.plays[rows] + 1
        self.plays[rows] = t
        node = self.pend_leaf[rows].astype(np.int64)
        act = np.arange(rows.size)
        keep = 1.0 - self.discount
        while act.size:
            r, v = rows[act], node[act]
            visits = self.visits[r, v] + 1
            self.visits[r, v] = visits
            if self.discount_by == "visits":
                weight = np.maximum(keep, 1.0 / visits.astype(np.float64))
                e = self.ewma[r, v]
                self.ewma[r, v] = e + weight * (rewards[act] - e)
            else:
                f = self._pow_of(t[act] - self.stamp[r, v])
                self.nsum[r, v] = self.nsum[r, v] * f + 1.0
                self.total[r, v] = self.total[r, v] * f + rewards[act]
                self.stamp[r, v] = t[act]
            node[act] = self.parent[r, v]
            act = act[node[act] >= 0]


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
                 split_after: Annotated[float, Range(ge=0), "m"] = 0.0,
                 backend: Annotated[str, Choices(BACKENDS)] = "arrays") -> None:
        super().__init__(arm_space=arm_space, seed=seed, backend=backend)
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

    def _geometry(self) -> tuple[tuple[int, ...], tuple[float, float]]:
        fixed = self.arm_space.to_unit(Arm(p=self.fix_p or 0.0, r=self.fix_r or self.arm_space.r_min))
        axes = tuple(k for k, pinned in ((0, self.fix_p is not None), (1, self.fix_r is not None)) if not pinned)
        return axes, fixed

    def _new_learner(self, seed: int) -> SUCBTree:
        axes, fixed = self._geometry()
        return SUCBTree(seed, discount=self.discount, exploration=self.exploration, nu=self.nu, rho=self.rho,
                        play=self.play, max_depth=self.max_depth, axes=axes, fixed_point=fixed,
                        discount_by=self.discount_by, split_after=self.split_after, rng=self._learner_rng)

    def _new_arrays(self) -> SUCBArrays:
        axes, fixed = self._geometry()
        return SUCBArrays(type(self).__name__, discount=self.discount, exploration=self.exploration, nu=self.nu,
                          rho=self.rho, play=self.play, max_depth=self.max_depth, axes=axes, fixed_point=fixed,
                          discount_by=self.discount_by, split_after=self.split_after, arms_at=self._arms_at)

    def _arms_at(self, u_p: np.ndarray, u_r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_arm_of` for arrays of points: (p float64, r int64)."""
        if self.fix_p is not None:
            p = np.full(u_p.shape, float(self.fix_p))
        else:
            p = np.minimum(np.maximum(u_p, 0.0), 1.0) * self.arm_space.p_max
        r = np.full(u_r.shape, int(self.fix_r), dtype=np.int64) if self.fix_r is not None else ranks_at(self.arm_space, u_r)
        return p, r

    def _arm_of(self, choice) -> Arm:
        (u_p, u_r), _ = choice
        p = self.fix_p if self.fix_p is not None else self.arm_space.p_at(u_p)
        r = self.fix_r if self.fix_r is not None else self.arm_space.rank_at(u_r)
        return Arm(p=float(p), r=int(r))

    @classmethod
    def _test_params(cls) -> list[dict]:
        return [{}, {"play": "uniform", "discount": 1.0}, {"fix_r": 8}, {"fix_p": 0.1, "max_depth": 3},
                {"discount_by": "plays", "split_after": 1.0}, {"backend": "learners"}, {"backend": "mersenne"}]
