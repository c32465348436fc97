"""The interface every LoRA aggregator implements, and what they share: validation, the round-0 init,
index bookkeeping between a device's structure and full-model coordinates, and the scale rules.

FedSpine (arXiv 2501.02438) aggregates LoRA updates that differ in *rank* and in *pruned structure*
("reconstructs the updates into compatible representations ... heterogeneity-aware weighted
aggregation"). An aggregator holds the global adapter in full-model coordinates and

- hands each device the global adapter restricted to its structure and cut to its rank
  (:meth:`Aggregator.factors_for`, the downlink),
- merges the devices' uploads (:meth:`Aggregator.aggregate`),
- exposes the merged global update restricted to any structure (:meth:`Aggregator.delta_for`), which
  is what "the global LoRA evaluated on a device's pruned model" means.

Before anything is aggregated every aggregator hands out the same seeded init (PEFT's default: A
Kaiming-uniform, B = 0), sliced to the device's rank (the first r rows of A) and structure, so all
devices start from one global adapter whatever their rank.

Scale convention: factors carry the scale they are applied with (``delta_W = scale * B @ A``); the
downlink uses ``scale_rule(rank)`` and uploads are read with the scale they carry, so every
aggregator works on the update a device actually applied.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np
import torch

from simfed.accuracy.adapters import IN_PRUNED, MODULES, DeviceUpdate, Kept, LoRAFactors, module_dims
from simfed.structure import ModelShape

Key = tuple[int, str]
ScaleRule = Callable[[int], float]

DTYPE = torch.float32


def rslora_rule(alpha: float) -> ScaleRule:
    """rsLoRA's rule (Kalajdzievski 2023, arXiv 2312.03732): scale = alpha / sqrt(r)."""
    return lambda rank: alpha / math.sqrt(rank)


def classic_lora_rule(alpha: float) -> ScaleRule:
    """The original LoRA rule (Hu et al. 2021, arXiv 2106.09685): scale = alpha / r."""
    return lambda rank: alpha / rank


def constant_rule(value: float = 1.0) -> ScaleRule:
    """The same scale at every rank."""
    return lambda rank: value


SCALE_RULES: dict[str, Callable[[float], ScaleRule]] = {
    "rslora": rslora_rule,
    "lora": classic_lora_rule,
    "constant": constant_rule,
}


def scale_rule(name: str, alpha: float) -> ScaleRule:
    """A scale rule by name (``rslora``, ``lora`` or ``constant``) with its alpha."""
    if name not in SCALE_RULES:
        raise ValueError(f"unknown LoRA scale rule {name!r}; choose one of {sorted(SCALE_RULES)}")
    return SCALE_RULES[name](alpha)


