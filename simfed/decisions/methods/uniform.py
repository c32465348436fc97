"""Uniform iterative pruning: every device prunes the same p = s* / rounds_to_target each round at one rank."""

from __future__ import annotations

from simfed.decisions.methods.base import RANK, ROUNDS_TO_TARGET, S_STAR, Method, MethodContext, one_rank, uniform_increment
from simfed.decisions.policies import Policy, make_policy
from simfed.records import Arm


class Uniform(Method):
    name = "uniform"
    description = "iterative pruning, the same p and rank for all"
    params = (RANK, S_STAR, ROUNDS_TO_TARGET)

    def build_policy(self, ctx: MethodContext) -> Policy:
        return make_policy("fixed", arm_space=ctx.arm_space, seed=ctx.seed, arm=Arm(uniform_increment(ctx), one_rank(ctx)))
