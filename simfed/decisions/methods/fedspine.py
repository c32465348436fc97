"""FedSpine (Yao et al., arXiv 2501.02438): S-UCB chooses each device's (p, r); iterative LoRA-guided pruning;
FlexLoRA aggregation. Its two ablations fix one coordinate of the arm (DESIGN §5)."""

from __future__ import annotations

from simfed.decisions.methods.base import RANK, ROUNDS_TO_TARGET, S_STAR, Method, MethodContext, one_rank, uniform_increment
from simfed.decisions.policies import Policy, make_policy


class FedSpine(Method):
    name = "fedspine"
    description = "FedSpine: S-UCB chooses (p, r) per device"
    policy_name = "sucb"
    forwards_policy_params = True


class FedSpineFixedRank(FedSpine):
    name = "fedspine-fixed-rank"
    description = "ablation: S-UCB on p, rank fixed"
    params = (RANK,)
    policy_args = ("fix_r",)

    def build_policy(self, ctx: MethodContext) -> Policy:
        return make_policy("sucb", arm_space=ctx.arm_space, seed=ctx.seed, fix_r=one_rank(ctx), **ctx.policy_params)


class FedSpineFixedRatio(FedSpine):
    name = "fedspine-fixed-ratio"
    description = "ablation: S-UCB on r, p fixed"
    params = (S_STAR, ROUNDS_TO_TARGET)
    policy_args = ("fix_p",)

    def build_policy(self, ctx: MethodContext) -> Policy:
        p = min(uniform_increment(ctx), ctx.arm_space.p_max)
        return make_policy("sucb", arm_space=ctx.arm_space, seed=ctx.seed, fix_p=p, **ctx.policy_params)
