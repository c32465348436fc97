"""Prune-then-tune: one-shot structured pruning to s* before FL with LLM-Pruner's first-order Taylor importance
(Ma et al., NeurIPS'23), then FedIT (FedAvg on the LoRA factors, Zhang et al., ICASSP'24) at one rank."""

from __future__ import annotations

from simfed.decisions.methods.base import RANK, Method, MethodContext, one_rank
from simfed.decisions.policies import Policy, make_policy
from simfed.records import Arm


class PruneThenTune(Method):
    name = "prune-then-tune"
    description = "one-shot Taylor pruning to s* before FL, then FedAvg LoRA at one rank"
    prune_mode = "oneshot"
    importance = "taylor"
    aggregator = "fedavg"
    params = (RANK,)

    def build_policy(self, ctx: MethodContext) -> Policy:
        return make_policy("fixed", arm_space=ctx.arm_space, seed=ctx.seed, arm=Arm(0.0, one_rank(ctx)))
