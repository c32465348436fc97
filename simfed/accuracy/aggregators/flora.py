"""FLoRA (Wang et al., NeurIPS'24, arXiv 2409.05976): stack the devices' LoRA modules, merge them into the base.

FLoRA aggregates heterogeneous ranks exactly. With data-size weights ``p_k = n_k / sum_j n_j`` and each
update's own scale ``s_k``, the server stacks

    A_stack = [p_1 A_1; ...; p_K A_K]    ([sum_k r_k, d_in])
    B_stack = [s_1 B_1, ..., s_K B_K]    ([d_out, sum_k r_k])

so that ``B_stack @ A_stack = sum_k p_k s_k B_k A_k`` with no cross terms (``reference/algorithms.md``
§2.1; FLoRA's code scales only the rows of A by ``p_k``). Every device merges the stacked product into its
frozen weights, ``W <- W + B_stack A_stack``, and re-initialises its own LoRA at its own rank (A random,
B = 0). The downlink is the stacked modules: it grows with the sum of the ranks aggregated.

simfed's version, for structurally pruned devices (FedSpine, arXiv 2501.02438):

- Each update is scattered into full-model coordinates by its kept indices (:func:`restriction`), as
  ``flexlora`` does. A pruned-side coordinate (a row of q/k/v/gate/up, a column of o/down) is averaged
  over the devices that keep it: device k's weight there is ``n_k / sum_{j keeps it} n_j``. This is
  ``p_k`` times the correction ``N / coverage`` (``N = sum_j n_j``), applied to the scattered rows of B
  (q, k, v, gate, up) or columns of A (o, down), so A's rows still carry ``p_k`` as in FLoRA. Without
  pruning the correction is 1 and the stack is FLoRA's. A coordinate no device keeps gets no increment
  this round (it keeps its merged value), the rule ``flexlora`` and ``hetlora`` follow.
- The server keeps the merged update ``delta_W`` of every adapted linear (dense, float32, full
  coordinates; the product is formed in float64 and added). :meth:`delta_for` restricts it to a
  structure, so evaluation sees base + everything merged. The base model itself is never written.
- A downlink (:meth:`factors_for`) is FLoRA's re-initialisation: B = 0 at the device's rank, and A the
  first r rows of a ``[r_max, d_in]`` Kaiming-uniform draw, restricted to the device's structure. Round 0
  uses the init every aggregator shares; after the t-th aggregation A comes from a generator seeded with
  (seed, t). So every device of a round gets the same A, whatever order the server serves them in (in
  FLoRA each client draws its own; the stacking is exact either way). The downlink also carries the
  merged update restricted to the device's structure (``LoRAFactors.base_delta``, restricted when read:
  a downlink holds no copy), which the trainer adds to the device's frozen weights for the round.
- ``stacked_ranks`` lists ``sum_k r_k`` of every aggregation: the rank of the modules FLoRA sends.
  What a device downloads is costed by the method (``FLoRAMethod``, the plans' ``down_rank``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import torch

from simfed.accuracy.adapters import DeviceUpdate, Kept, LoRAFactors, module_dims
from simfed.accuracy.aggregators.base import DTYPE, Aggregator, Key, as_float, data_coverage, restrict, restriction
from simfed.structure import ModelShape


class KeptDelta(Mapping):
    """Dense per-linear updates in full coordinates, read restricted to one structure.

    ``full``: (layer, module) -> ``[d_out, d_in]`` tensors (referenced, never copied or written);
    ``kept``: the structure. ``delta[key]`` is ``full[key]`` restricted to the kept rows (q, k, v,
    gate, up) or columns (o, down); a side the structure keeps whole is not copied.
    """

    def __init__(self, full: Mapping[Key, torch.Tensor], shape: ModelShape, kept: Kept) -> None:
        self._full = dict(full)
        self._shape = shape
        self._kept = kept.copy()

    def __getitem__(self, key: Key) -> torch.Tensor:
        matrix = self._full[key]
        rows, cols = restriction(self._shape, self._kept, key)
        rows = None if rows is None or _is_whole(rows, matrix.shape[0]) else rows.to(matrix.device)
        cols = None if cols is None or _is_whole(cols, matrix.shape[1]) else cols.to(matrix.device)
        if rows is None and cols is None:
            return matrix
        return restrict(matrix, rows, cols)

    def __iter__(self) -> Iterator[Key]:
        return iter(self._full)

    def __len__(self) -> int:
        return len(self._full)


def _is_whole(index: torch.Tensor, size: int) -> bool:
    return len(index) == size and bool(torch.equal(index.cpu(), torch.arange(size)))


class FLoRA(Aggregator):
    """FLoRA's stacking aggregation with merging (see the module docstring)."""

    name = "flora"
    state_attrs = ("merged", "stacked_ranks")
    transient_attrs = ("_fresh",)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        with self.on_device():
            self.merged: dict[Key, torch.Tensor] = {
                key: torch.zeros(*module_dims(self.shape, key[1]), dtype=DTYPE) for key in self.keys()
            }
        self.stacked_ranks: list[int] = []
        self._fresh: tuple[int, dict[Key, torch.Tensor]] | None = None  # (rounds, that round's A draw)

    # ------------------------------------------------------------------ stacking
    def stack(self, updates: list[DeviceUpdate]) -> dict[Key, tuple[torch.Tensor, torch.Tensor]]:
        """FLoRA's stacked modules of one round, in full-model coordinates (float64, on :attr:`device`).

        Returns ``{(layer, module): (B_stack, A_stack)}`` with ``B_stack`` ``[d_out, R]`` and ``A_stack``
        ``[R, d_in]``, ``R = sum_k r_k`` (updates in the given order). ``B_stack @ A_stack`` equals
        ``sum_k w_k * scatter(s_k B_k A_k)`` exactly, ``w_k = n_k / sum_{j keeps the coordinate} n_j`` per
        pruned-side coordinate (``p_k = n_k / sum_j n_j`` everywhere when no device is pruned). The rows of
        A carry ``p_k``, the scattered rows of B (q, k, v, gate, up) or columns of A (o, down) the coverage
        correction, B the scale ``s_k``.

        Raises:
            ValueError: an update of the wrong rank, structure, keys or shapes (as :meth:`aggregate`).
        """
        for i, update in enumerate(updates):
            self._check_update(i, update)
        with self.on_device():
            return {key: self._stack_linear(updates, key) for key in self.keys()}

    def _stack_linear(self, updates: list[DeviceUpdate], key: Key) -> tuple[torch.Tensor, torch.Tensor]:
        d_out, d_in = module_dims(self.shape, key[1])
        total = float(sum(u.n_samples for u in updates))
        col_pruned, coverage = data_coverage(self.shape, updates, key)
        correction = torch.where(coverage > 0, total / coverage.clamp(min=1e-300), torch.zeros_like(coverage))
        lefts, rights = [], []
        for update in updates:
            f = update.factors
            rows, cols = restriction(self.shape, update.kept, key)
            a = as_float(f.A[key]).double() * (update.n_samples / total)
            b = as_float(f.B[key]).double() * f.scale
            if col_pruned:
                right = torch.zeros(f.rank, d_in, dtype=torch.float64)
                right[:, cols] = a * correction[cols]
                lefts.append(b)
                rights.append(right)
            else:
                left = torch.zeros(d_out, f.rank, dtype=torch.float64)
                left[rows] = b * correction[rows][:, None]
                lefts.append(left)
                rights.append(a)
        return torch.cat(lefts, dim=1), torch.cat(rights, dim=0)

    def _aggregate(self, updates: list[DeviceUpdate]) -> None:
        for key in self.keys():
            b, a = self._stack_linear(updates, key)
            self.merged[key] = (self.merged[key].double() + b @ a).to(DTYPE)  # a new tensor: downlinks hold the old
        self.stacked_ranks.append(int(sum(u.factors.rank for u in updates)))

    # ------------------------------------------------------------------ downlink and reads
    def _downlink(self, rank: int, kept: Kept, scale: float) -> LoRAFactors:
        fresh = self._fresh_A()
        factors = LoRAFactors(rank=rank, scale=scale, base_delta=KeptDelta(self.merged, self.shape, kept))
        for key in self.keys():
            rows, cols = restriction(self.shape, kept, key)
            factors.A[key] = restrict(fresh[key][:rank], None, cols)
            n_rows = module_dims(self.shape, key[1])[0] if rows is None else len(rows)
            factors.B[key] = torch.zeros(n_rows, rank, dtype=DTYPE)
        return factors

    def _fresh_A(self) -> dict[Key, torch.Tensor]:
        """The re-initialisation's A after the current aggregation, drawn once per round."""
        if self._fresh is None or self._fresh[0] != self.rounds:
            seed = int(np.random.SeedSequence([self.seed, self.rounds]).generate_state(1, dtype=np.uint64)[0]) >> 1
            self._fresh = (self.rounds, self._draw_A(seed))
        return self._fresh[1]

    def delta_for(self, kept: Kept) -> dict[Key, torch.Tensor]:
        """The merged update (everything merged into the base so far) restricted to ``kept``."""
        self._check_kept(kept, "delta_for")
        with self.on_device():
            out = {}
            for key in self.keys():
                rows, cols = restriction(self.shape, kept, key)
                out[key] = restrict(self.merged[key], rows, cols)
            return out

    def singular_values(self) -> dict[Key, torch.Tensor]:
        return {key: torch.linalg.svdvals(self.merged[key]) for key in self.keys()}

    @classmethod
    def merge_flops(cls, full, updates, merged_before: bool) -> float:
        """Per update and linear: the scalings of its factors (p_k into A, s_k and the coverage correction
        into B), ``r (m_k + n_k)``. Per linear (``m x n``): the coverage sums and corrections (``m + n``),
        the stacked product ``B_stack A_stack`` (``2 m n R``, ``R = sum_k r_k``; Golub & Van Loan §1.1) and,
        once something is merged, its addition to the merged update (``m n``). Stacking is a copy and the
        re-initialised downlink a random draw: no arithmetic. The devices' own merge (``W + delta_W``) is
        device-side work that the cost model does not count."""
        if not updates:
            return 0.0
        stacked = sum(r * count for r, _, count in updates)
        total = 0.0
        for m, n in full:
            total += 2.0 * m * n * stacked + (m + n) + (m * n if merged_before else 0.0)
        for r, dims, count in updates:
            total += count * sum(r * (m + n) for m, n in dims)
        return float(total)