def restriction(shape: ModelShape, kept: Kept, key: Key) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Full-model (row, column) indices a structure keeps of one adapted linear; ``None`` = all.

    Output-pruned linears (q, k, v, gate, up) lose rows, input-pruned ones (o, down) lose columns;
    the hidden-size side is always whole.
    """
    layer, module = key
    idx = torch.as_tensor(kept.index(shape, layer, module), dtype=torch.long)
    return (None, idx) if module in IN_PRUNED else (idx, None)


def restrict(matrix: torch.Tensor, rows: torch.Tensor | None, cols: torch.Tensor | None) -> torch.Tensor:
    """``matrix[rows][:, cols]`` as a new tensor (``None`` keeps that side whole)."""
    out = matrix if rows is None else matrix.index_select(0, rows)
    out = out if cols is None else out.index_select(1, cols)
    return out.clone() if out is matrix else out


# Dims of one adapted linear as (d_out, d_in); an update's are those of the device's kept structure.
Dims = tuple[int, int]


def data_coverage(shape: ModelShape, updates: Sequence[DeviceUpdate], key: Key) -> tuple[bool, torch.Tensor]:
    """For one adapted linear: whether pruning removes its input columns (else its output rows), and per such
    coordinate the data size (float64, ``n_samples`` summed) of the updates whose structure keeps it — the
    per-coordinate denominators of a structure-aware average."""
    d_out, d_in = module_dims(shape, key[1])
    col_pruned = restriction(shape, updates[0].kept, key)[0] is None
    coverage = torch.zeros(d_in if col_pruned else d_out, dtype=torch.float64)
    for update in updates:
        rows, cols = restriction(shape, update.kept, key)
        idx = cols if col_pruned else rows
        coverage.index_add_(0, idx, torch.full((len(idx),), float(update.n_samples), dtype=torch.float64))
    return col_pruned, coverage


def qr_flops(m: int, r: int) -> float:
    """Householder QR of an ``m x r`` matrix (m >= r) with the thin Q formed: 4 m r^2 - 4 r^3 / 3
    (Golub & Van Loan, Matrix Computations, 3rd ed., §5.2.1-5.2.2: 2mr^2 - 2r^3/3 for R, as much again for Q)."""
    m, r = max(m, r), min(m, r)
    return 4.0 * m * r * r - 4.0 * r**3 / 3.0


def svd_flops(m: int, n: int) -> float:
    """Thin SVD (U1, S, V) of an ``m x n`` matrix by R-SVD: 6 m n^2 + 20 n^3 with m >= n
    (Golub & Van Loan, Matrix Computations, 3rd ed., §5.4.5, Figure 5.4.1)."""
    m, n = max(m, n), min(m, n)
    return 6.0 * m * n * n + 20.0 * n**3


class Aggregator(ABC):
    """A global LoRA adapter in full-model coordinates, merged from heterogeneous device updates.

    ``shape``: the unpruned model. ``r_max``: the largest rank any device may use (the global
    adapter's rank where the method keeps factors). ``scale_rule``: rank -> LoRA scale used on the
    downlink. ``seed``: the round-0 init. ``modules``: the adapted linears of every layer.
    """

    name: ClassVar[str] = ""
    #: What aggregation changes, besides ``rounds``: the attributes :meth:`state_dict` saves (a checkpoint).
    state_attrs: ClassVar[tuple[str, ...]] = ()
    #: Attributes rebuilt when needed (caches): neither saved nor restored.
    transient_attrs: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        shape: ModelShape,
        r_max: int,
        scale_rule: ScaleRule,
        seed: int,
        modules: Sequence[str] = MODULES,
        device: torch.device | str | None = None,
    ) -> None:
        if int(r_max) != r_max or r_max < 1:
            raise ValueError(f"{self.name}: r_max must be a positive integer, got {r_max!r}")
        unknown = [m for m in modules if m not in MODULES]
        if unknown or not modules:
            raise ValueError(f"{self.name}: modules must be a non-empty subset of {MODULES}, got {list(modules)}")
        self.shape = shape
        self.r_max = int(r_max)
        self.scale_rule = scale_rule
        self.seed = int(seed)
        self.modules = tuple(m for m in MODULES if m in modules)
        self.rounds = 0  # aggregations done that received at least one update
        # where the global adapter lives and is merged (train.device); uploads are moved here
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.init_A = self._round0_init()

    def on_device(self) -> torch.device:
        """A context in which torch's factory functions allocate on :attr:`device` (wraps every public method)."""
        return torch.device(self.device)

    # ------------------------------------------------------------------ public interface
    def keys(self) -> list[Key]:
        """Every adapted (layer, module), in a fixed order."""
        return [(layer, m) for layer in range(self.shape.n_layers) for m in self.modules]

    def factors_for(self, rank: int, kept: Kept) -> LoRAFactors:
        """The downlink: the global adapter restricted to ``kept`` and cut to ``rank``."""
        self._check_rank(rank, "factors_for")
        self._check_kept(kept, "factors_for")
        scale = self._scale(rank)
        with self.on_device():
            if self.rounds == 0:
                return self._init_factors(rank, kept, scale)
            return self._downlink(rank, kept, scale)

    def aggregate(self, updates: list[DeviceUpdate]) -> None:
        """Merge one round's uploads into the global adapter. No uploads (every device dropped): no change."""
        for i, update in enumerate(updates):
            self._check_update(i, update)
        if not updates:
            return
        with self.on_device():
            self._aggregate(updates)
        self.rounds += 1

    @classmethod
    @abstractmethod
    def merge_flops(cls, full: Sequence[Dims], updates: Sequence[tuple[int, Sequence[Dims], int]], merged_before: bool) -> float:
        """FLOPs of one round's aggregation and of re-factoring the downlinks it changes, counted from shapes.

        ``full``: (d_out, d_in) of every adapted linear of the unpruned model; ``updates``: the accepted updates
        grouped by shape, each group as (rank, the dims of the same linears at its devices' structure, how many
        devices); ``merged_before``: a global update exists already. This is what the server's aggregation phase is timed by
        (docs/timing.md §3.1); it counts the arithmetic of this implementation, not of a reference one.
        """

    @abstractmethod
    def delta_for(self, kept: Kept) -> dict[Key, torch.Tensor]:
        """The merged global update ``delta_W`` of every adapted linear, restricted to ``kept``."""

    @abstractmethod
    def singular_values(self) -> dict[Key, torch.Tensor]:
        """Singular values (descending) of the full global ``delta_W`` of every adapted linear."""

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """What aggregation has changed, as plain data: ``rounds`` and every attribute in :attr:`state_attrs`
        (tensors copied to the CPU; dicts, lists, tuples, numbers and arrays copied as they are).

        What the constructor builds from its arguments (shapes, the seed, the round-0 init) is not saved: an
        aggregator built with the same arguments and given this state continues exactly.

        Raises:
            ValueError: the aggregator holds an attribute that is neither built by :class:`Aggregator` nor
                declared in ``state_attrs`` or ``transient_attrs`` (it would be silently lost on resume).
        """
        undeclared = sorted(set(vars(self)) - _BUILT_ATTRS - set(self.state_attrs) - set(self.transient_attrs))
        if undeclared:
            raise ValueError(f"aggregator {self.name or type(self).__name__}: attribute(s) {undeclared} are in neither "
                             "state_attrs (checkpointed) nor transient_attrs (rebuilt when needed); declare them")
        out: dict[str, Any] = {"rounds": self.rounds}
        for attr in self.state_attrs:
            out[attr] = _copied(getattr(self, attr), torch.device("cpu"))
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take back a :meth:`state_dict` (on an aggregator built with the same arguments).

        Raises:
            ValueError: a missing entry, or one whose keys or tensor shapes differ from this aggregator's.
        """
        missing = [k for k in ("rounds", *self.state_attrs) if k not in state]
        if missing:
            raise ValueError(f"{self.name}.load_state_dict: the state lacks {missing}")
        for attr in self.state_attrs:
            _check_like(getattr(self, attr), state[attr], f"{self.name}.load_state_dict: {attr}")
        for attr in self.state_attrs:
            setattr(self, attr, _copied(state[attr], self.device))
        self.rounds = int(state["rounds"])

    # ------------------------------------------------------------------ for subclasses
    @abstractmethod
    def _downlink(self, rank: int, kept: Kept, scale: float) -> LoRAFactors: ...

    @abstractmethod
    def _aggregate(self, updates: list[DeviceUpdate]) -> None: ...

    def _init_factors(self, rank: int, kept: Kept, scale: float) -> LoRAFactors:
        factors = LoRAFactors(rank=rank, scale=scale)
        for key in self.keys():
            rows, cols = restriction(self.shape, kept, key)
            a = self.init_A[key][:rank]
            factors.A[key] = restrict(a, None, cols)
            n_rows = module_dims(self.shape, key[1])[0] if rows is None else len(rows)
            factors.B[key] = torch.zeros(n_rows, rank, dtype=DTYPE)
        return factors

    def _round0_init(self) -> dict[Key, torch.Tensor]:
        """A ``[r_max, d_in]`` per linear, U(-1/sqrt(d_in), 1/sqrt(d_in)).

        That is ``kaiming_uniform_(a=sqrt(5))``, LoRA's and PEFT's default for A. Drawn from one
        generator in :meth:`keys` order so it depends only on the seed and the shapes.
        """
        return self._draw_A(self.seed)

    def _draw_A(self, seed: int) -> dict[Key, torch.Tensor]:
        """The round-0 init's draw (:meth:`_round0_init`) from a generator seeded with ``seed``."""
        gen = torch.Generator().manual_seed(seed)
        out: dict[Key, torch.Tensor] = {}
        for key in self.keys():
            _, d_in = module_dims(self.shape, key[1])
            bound = 1.0 / math.sqrt(d_in)
            a = (torch.rand(self.r_max, d_in, generator=gen, dtype=DTYPE, device="cpu") * 2.0 - 1.0) * bound
            out[key] = a.to(self.device)  # drawn on the CPU: the same init whatever the device
        return out

    def _scale(self, rank: int) -> float:
        scale = float(self.scale_rule(rank))
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"{self.name}: scale_rule({rank}) = {scale!r}; a LoRA scale must be positive and finite")
        return scale

    def _check_rank(self, rank: int, where: str) -> None:
        if int(rank) != rank or not 1 <= rank <= self.r_max:
            raise ValueError(f"{self.name}.{where}: rank must be an integer in [1, r_max={self.r_max}], got {rank!r}")

    def _check_kept(self, kept: Kept, where: str) -> None:
        shape = self.shape
        for field_name, per_layer, limit in (
            ("groups", kept.groups, shape.n_kv_heads),
            ("channels", kept.channels, shape.d_ff),
        ):
            if len(per_layer) != shape.n_layers:
                raise ValueError(
                    f"{self.name}.{where}: Kept.{field_name} has {len(per_layer)} layers, the model has {shape.n_layers}"
                )
            for layer, idx in enumerate(per_layer):
                idx = np.asarray(idx)
                if idx.ndim != 1 or idx.size == 0:
                    raise ValueError(f"{self.name}.{where}: Kept.{field_name}[{layer}] must be a non-empty 1-D index array")
                if idx.min() < 0 or idx.max() >= limit or np.unique(idx).size != idx.size:
                    raise ValueError(
                        f"{self.name}.{where}: Kept.{field_name}[{layer}] must hold distinct indices in [0, {limit}), "
                        f"got {idx.tolist()}"
                    )

    def _check_update(self, i: int, update: DeviceUpdate) -> None:
        where = f"aggregate(update {i})"
        f = update.factors
        self._check_rank(f.rank, where)
        self._check_kept(update.kept, where)
        if not (update.n_samples > 0):
            raise ValueError(f"{self.name}.{where}: n_samples must be positive, got {update.n_samples!r}")
        if not math.isfinite(f.scale) or f.scale <= 0:
            raise ValueError(f"{self.name}.{where}: factors.scale must be positive and finite, got {f.scale!r}")
        want = set(self.keys())
        for name, got in (("A", set(f.A)), ("B", set(f.B))):
            if got != want:
                missing, extra = sorted(want - got), sorted(got - want)
                raise ValueError(f"{self.name}.{where}: factors.{name} keys differ: missing {missing[:4]}, unexpected {extra[:4]}")
        for key in self.keys():
            rows, cols = restriction(self.shape, update.kept, key)
            d_out, d_in = module_dims(self.shape, key[1])
            want_a = (f.rank, d_in if cols is None else len(cols))
            want_b = (d_out if rows is None else len(rows), f.rank)
            if tuple(f.A[key].shape) != want_a or tuple(f.B[key].shape) != want_b:
                raise ValueError(
                    f"{self.name}.{where}: {key} has A {tuple(f.A[key].shape)} and B {tuple(f.B[key].shape)}; "
                    f"its rank and structure need A {want_a} and B {want_b}"
                )


