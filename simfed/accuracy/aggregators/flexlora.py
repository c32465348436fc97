"""Structure-aware FlexLoRA: average the *products* in full-model coordinates, re-factor per device by SVD.

FlexLoRA (Bai et al., NeurIPS'24, arXiv 2402.11505) rebuilds each device's full update
``delta_W_k = s_k B_k A_k``, averages the updates weighted by data size and gives every device the
truncated SVD of the average at its own rank. With structured pruning (FedSpine, arXiv 2501.02438;
the reconstruction in ``reference/fedspine-paper-notes.md`` section 3.5, option R2, Eq. 6) a
device holds only some rows (q, k, v, gate, up) or columns (o, down), so:

1. each device's ``s_k B_k A_k`` is scattered into full coordinates by its kept indices;
2. each row (column) is averaged over the devices that keep it, weighted by ``n_samples``;
   a row (column) that no device kept this round keeps its previous global value;
3. device k's downlink is the best rank-``r_k`` approximation (Eckart-Young) of the global update
   restricted to its structure, split as ``B = U sqrt(S / s)``, ``A = sqrt(S / s) V^T`` with
   ``s = scale_rule(r_k)``, so ``s B A = U_r S_r V_r^T``.

The average is exact (no cross terms), unlike averaging A and B separately. A singular component
that is zero (the restriction has lower rank than r_k) is handed out as ``B`` column 0 and ``A``
row = the round-0 init row, so the product is unchanged and the component can still learn (both
factors zero would give it zero gradient forever).
"""

from __future__ import annotations

import torch

from simfed.accuracy.adapters import DeviceUpdate, Kept, LoRAFactors, module_dims
from simfed.accuracy.aggregators.base import DTYPE, Aggregator, Key, as_float, restrict, restriction


class FlexLoRA(Aggregator):
    name = "flexlora"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # the global update, dense in full-model coordinates (round 0: B = 0, so delta_W = 0)
        self.delta_W: dict[Key, torch.Tensor] = {
            key: torch.zeros(*module_dims(self.shape, key[1]), dtype=DTYPE) for key in self.keys()
        }
        # per round: (key, kept indices) -> top-r_max SVD of the restriction, shared by devices of one structure
        self._svd_cache: dict[tuple[Key, bytes], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def delta_for(self, kept: Kept) -> dict[Key, torch.Tensor]:
        self._check_kept(kept, "delta_for")
        return {key: restrict(self.delta_W[key], *restriction(self.shape, kept, key)) for key in self.keys()}

    def singular_values(self) -> dict[Key, torch.Tensor]:
        return {key: torch.linalg.svdvals(self.delta_W[key]) for key in self.keys()}

    def _aggregate(self, updates: list[DeviceUpdate]) -> None:
        for key in self.keys():
            d_out, d_in = module_dims(self.shape, key[1])
            total = torch.zeros(d_out, d_in, dtype=torch.float64)
            weight_rows = torch.zeros(d_out, dtype=torch.float64)
            weight_cols = torch.zeros(d_in, dtype=torch.float64)
            col_pruned = False
            for update in updates:
                rows, cols = restriction(self.shape, update.kept, key)
                f = update.factors
                delta = f.scale * (as_float(f.B[key]).double() @ as_float(f.A[key]).double())
                w = float(update.n_samples)
                if cols is None:  # output-pruned: rows are the covered coordinates
                    total.index_add_(0, rows, w * delta)
                    weight_rows.index_add_(0, rows, torch.full((len(rows),), w, dtype=torch.float64))
                else:  # input-pruned: columns are
                    col_pruned = True
                    total.index_add_(1, cols, w * delta)
                    weight_cols.index_add_(0, cols, torch.full((len(cols),), w, dtype=torch.float64))
            if col_pruned:
                covered = weight_cols > 0
                self.delta_W[key][:, covered] = (total[:, covered] / weight_cols[covered]).to(DTYPE)
            else:
                covered = weight_rows > 0
                self.delta_W[key][covered] = (total[covered] / weight_rows[covered, None]).to(DTYPE)
        self._svd_cache.clear()

    def _svd(self, key: Key, rows: torch.Tensor | None, cols: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        idx = rows if rows is not None else cols
        cache_key = (key, idx.numpy().tobytes())
        if cache_key not in self._svd_cache:
            u, s, vh = torch.linalg.svd(restrict(self.delta_W[key], rows, cols), full_matrices=False)
            r = self.r_max
            self._svd_cache[cache_key] = (u[:, :r].contiguous(), s[:r].contiguous(), vh[:r].contiguous())
        return self._svd_cache[cache_key]

    def _downlink(self, rank: int, kept: Kept, scale: float) -> LoRAFactors:
        factors = LoRAFactors(rank=rank, scale=scale)
        for key in self.keys():
            rows, cols = restriction(self.shape, kept, key)
            u, s, vh = self._svd(key, rows, cols)
            n_out = u.shape[0]
            n_in = vh.shape[1]
            a = torch.zeros(rank, n_in, dtype=DTYPE)
            b = torch.zeros(n_out, rank, dtype=DTYPE)
            k = min(rank, len(s))
            root = torch.sqrt(s[:k] / scale)
            b[:, :k] = u[:, :k] * root
            a[:k] = root[:, None] * vh[:k]
            # components with no energy: B column 0 (product unchanged), A row from the round-0 init
            tol = (s[0] if len(s) else 0.0) * max(n_out, n_in) * torch.finfo(DTYPE).eps
            dead = [j for j in range(rank) if j >= k or s[j] <= tol]
            if dead:
                init_rows = restrict(self.init_A[key], None, cols)
                for j in dead:
                    b[:, j] = 0.0
                    a[j] = init_rows[j]
            factors.A[key], factors.B[key] = a, b
        return factors
