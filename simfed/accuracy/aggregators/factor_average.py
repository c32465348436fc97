"""Aggregators that average the LoRA *factors* A and B separately (FedIT, HetLoRA), coverage-aware.

The global adapter is kept as rank-``r_max`` factors in full-model coordinates: ``A`` is
``[r_max, d_in]`` and ``Bs`` is ``[d_out, r_max]`` with the scale folded into B, so that the global
update is ``Bs @ A`` whatever rank a device used. A device with rank r and scale s = scale_rule(r)
gets ``A[:r]`` and ``Bs[:, :r] / s`` restricted to its structure, so its applied update
``s B A`` is exactly the first r components of the global one. Uploads are folded the same way
(``s_k B_k``). Folding the scale into B keeps A exactly PEFT's Kaiming init at round 0 for every rank.

Averaging rule for component j and full-model coordinate i (a row of B for q/k/v/gate/up, a column
of A for o/down), with per-device weights ``w_k`` given by the subclass:

- *pruned dimension, coverage-averaged*: only devices that keep coordinate i enter its sum **and**
  its denominator; a coordinate no device keeps keeps its previous global value;
- *rank dimension, zero-padded* (HetLoRA): a device with ``r_k <= j`` contributes zeros to
  component j but its weight stays in the denominator; components at or beyond the largest
  uploaded rank (nobody trained them) keep their previous values;
- the hidden-size side is never pruned, so every device counts there.

Neither rule is exact: the product of averaged factors is not the average of products.
"""

from __future__ import annotations

import torch

from simfed.accuracy.adapters import DeviceUpdate, Kept, LoRAFactors, module_dims
from simfed.accuracy.aggregators.base import DTYPE, Aggregator, Key, as_float, restrict, restriction


class FactorAverage(Aggregator):
    """Shared machinery; subclasses define :meth:`weights` (and may check the uploads' ranks)."""

    state_attrs = ("A", "Bs")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.A: dict[Key, torch.Tensor] = {key: a.clone() for key, a in self.init_A.items()}
        with self.on_device():
            self.Bs: dict[Key, torch.Tensor] = {
                key: torch.zeros(module_dims(self.shape, key[1])[0], self.r_max, dtype=DTYPE) for key in self.keys()
            }

    def weights(self, updates: list[DeviceUpdate], key: Key) -> list[float]:
        """Non-negative weight of each update for one adapted linear."""
        raise NotImplementedError

    def delta_for(self, kept: Kept) -> dict[Key, torch.Tensor]:
        self._check_kept(kept, "delta_for")
        out = {}
        with self.on_device():
            for key in self.keys():
                rows, cols = restriction(self.shape, kept, key)
                out[key] = restrict(self.Bs[key], rows, None) @ restrict(self.A[key], None, cols)
        return out

    def singular_values(self) -> dict[Key, torch.Tensor]:
        """Through thin QRs of both factors: only an ``r_max x r_max`` SVD per linear."""
        out = {}
        for key in self.keys():
            _, rb = torch.linalg.qr(self.Bs[key])
            _, ra = torch.linalg.qr(self.A[key].T)
            out[key] = torch.linalg.svdvals(rb @ ra.T)
        return out

    @classmethod
    def weight_flops(cls, rank: int, d_out: int, d_in: int) -> float:
        """FLOPs of one update's weight for one linear (a data-size weight costs nothing)."""
        return 0.0

    @classmethod
    def merge_flops(cls, full, updates, merged_before: bool) -> float:
        """Per linear and update: its weight (:meth:`weight_flops`) and the weighted scatter-add of both
        factors (2r(m+n)); then one division per covered coordinate (r_top(m+n)). The downlink slices the
        global factors (no arithmetic)."""
        if not updates:
            return 0.0
        r_top = max(r for r, _, _ in updates)
        total = float(sum(r_top * (m + n) for m, n in full))
        for r, dims, count in updates:
            total += count * sum(cls.weight_flops(r, m, n) + 2.0 * r * (m + n) for m, n in dims)
        return total

    def _downlink(self, rank: int, kept: Kept, scale: float) -> LoRAFactors:
        factors = LoRAFactors(rank=rank, scale=scale)
        for key in self.keys():
            rows, cols = restriction(self.shape, kept, key)
            factors.A[key] = restrict(self.A[key][:rank], None, cols)
            factors.B[key] = restrict(self.Bs[key][:, :rank], rows, None) / scale
        return factors

    def _aggregate(self, updates: list[DeviceUpdate]) -> None:
        r_top = max(u.factors.rank for u in updates)
        for key in self.keys():
            d_out, d_in = module_dims(self.shape, key[1])
            ws = self.weights(updates, key)
            if sum(ws) <= 0:  # nothing to tell the devices apart (e.g. all updates zero): equal weights
                ws = [1.0] * len(updates)
            sum_a = torch.zeros(r_top, d_in, dtype=torch.float64)
            den_a = torch.zeros(d_in, dtype=torch.float64)
            sum_b = torch.zeros(d_out, r_top, dtype=torch.float64)
            den_b = torch.zeros(d_out, dtype=torch.float64)
            for update, w in zip(updates, ws):
                f = update.factors
                rows, cols = restriction(self.shape, update.kept, key)
                rows = torch.arange(d_out) if rows is None else rows
                cols = torch.arange(d_in) if cols is None else cols
                a = torch.zeros(r_top, len(cols), dtype=torch.float64)
                a[: f.rank] = as_float(f.A[key]).double()
                b = torch.zeros(len(rows), r_top, dtype=torch.float64)
                b[:, : f.rank] = f.scale * as_float(f.B[key]).double()
                sum_a.index_add_(1, cols, w * a)
                den_a.index_add_(0, cols, torch.full((len(cols),), w, dtype=torch.float64))
                sum_b.index_add_(0, rows, w * b)
                den_b.index_add_(0, rows, torch.full((len(rows),), w, dtype=torch.float64))
            cov_a, cov_b = den_a > 0, den_b > 0
            self.A[key][:r_top, cov_a] = (sum_a[:, cov_a] / den_a[cov_a]).to(DTYPE)
            self.Bs[key][cov_b, :r_top] = (sum_b[cov_b] / den_b[cov_b, None]).to(DTYPE)