# what Aggregator.__init__ builds from its arguments (never checkpointed)
_BUILT_ATTRS = frozenset({"shape", "r_max", "scale_rule", "seed", "modules", "rounds", "device", "init_A"})


def _copied(value: Any, device: torch.device) -> Any:
    """A deep copy of plain data with every tensor copied onto ``device``."""
    if torch.is_tensor(value):
        return value.detach().to(device=device, copy=True)
    if isinstance(value, dict):
        return {k: _copied(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_copied(v, device) for v in value)
    return copy.deepcopy(value)


def _check_like(current: Any, loaded: Any, where: str) -> None:
    """``loaded`` has the keys, lengths and tensor shapes of ``current`` (ValueError naming the first difference)."""
    if torch.is_tensor(current):
        if not torch.is_tensor(loaded) or tuple(loaded.shape) != tuple(current.shape):
            got = tuple(loaded.shape) if torch.is_tensor(loaded) else type(loaded).__name__
            raise ValueError(f"{where}: expected a tensor of shape {tuple(current.shape)}, got {got}")
    elif isinstance(current, dict):
        if not isinstance(loaded, dict) or set(loaded) != set(current):
            raise ValueError(f"{where}: expected the keys {sorted(current)[:4]}..., got "
                             f"{sorted(loaded)[:4] if isinstance(loaded, dict) else type(loaded).__name__}")
        for k in current:
            _check_like(current[k], loaded[k], f"{where}[{k!r}]")
    elif isinstance(current, tuple) and len(current) and torch.is_tensor(current[0]):
        if not isinstance(loaded, (tuple, list)) or len(loaded) != len(current):
            raise ValueError(f"{where}: expected {len(current)} tensors")
        # compact factorisations (FlexLoRA's SVD) change their inner size: check the outer dims only
        for i, (c, l) in enumerate(zip(current, loaded)):
            if not torch.is_tensor(l) or l.dim() != c.dim():
                raise ValueError(f"{where}[{i}]: expected a {c.dim()}-d tensor")


def as_float(t: torch.Tensor) -> torch.Tensor:
    """An uploaded tensor as a detached float32 tensor on torch's current default device (the
    aggregator's device inside its methods, see :meth:`Aggregator.on_device`; else the CPU)."""
    return t.detach().to(device=torch.get_default_device(), dtype=DTYPE)


def singular_value_energy(aggregator: Aggregator, top: int | None = None) -> dict[Key, np.ndarray]:
    """Share of each singular component in the energy (sum of sigma^2) of every global ``delta_W``.

    The rank-collapse diagnostic of raFLoRA (Wu et al., arXiv 2602.13486): when heterogeneous
    aggregation concentrates the energy in the first few components, devices with a large rank
    gain nothing from it. Returns the first ``top`` shares (default ``r_max``) per linear; an
    all-zero update gives all-zero shares.
    """
    top = aggregator.r_max if top is None else top
    out: dict[Key, np.ndarray] = {}
    for key, sv in aggregator.singular_values().items():
        energy = sv.double() ** 2
        total = float(energy.sum())
        shares = (energy / total).cpu().numpy() if total > 0 else np.zeros(len(energy))
        out[key] = shares[:top]
    return out


def layer_energy_in_top(aggregator: Aggregator, rank: int) -> np.ndarray:
    """Per layer: the share of the global update's energy (all adapted linears) in the top ``rank`` components.

    A cheap per-layer summary of :func:`singular_value_energy` to log every round.
    """
    top = np.zeros(aggregator.shape.n_layers)
    total = np.zeros(aggregator.shape.n_layers)
    for (layer, _), sv in aggregator.singular_values().items():
        energy = sv.double().cpu() ** 2
        top[layer] += float(energy[:rank].sum())
        total[layer] += float(energy.sum())
    return np.divide(top, total, out=np.zeros_like(top), where=total > 0)
