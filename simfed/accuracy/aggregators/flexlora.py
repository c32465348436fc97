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

The average is exact (no cross terms), unlike averaging A and B separately. The global update is
stored as its compact SVD ``U diag(S) Vh`` (float32; components below float32 round-off dropped):
it is a sum of low-rank scattered products plus the previous value on uncovered coordinates, so
merging costs QRs of ``[d, R]`` factors and an ``R x R`` SVD, and a device's restriction is
factored the same way, never as a dense ``d_out x d_in`` SVD (that took over a minute per device
for SmolLM2-135M's 210 adapted linears on 2 cores). A dense SVD is used only once ``R`` reaches
the matrix's smaller side. A singular component
that is zero (the restriction has lower rank than r_k) is handed out as ``B`` column 0 and ``A``
row = the round-0 init row, so the product is unchanged and the component can still learn (both
factors zero would give it zero gradient forever).
"""

from __future__ import annotations

import torch

from simfed.accuracy.adapters import DeviceUpdate, Kept, LoRAFactors, module_dims
from simfed.accuracy.aggregators.base import (
    DTYPE,
    Aggregator,
    Key,
    as_float,
    data_coverage,
    qr_flops,
    restrict,
    restriction,
    svd_flops,
)


class FlexLoRA(Aggregator):
    name = "flexlora"
    state_attrs = ("svd",)
    transient_attrs = ("_svd_cache",)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # the global update of each linear as a compact SVD (round 0: B = 0, so rank 0)
        self.svd: dict[Key, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        with self.on_device():
            for key in self.keys():
                d_out, d_in = module_dims(self.shape, key[1])
                self.svd[key] = (torch.zeros(d_out, 0, dtype=DTYPE), torch.zeros(0, dtype=DTYPE), torch.zeros(0, d_in, dtype=DTYPE))
        # per round: (key, kept indices) -> top-r_max SVD of the restriction, shared by devices of one structure
        self._svd_cache: dict[tuple[Key, bytes], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def merge_flops(cls, full, updates, merged_before: bool) -> float:
        """Per linear (m x n): the merge is a compact SVD of [scattered s_k B_k | previous U S] x [A_k ; Vh]
        with R = sum_k r_k inner columns, plus min(m, n) for the previous global update once one exists (an
        upper bound on its compact rank, which saturates after a few rounds of many devices); then every
        accepted device's downlink is re-factored from the new update restricted to its structure, with as
        many inner columns. See :func:`compact_svd_flops`."""
        if not updates:
            return 0.0
        total = 0.0
        ranks = sum(r * count for r, _, count in updates)
        for j, (m, n) in enumerate(full):
            inner = ranks + (min(m, n) if merged_before else 0)
            total += compact_svd_flops(m, n, inner)
            r_global = min(m, n, inner)
            for _, dims, count in updates:
                mk, nk = dims[j]
                total += count * compact_svd_flops(mk, nk, r_global)
        return total

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self._svd_cache.clear()

    def global_delta(self, key: Key) -> torch.Tensor:
        """The dense global update of one linear in full-model coordinates."""
        u, s, vh = self.svd[key]
        return (u * s) @ vh

    def delta_for(self, kept: Kept) -> dict[Key, torch.Tensor]:
        self._check_kept(kept, "delta_for")
        out = {}
        with self.on_device():
            for key in self.keys():
                rows, cols = restriction(self.shape, kept, key)
                u, s, vh = self.svd[key]
                out[key] = (restrict(u, rows, None) * s) @ restrict(vh, None, cols)
        return out

    def singular_values(self) -> dict[Key, torch.Tensor]:
        return {key: self.svd[key][1].clone() for key in self.keys()}

    def _aggregate(self, updates: list[DeviceUpdate]) -> None:
        for key in self.keys():
            d_out, d_in = module_dims(self.shape, key[1])
            # per-coordinate denominators: the data size of the devices that keep each row (column)
            col_pruned, coverage = data_coverage(self.shape, updates, key)
            lefts, rights = [], []
            for update in updates:
                rows, cols = restriction(self.shape, update.kept, key)
                f = update.factors
                b = f.scale * as_float(f.B[key]).double()
                a = as_float(f.A[key]).double()
                if col_pruned:  # scale A's columns by n_k / coverage and scatter them
                    right = torch.zeros(f.rank, d_in, dtype=torch.float64)
                    right[:, cols] = a * (update.n_samples / coverage[cols])
                    lefts.append(b)
                    rights.append(right)
                else:  # scale B's rows by n_k / coverage and scatter them
                    left = torch.zeros(d_out, f.rank, dtype=torch.float64)
                    left[rows] = b * (update.n_samples / coverage[rows])[:, None]
                    lefts.append(left)
                    rights.append(a)
            # coordinates nobody kept keep their previous value
            u, s, vh = (t.double() for t in self.svd[key])
            uncovered = (coverage == 0).double()
            if col_pruned:
                lefts.append(u * s)
                rights.append(vh * uncovered)
            else:
                lefts.append((u * s) * uncovered[:, None])
                rights.append(vh)
            self.svd[key] = _compact_svd(torch.cat(lefts, dim=1), torch.cat(rights, dim=0))
        self._svd_cache.clear()

    def _restricted_svd(self, key: Key, rows: torch.Tensor | None, cols: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        idx = rows if rows is not None else cols
        cache_key = (key, idx.cpu().numpy().tobytes())
        if cache_key not in self._svd_cache:
            u, s, vh = (t.double() for t in self.svd[key])
            left = restrict(u, rows, None) * s
            right = restrict(vh, None, cols)
            u_r, s_r, vh_r = _compact_svd(left, right)
            r = self.r_max
            self._svd_cache[cache_key] = (u_r[:, :r].contiguous(), s_r[:r].contiguous(), vh_r[:r].contiguous())
        return self._svd_cache[cache_key]

    def _downlink(self, rank: int, kept: Kept, scale: float) -> LoRAFactors:
        factors = LoRAFactors(rank=rank, scale=scale)
        for key in self.keys():
            rows, cols = restriction(self.shape, kept, key)
            u, s, vh = self._restricted_svd(key, rows, cols)
            n_out, n_in = u.shape[0], vh.shape[1]
            a = torch.zeros(rank, n_in, dtype=DTYPE)
            b = torch.zeros(n_out, rank, dtype=DTYPE)
            k = min(rank, len(s))  # components with energy (exact zeros were dropped)
            root = torch.sqrt(s[:k] / scale)
            b[:, :k] = u[:, :k] * root
            a[:k] = root[:, None] * vh[:k]
            if k < rank:  # no energy left: B column 0 (product unchanged), A row from the round-0 init
                a[k:] = restrict(self.init_A[key], None, cols)[k:rank]
            factors.A[key], factors.B[key] = a, b
        return factors


def compact_svd_flops(m: int, n: int, inner: int) -> float:
    """FLOPs of :func:`_compact_svd` of an ``[m, inner] @ [inner, n]`` product: with ``inner >= min(m, n)``
    the dense product (2 m n inner) and a dense thin SVD; else QRs of both factors, the ``inner x inner``
    core product and its SVD, and the two products that rotate U and Vh back (2 m R^2 + 2 n R^2)."""
    if inner <= 0:
        return 0.0
    if inner >= min(m, n):
        return 2.0 * m * n * inner + svd_flops(m, n)
    r = inner
    return qr_flops(m, r) + qr_flops(n, r) + 2.0 * r**3 + svd_flops(r, r) + 2.0 * m * r * r + 2.0 * n * r * r


def _compact_svd(left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Compact SVD ``(U, S, Vh)`` of ``left @ right`` (float64 in, float32 out), without zero components.

    With ``R`` inner columns, QRs of both factors reduce it to an ``R x R`` SVD; once ``R`` reaches
    the smaller side of the product the dense SVD is no dearer. Components whose singular value
    is below float32 round-off relative to the largest are dropped, which keeps ``R`` bounded.
    """
    m, n = left.shape[0], right.shape[1]
    inner = left.shape[1]
    if inner == 0:
        return torch.zeros(m, 0, dtype=DTYPE), torch.zeros(0, dtype=DTYPE), torch.zeros(0, n, dtype=DTYPE)
    if inner >= min(m, n):
        u, s, vh = torch.linalg.svd(left @ right, full_matrices=False)
    else:
        q_l, r_l = torch.linalg.qr(left)
        q_r, r_r = torch.linalg.qr(right.T)
        u_c, s, vh_c = torch.linalg.svd(r_l @ r_r.T, full_matrices=False)
        u, vh = q_l @ u_c, vh_c @ q_r.T
    tol = (float(s[0]) if len(s) else 0.0) * max(m, n) * float(torch.finfo(DTYPE).eps)
    keep = int((s > tol).sum()) if len(s) and s[0] > 0 else 0
    return u[:, :keep].to(DTYPE).contiguous(), s[:keep].to(DTYPE).contiguous(), vh[:keep].to(DTYPE).contiguous()
