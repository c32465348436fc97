"""FLoRA (Wang et al., NeurIPS'24, arXiv 2409.05976) as a baseline: no pruning, a static rank per device class
(HetLoRA's table, ``ranks_by_type``, so the two are compared at the same ranks), and FLoRA's stacking
aggregation merged into the base (aggregator ``flora``, :mod:`simfed.accuracy.aggregators.flora`).

What a device downloads: FLoRA's server sends the stacked modules of the last aggregation, of rank
``R_t = sum_k r_k`` over that round's accepted updates, and each device merges them into its weights and
starts a fresh adapter of its own (no adapter travels down). A device that missed aggregations needs every
stack it has not merged. The method keeps the total stacked rank so far and, per device, the total it had
when it last downloaded; a plan's ``down_rank`` (:class:`~simfed.records.PlanBatch`) is the difference, and
the cost model costs the download at that rank in the device's structure (0 in round 0). The method sees
outcomes, not transfer times: a device whose round ended ``ok``, ``failed`` or ``oom`` finished its
download (the engine decides these after it), any other (``late``, ``straggler``, ``offline``,
``unavailable``) is taken to have merged nothing, which overestimates its next download when it had in
fact finished this one (a straggler cut off while computing, for instance).
Neither the devices' own merge ``W + B_stack A_stack`` nor a cheaper dense download once ``R`` exceeds
``d_out d_in / (d_out + d_in)`` is modelled: FLoRA sends the stacks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from simfed.decisions.methods.base import Method, MethodContext
from simfed.decisions.methods.hetlora import RANKS_BY_TYPE, HetLoRA
from simfed.decisions.policies import Policy
from simfed.records import OUTCOME_CODE, ObservationBatch, Outcome, PlanBatch

#: Outcomes counted as "received the round's download" (see the module docstring).
_DOWNLOADED = np.array([OUTCOME_CODE[o] for o in (Outcome.OK, Outcome.FAILED, Outcome.OOM)], dtype=np.int8)


class FLoRAMethod(Method):
    name = "flora"
    description = "FLoRA: no pruning, static rank by device type, stacked updates merged into the base"
    prune_mode = "none"
    aggregator = "flora"
    params = (RANKS_BY_TYPE,)

    def build_policy(self, ctx: MethodContext) -> Policy:
        """HetLoRA's fixed rank per device type (``ranks_by_type``; errors name HetLoRA's table)."""
        return HetLoRA.build_policy(self, ctx)

    # ------------------------------------------------------------------ the stacked download
    def _received(self, n: int) -> np.ndarray:
        """Per policy position: the total stacked rank the device had merged when it last downloaded."""
        table = getattr(self, "_merged_by", np.zeros(0, dtype=np.int64))
        if len(table) < n:
            table = np.concatenate([table, np.zeros(n - len(table), dtype=np.int64)])
            self._merged_by = table
        return table

    def plans(self, round: int, device_ids: Sequence[str], sparsity_before: np.ndarray, **kwargs: Any) -> PlanBatch:
        """The policy's plans with ``down_rank`` = the stacked rank each device has not merged yet."""
        batch = super().plans(round, device_ids, sparsity_before, **kwargs)
        pos = self._selected[2]
        received = self._received(int(pos.max()) + 1 if len(pos) else 0)[pos]
        return batch.with_columns(down_rank=getattr(self, "_stacked", 0) - received)

    def learn(self, round: int, observations: Any, rewards: Any) -> None:
        """The policy's update; then the devices that received this round's download have merged every stack so
        far, and this round's accepted updates (``ok``) form the next stack."""
        super().learn(round, observations, rewards)
        batch = ObservationBatch.of(observations, round=round)
        pos = self.policy.register(batch.device_ids)
        table = self._received(int(pos.max()) + 1 if len(pos) else 0)
        stacked = getattr(self, "_stacked", 0)
        table[pos[np.isin(batch.outcome, _DOWNLOADED)]] = stacked
        self._stacked = stacked + int(batch.r[batch.ok].sum())

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "stacked": int(getattr(self, "_stacked", 0)),
                "merged_by": self._received(0).copy()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self._stacked = int(state["stacked"])
        self._merged_by = np.asarray(state["merged_by"], dtype=np.int64).copy()
