"""HetLoRA (Cho et al., EMNLP'24, arXiv 2401.06432) as FedSpine compares against it: no pruning, a static rank
per device class (larger for more capable boards), zero-padding norm-weighted aggregation."""

from __future__ import annotations

from collections.abc import Mapping

from simfed.decisions.methods.base import Method, MethodContext
from simfed.decisions.policies import Policy, make_policy
from simfed.options import Option, Range
from simfed.records import Arm

# simfed's rule: TX2 < Xavier NX < AGX Xavier (relative peak throughputs about 1 : 2 : 4, reference notes §6.2).
HETLORA_JETSON_RANKS: dict[str, int] = {"tx2": 4, "nx": 8, "agx": 16}
RANKS_BY_TYPE = Option("ranks_by_type", "table", dict(HETLORA_JETSON_RANKS), item=Option("rank", "int", range=Range(ge=1)))


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
    params = (RANKS_BY_TYPE,)

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
