"""FedIT (Zhang et al., ICASSP'24, arXiv 2305.05644): FedAvg on the LoRA factors, one rank for all.

``A = sum_k p_k A_k`` and ``B = sum_k p_k B_k`` with ``p_k`` proportional to the data size, averaged
separately (so ``B A`` is not the average of the products). simfed adds coverage in the pruned
dimension (see :mod:`~simfed.accuracy.aggregators.factor_average`). Ranks must be equal: use
``hetlora`` or ``flexlora`` for heterogeneous ranks.
"""

from __future__ import annotations

from simfed.accuracy.adapters import DeviceUpdate
from simfed.accuracy.aggregators.base import Key
from simfed.accuracy.aggregators.factor_average import FactorAverage


class FedAvgLoRA(FactorAverage):
    name = "fedavg"

    def weights(self, updates: list[DeviceUpdate], key: Key) -> list[float]:
        return [float(u.n_samples) for u in updates]

    def _aggregate(self, updates: list[DeviceUpdate]) -> None:
        ranks = sorted({u.factors.rank for u in updates})
        if len(ranks) > 1:
            raise ValueError(
                f"fedavg (FedIT) needs one LoRA rank for all devices, got ranks {ranks}; "
                "use aggregator 'hetlora' or 'flexlora' for heterogeneous ranks"
            )
        super()._aggregate(updates)
