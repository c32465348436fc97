"""HetLoRA (Cho et al., EMNLP'24, arXiv 2401.06432): zero-padding to the largest rank, norm-weighted.

The global adapter has rank ``r_max``; device k trains the truncation ``A[:r_k]``, ``B[:, :r_k]``.
The server zero-pads the uploads in the rank dimension and averages A and B separately with
HetLoRA's "sparsity-weighted" weights ``S_k = ||s_k B_k A_k||_F / sum_j ||s_j B_j A_j||_F``,
computed per adapted linear: a device whose update to a linear is larger counts more there.
Data size does not enter, as in the paper. simfed adds coverage in the pruned dimension (see
:mod:`~simfed.accuracy.aggregators.factor_average` for exactly what is padded and what is
coverage-averaged). HetLoRA's local rank self-pruning belongs to the trainer, not here.
"""

from __future__ import annotations

import torch

from simfed.accuracy.adapters import DeviceUpdate
from simfed.accuracy.aggregators.base import Key, as_float
from simfed.accuracy.aggregators.factor_average import FactorAverage


def linear_update_norm(update: DeviceUpdate, key: Key) -> float:
    """``||s B A||_F`` without forming the product: sqrt(trace((A A^T)(B^T B))) * s."""
    a = as_float(update.factors.A[key]).double()
    b = as_float(update.factors.B[key]).double()
    sq = torch.sum((a @ a.T) * (b.T @ b))
    return update.factors.scale * float(torch.sqrt(torch.clamp(sq, min=0.0)))


class HetLoRA(FactorAverage):
    name = "hetlora"

    def weights(self, updates: list[DeviceUpdate], key: Key) -> list[float]:
        return [linear_update_norm(u, key) for u in updates]

    @classmethod
    def weight_flops(cls, rank: int, d_out: int, d_in: int) -> float:
        """‖sBA‖_F via sum((AA^T) * (B^TB)): two r x r Gram products (2r^2(m+n)) and their dot (2r^2)."""
        return 2.0 * rank * rank * (d_out + d_in) + 2.0 * rank * rank
