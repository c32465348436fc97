"""Methods to compare (DESIGN §5): each is a recipe of a prune mode, an importance criterion, an
aggregator and a policy factory. The server loop reads the first three; it calls
:func:`build_policy` for the decisions.

| method                | prune     | importance | aggregator | decision                                       |
|-----------------------|-----------|------------|------------|------------------------------------------------|
| fedspine              | iterative | lora-grad  | flexlora   | S-UCB on (p, r) per device (Yao et al. 2025)  |
| hetlora               | none      | lora-grad  | hetlora    | static rank by device type (Cho et al. 2024)   |
| prune-then-tune       | oneshot   | taylor     | fedavg     | p = 0 during FL, one rank (LLM-Pruner + FedIT) |
| uniform               | iterative | lora-grad  | flexlora   | the same p = s*/rounds_to_target and one rank  |
| fedmp                 | iterative | lora-grad  | flexlora   | discounted UCB on p only, fixed rank (FedMP)   |
| oracle                | iterative | lora-grad  | flexlora   | reads the traces; equalises completion times   |
| fedspine-fixed-rank   | iterative | lora-grad  | flexlora   | S-UCB on p only, rank fixed (ablation)         |
| fedspine-fixed-ratio  | iterative | lora-grad  | flexlora   | S-UCB on r only, p fixed (ablation)            |

The τ ablation is not a method: τ (local iterations between pruning steps) is a run parameter; run
``fedspine`` with ``tau`` set to 5, 10, 20, 40, 80 (a sweep over ``tau``). ``hetlora`` has no pruning,
so its importance criterion is unused (listed for completeness).

Recipe parameters (``params``): ``rank`` (one-rank methods; default 8, the geometric middle of
[2, 32]), ``s_star`` and ``rounds_to_target`` (uniform/fixed-ratio p = s*/rounds_to_target, default 10
rounds), ``ranks_by_type`` (hetlora), ``policy`` (extra policy kwargs, e.g. S-UCB's ν, ρ, γ),
``traces`` and ``predict_completion_s`` (oracle only).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from simfed.decisions.arms import ArmSpace
from simfed.decisions.policies import Policy, make_policy
from simfed.records import Arm

PRUNE_MODES = ("iterative", "oneshot", "none")
IMPORTANCES = ("lora-grad", "taylor", "magnitude")
AGGREGATORS = ("flexlora", "hetlora", "fedavg")

# HetLoRA's rule in simfed: a static rank per device class, larger for more capable boards
# (TX2 < Xavier NX < AGX Xavier; relative peak throughputs about 1 : 2 : 4, reference notes §6.2).
HETLORA_JETSON_RANKS: dict[str, int] = {"tx2": 4, "nx": 8, "agx": 16}


@dataclass(frozen=True)
class PolicyContext:
    """What a recipe may use to build its policy: only what a server knows at registration."""

    arm_space: ArmSpace
    device_ids: tuple[str, ...]
    device_types: Mapping[str, str]
    seed: int
    params: Mapping[str, Any] = field(default_factory=dict)

    def param(self, key: str, default: Any) -> Any:
        return self.params.get(key, default)

    def policy_kwargs(self) -> dict[str, Any]:
        extra = self.params.get("policy", {})
        if not isinstance(extra, Mapping):
            raise ValueError(f"method params: 'policy' must be a mapping of policy arguments, got {extra!r}")
        return dict(extra)


@dataclass(frozen=True)
class Recipe:
    name: str
    prune_mode: str
    importance: str
    aggregator: str
    policy_factory: Callable[[PolicyContext], Policy]
    description: str

    def __post_init__(self) -> None:
        if self.prune_mode not in PRUNE_MODES:
            raise ValueError(f"recipe {self.name}: prune_mode {self.prune_mode!r} not in {PRUNE_MODES}")
        if self.importance not in IMPORTANCES:
            raise ValueError(f"recipe {self.name}: importance {self.importance!r} not in {IMPORTANCES}")
        if self.aggregator not in AGGREGATORS:
            raise ValueError(f"recipe {self.name}: aggregator {self.aggregator!r} not in {AGGREGATORS}")


def _one_rank(ctx: PolicyContext) -> int:
    rank = ctx.param("rank", 8)
    if int(rank) != rank or not (ctx.arm_space.r_min <= rank <= ctx.arm_space.r_max):
        raise ValueError(f"method params: rank={rank!r} must be an integer in [{ctx.arm_space.r_min}, {ctx.arm_space.r_max}]")
    return int(rank)


def uniform_increment(ctx: PolicyContext) -> float:
    """p = s* / rounds_to_target: every device reaches s* after the same number of rounds."""
    if "s_star" not in ctx.params:
        raise ValueError("method params: 's_star' (target sparsity) is required for this method")
    s_star = float(ctx.params["s_star"])
    rounds = ctx.param("rounds_to_target", 10)
    if not (0.0 <= s_star < 1.0):
        raise ValueError(f"method params: s_star={s_star!r} must be in [0, 1)")
    if int(rounds) != rounds or rounds < 1:
        raise ValueError(f"method params: rounds_to_target={rounds!r} must be a positive integer")
    return s_star / int(rounds)


def hetlora_rank(device_type: str, table: Mapping[str, int]) -> int:
    """The rank of a device type: exact key first, then a Jetson family name contained in the type."""
    key = device_type.lower()
    if key in table:
        return int(table[key])
    # e.g. "jetson-tx2" -> tx2, "xavier-nx" -> nx, "agx-xavier" -> agx; longer names are tried first
    for family in sorted(table, key=len, reverse=True):
        if family in key:
            return int(table[family])
    raise ValueError(
        f"hetlora: no rank for device type {device_type!r}; give params ranks_by_type={{type: rank}} "
        f"(known: {sorted(table)})"
    )


def _fedspine(ctx: PolicyContext) -> Policy:
    return make_policy("sucb", arm_space=ctx.arm_space, seed=ctx.seed, **ctx.policy_kwargs())


def _hetlora(ctx: PolicyContext) -> Policy:
    table = {k.lower(): v for k, v in dict(ctx.param("ranks_by_type", HETLORA_JETSON_RANKS)).items()}
    per_device = {}
    for dev in ctx.device_ids:
        if dev not in ctx.device_types:
            raise ValueError(f"hetlora: device {dev!r} has no registered type")
        r = hetlora_rank(ctx.device_types[dev], table)
        per_device[dev] = ctx.arm_space.clip(Arm(p=0.0, r=r))
    return make_policy("fixed", arm_space=ctx.arm_space, seed=ctx.seed, arm=Arm(0.0, ctx.arm_space.r_min),
                       per_device=per_device)


def _prune_then_tune(ctx: PolicyContext) -> Policy:
    return make_policy("fixed", arm_space=ctx.arm_space, seed=ctx.seed, arm=Arm(0.0, _one_rank(ctx)))


def _uniform(ctx: PolicyContext) -> Policy:
    return make_policy("fixed", arm_space=ctx.arm_space, seed=ctx.seed, arm=Arm(uniform_increment(ctx), _one_rank(ctx)))


def _fedmp(ctx: PolicyContext) -> Policy:
    rank = _one_rank(ctx)
    arms = [Arm(p, rank) for p in ctx.arm_space.grid_ps(int(ctx.param("n_p", 5)))]
    return make_policy("discounted-ucb", arm_space=ctx.arm_space, seed=ctx.seed, arms=arms, **ctx.policy_kwargs())


def _oracle(ctx: PolicyContext) -> Policy:
    if "traces" not in ctx.params or "predict_completion_s" not in ctx.params:
        raise ValueError("oracle: method params need 'traces' and 'predict_completion_s' (the server loop builds them)")
    return make_policy("oracle", arm_space=ctx.arm_space, seed=ctx.seed, traces=ctx.params["traces"],
                       predict_completion_s=ctx.params["predict_completion_s"], **ctx.policy_kwargs())


def _fixed_rank(ctx: PolicyContext) -> Policy:
    return make_policy("sucb", arm_space=ctx.arm_space, seed=ctx.seed, fix_r=_one_rank(ctx), **ctx.policy_kwargs())


def _fixed_ratio(ctx: PolicyContext) -> Policy:
    p = min(uniform_increment(ctx), ctx.arm_space.p_max)
    return make_policy("sucb", arm_space=ctx.arm_space, seed=ctx.seed, fix_p=p, **ctx.policy_kwargs())


_RECIPES = [
    Recipe("fedspine", "iterative", "lora-grad", "flexlora", _fedspine, "FedSpine: S-UCB chooses (p, r) per device"),
    Recipe("hetlora", "none", "lora-grad", "hetlora", _hetlora, "HetLoRA: no pruning, static rank by device type"),
    Recipe("prune-then-tune", "oneshot", "taylor", "fedavg", _prune_then_tune,
           "one-shot Taylor pruning to s* before FL, then FedAvg LoRA at one rank"),
    Recipe("uniform", "iterative", "lora-grad", "flexlora", _uniform, "iterative pruning, the same p and rank for all"),
    Recipe("fedmp", "iterative", "lora-grad", "flexlora", _fedmp, "FedMP-style bandit (discounted UCB) on p only, fixed rank"),
    Recipe("oracle", "iterative", "lora-grad", "flexlora", _oracle, "reads the traces; equalises predicted completion times"),
    Recipe("fedspine-fixed-rank", "iterative", "lora-grad", "flexlora", _fixed_rank, "ablation: S-UCB on p, rank fixed"),
    Recipe("fedspine-fixed-ratio", "iterative", "lora-grad", "flexlora", _fixed_ratio, "ablation: S-UCB on r, p fixed"),
]

METHODS: dict[str, Recipe] = {r.name: r for r in _RECIPES}


def get_method(name: str) -> Recipe:
    recipe = METHODS.get(name)
    if recipe is None:
        raise ValueError(f"unknown method {name!r}; known: {sorted(METHODS)}")
    return recipe


def build_policy(method: str, arm_space: ArmSpace, device_ids: Sequence[str], device_types: Mapping[str, str],
                 seed: int, params: Mapping[str, Any] | None = None) -> Policy:
    """The policy of ``method`` for these devices (the server's registration data) and seed."""
    ctx = PolicyContext(arm_space=arm_space, device_ids=tuple(device_ids), device_types=dict(device_types),
                        seed=int(seed), params=dict(params or {}))
    return get_method(method).policy_factory(ctx)

