"""HetLoRA (Cho et al., EMNLP'24, arXiv 2401.06432) as FedSpine compares against it: no pruning, an initial rank
per device class (larger for more capable boards), zero-padding norm-weighted aggregation, and HetLoRA's local
rank self-pruning: each device's loss carries λ·Σ‖B[:, ⌊γr⌋:]‖·‖A[⌊γr⌋:, :]‖ and a device whose tail norm fell
since its previous round sends its update at rank ⌊γr⌋ and keeps that rank afterwards (never below
``policy.r_min``). γ = 0.9 and λ = 0.01 are simfed's choice (``self_prune_decay``, ``self_prune_weight``; λ = 0
turns self-pruning off); the paper's values are not in our notes (docs/decisions.md, "HetLoRA").

Time: a plan is costed before training, at the rank the device holds when the round starts, so a device that
self-prunes uploads a smaller update than its plan was costed at in that round only; from its next round on,
its plans carry the smaller rank (a one-round lag, at most a (1-γ) share of one upload)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from simfed.decisions.methods.base import Method, MethodContext
from simfed.decisions.policies import Policy, make_policy
from simfed.options import Option, Range
from simfed.records import Arm, ObservationBatch

# simfed's rule: TX2 < Xavier NX < AGX Xavier (relative peak throughputs about 1 : 2 : 4, reference notes §6.2).
HETLORA_JETSON_RANKS: dict[str, int] = {"tx2": 4, "nx": 8, "agx": 16}
RANKS_BY_TYPE = Option("ranks_by_type", "table", dict(HETLORA_JETSON_RANKS), item=Option("rank", "int", range=Range(ge=1)))
SELF_PRUNE_DECAY = Option("self_prune_decay", "float", 0.9, range=Range(gt=0, le=1))
SELF_PRUNE_WEIGHT = Option("self_prune_weight", "float", 0.01, range=Range(ge=0))


def hetlora_rank(device_type: str, table: Mapping[str, int]) -> int:
    """The rank of a device type: exact key first, then a Jetson family name contained in the type."""
    key = device_type.lower()
    if key in table:
        return int(table[key])
    # e.g. "jetson-tx2" -> tx2, "xavier-nx" -> nx, "agx-xavier" -> agx; longer names are tried first
    for family in sorted(table, key=len, reverse=True):
        if family in key:
            return int(table[family])
    raise ValueError(f"hetlora: no rank for device type {device_type!r}; give policy.method_params.ranks_by_type = "
                     f"{{type = rank}} (known: {sorted(table)})")


class HetLoRA(Method):
    name = "hetlora"
    description = "HetLoRA: no pruning, static rank by device type"
    prune_mode = "none"
    aggregator = "hetlora"
    params = (RANKS_BY_TYPE, SELF_PRUNE_DECAY, SELF_PRUNE_WEIGHT)

    def build_policy(self, ctx: MethodContext) -> Policy:
        table = {k.lower(): v for k, v in dict(ctx.param("ranks_by_type")).items()}
        per_device = {}
        for dev in ctx.device_ids:
            if dev not in ctx.device_types:
                raise ValueError(f"hetlora: device {dev!r} has no registered type")
            rank = hetlora_rank(ctx.device_types[dev], table)
            if not (ctx.arm_space.r_min <= rank <= ctx.arm_space.r_max):
                raise ValueError(f"hetlora: the rank {rank} of device type {ctx.device_types[dev]!r} is outside "
                                 f"[policy.r_min, policy.r_max] = [{ctx.arm_space.r_min}, {ctx.arm_space.r_max}]")
            per_device[dev] = Arm(p=0.0, r=rank)
        return make_policy("fixed", arm_space=ctx.arm_space, seed=ctx.seed, arm=Arm(0.0, ctx.arm_space.r_min),
                           per_device=per_device)

    # ------------------------------------------------------------------ rank self-pruning
    def train_options(self) -> dict[str, Any]:
        if self.context is None:
            return {}
        return {"self_prune_decay": float(self.context.param("self_prune_decay")),
                "self_prune_weight": float(self.context.param("self_prune_weight"))}

    def _rank_table(self) -> np.ndarray:
        """Each registered device's current rank cap (by policy position; a large number: none yet)."""
        n = len(getattr(self.policy, "_ids", ()))
        table = getattr(self, "_ranks", np.empty(0, dtype=np.int64))
        if len(table) < n:
            table = np.concatenate([table, np.full(n - len(table), np.iinfo(np.int64).max, dtype=np.int64)])
            self._ranks = table
        return table

    def plans(self, round: int, device_ids: Sequence[str], sparsity_before: np.ndarray, **kwargs: Any):
        batch = super().plans(round, device_ids, sparsity_before, **kwargs)
        caps = self._rank_table()[self._selected[2]]
        return batch.with_columns(r=np.minimum(batch.r, caps)) if (caps < batch.r).any() else batch

    def learn(self, round: int, observations: Any, rewards: Any) -> None:
        super().learn(round, observations, rewards)
        batch = ObservationBatch.of(observations, round=round)
        hit = batch.ok & np.isfinite(batch.rank_after)  # a rejected update's self-pruning was undone with it
        if hit.any():
            table = self._rank_table()
            pos = self.policy.register([batch.device_ids[k] for k in np.flatnonzero(hit).tolist()])
            r_min = self.context.arm_space.r_min if self.context is not None else 1
            table[pos] = np.minimum(table[pos], np.maximum(batch.rank_after[hit], r_min).astype(np.int64))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "ranks": self._rank_table().copy()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self._ranks = np.asarray(state["ranks"], dtype=np.int64).copy()
