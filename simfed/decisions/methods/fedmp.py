"""FedMP-style (Jiang et al., 2022): a per-device bandit (discounted UCB) on the pruning ratio only, one rank."""

from __future__ import annotations

from simfed.decisions.methods.base import RANK, Method, MethodContext, one_rank
from simfed.decisions.policies import Policy, make_policy
from simfed.options import Option, Range
from simfed.records import Arm

N_P = Option("n_p", "int", 5, range=Range(ge=1))


class FedMP(Method):
    name = "fedmp"
    description = "FedMP-style bandit (discounted UCB) on p only, fixed rank"
    policy_name = "discounted-ucb"
    params = (RANK, N_P)
    forwards_policy_params = True

    def build_policy(self, ctx: MethodContext) -> Policy:
        rank = one_rank(ctx)
        arms = [Arm(p, rank) for p in ctx.arm_space.grid_ps(ctx.param("n_p"))]
        return make_policy("discounted-ucb", arm_space=ctx.arm_space, seed=ctx.seed, arms=arms, **ctx.policy_params)
