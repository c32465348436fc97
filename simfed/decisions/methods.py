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

Recipe parameters (``params``) are declared per recipe (:attr:`Recipe.params`, with types, ranges
and defaults): ``rank`` (one-rank methods; default 8, the geometric middle of [2, 32]; a run sets it
from ``policy.rank``), ``s_star`` (a run sets it from ``s_star``) and ``rounds_to_target``
(uniform/fixed-ratio p = s*/rounds_to_target, default 10 rounds), ``ranks_by_type`` (hetlora),
``n_p`` (fedmp's number of pruning increments, default 5). ``policy`` holds the user's options of
the method's policy (``policy.params`` of a run config, e.g. S-UCB's ``discount`` γ, ``nu`` ν,
``rho`` ρ): :meth:`Recipe.policy_options` says which ones a method forwards. ``traces`` and
``predict_completion_s`` are the oracle's inputs, built by the server loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from simfed.decisions.arms import ArmSpace
from simfed.decisions.policies import POLICIES, Policy, make_policy
from simfed.errors import OptionError
from simfed.options import REQUIRED, Option, OptionTable, Range
from simfed.records import Arm

PRUNE_MODES = ("iterative", "oneshot", "none")
IMPORTANCES = ("lora-grad", "taylor", "magnitude")
AGGREGATORS = ("flexlora", "hetlora", "fedavg")

# HetLoRA's rule in simfed: a static rank per device class, larger for more capable boards
# (TX2 < Xavier NX < AGX Xavier; relative peak throughputs about 1 : 2 : 4, reference notes §6.2).
HETLORA_JETSON_RANKS: dict[str, int] = {"tx2": 4, "nx": 8, "agx": 16}


# The recipe parameters (declared once; each recipe lists the ones it reads). ``provided`` ones are set
# by a run from another config key, never in ``policy.method_params``.
RANK = Option("rank", "int", 8, range=Range(ge=1), provided="policy.rank")
S_STAR = Option("s_star", "float", REQUIRED, range=Range(ge=0, lt=1), provided="s_star")
ROUNDS_TO_TARGET = Option("rounds_to_target", "int", 10, range=Range(ge=1))
N_P = Option("n_p", "int", 5, range=Range(ge=1))
RANKS_BY_TYPE = Option("ranks_by_type", "table", dict(HETLORA_JETSON_RANKS),
                       item=Option("rank", "int", range=Range(ge=1)))
# what the server loop passes besides the parameters (objects, not options)
INPUTS = ("policy", "traces", "predict_completion_s")


@dataclass(frozen=True)
class PolicyContext:
    """What a recipe may use to build its policy: only what a server knows at registration.

    ``params`` are the recipe's parameters, already checked against :attr:`Recipe.params` with every
    default filled in; ``policy_params`` the user's options of the method's policy (checked);
    ``inputs`` the server loop's objects (the oracle's traces and predictor).
    """

    arm_space: ArmSpace
    device_ids: tuple[str, ...]
    device_types: Mapping[str, str]
    seed: int
    params: Mapping[str, Any] = field(default_factory=dict)
    policy_params: Mapping[str, Any] = field(default_factory=dict)
    inputs: Mapping[str, Any] = field(default_factory=dict)

    def param(self, key: str) -> Any:
        """A declared recipe parameter (its default when not given); an undeclared key is a bug."""
        if key not in self.params:
            raise KeyError(f"recipe parameter {key!r} is not declared by this method (add it to Recipe.params)")
        return self.params[key]

    def policy_kwargs(self) -> dict[str, Any]:
        return dict(self.policy_params)


@dataclass(frozen=True)
class Recipe:
    """A method: how it prunes, scores importance and aggregates, and how it builds its policy.

    ``policy`` is the registered policy the factory builds; ``policy_args`` the policy options the
    recipe sets itself; ``forwards_policy_params`` whether the user's ``policy.params`` reach the
    policy at all; ``params`` the recipe parameters the factory reads (:class:`~simfed.options.Option`).
    """

    name: str
    prune_mode: str
    importance: str
    aggregator: str
    policy_factory: Callable[[PolicyContext], Policy]
    description: str
    policy: str = "fixed"
    params: tuple[Option, ...] = ()
    policy_args: tuple[str, ...] = ()
    forwards_policy_params: bool = False

    def __post_init__(self) -> None:
        if self.prune_mode not in PRUNE_MODES:
            raise ValueError(f"recipe {self.name}: prune_mode {self.prune_mode!r} not in {PRUNE_MODES}")
        if self.importance not in IMPORTANCES:
            raise ValueError(f"recipe {self.name}: importance {self.importance!r} not in {IMPORTANCES}")
        if self.aggregator not in AGGREGATORS:
            raise ValueError(f"recipe {self.name}: aggregator {self.aggregator!r} not in {AGGREGATORS}")
        if self.policy not in POLICIES:
            raise ValueError(f"recipe {self.name}: policy {self.policy!r} is not registered")

    def param_options(self) -> OptionTable:
        """The recipe parameters this method reads (``policy.method_params``; ``rank``/``s_star`` provided)."""
        return OptionTable(f"method {self.name!r}", self.params)

    def policy_options(self) -> OptionTable:
        """The options of this method's policy that a user may set (``policy.params``)."""
        owner = f"policy {self.policy!r} of method {self.name!r}"
        if not self.forwards_policy_params:
            return OptionTable(owner, [])
        table = POLICIES[self.policy].options().without(*self.policy_args)
        return OptionTable(owner, list(table))


def _one_rank(ctx: PolicyContext) -> int:
    rank = ctx.param("rank")
    if not (ctx.arm_space.r_min <= rank <= ctx.arm_space.r_max):
        raise OptionError(f"rank: {rank!r} is outside the arm space's ranks [{ctx.arm_space.r_min}, {ctx.arm_space.r_max}] "
                          "(policy.r_min, policy.r_max)")
    return int(rank)


def uniform_increment(ctx: PolicyContext) -> float:
    """p = s* / rounds_to_target: every device reaches s* after the same number of rounds."""
    return ctx.param("s_star") / ctx.param("rounds_to_target")


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
    table = {k.lower(): v for k, v in dict(ctx.param("ranks_by_type")).items()}
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
    arms = [Arm(p, rank) for p in ctx.arm_space.grid_ps(ctx.param("n_p"))]
    return make_policy("discounted-ucb", arm_space=ctx.arm_space, seed=ctx.seed, arms=arms, **ctx.policy_kwargs())


def _oracle(ctx: PolicyContext) -> Policy:
    if "traces" not in ctx.inputs or "predict_completion_s" not in ctx.inputs:
        raise ValueError("oracle: method params need 'traces' and 'predict_completion_s' (the server loop builds them)")
    return make_policy("oracle", arm_space=ctx.arm_space, seed=ctx.seed, traces=ctx.inputs["traces"],
                       predict_completion_s=ctx.inputs["predict_completion_s"], **ctx.policy_kwargs())


def _fixed_rank(ctx: PolicyContext) -> Policy:
    return make_policy("sucb", arm_space=ctx.arm_space, seed=ctx.seed, fix_r=_one_rank(ctx), **ctx.policy_kwargs())


def _fixed_ratio(ctx: PolicyContext) -> Policy:
    p = min(uniform_increment(ctx), ctx.arm_space.p_max)
    return make_policy("sucb", arm_space=ctx.arm_space, seed=ctx.seed, fix_p=p, **ctx.policy_kwargs())


_RECIPES = [
    Recipe("fedspine", "iterative", "lora-grad", "flexlora", _fedspine, "FedSpine: S-UCB chooses (p, r) per device",
           policy="sucb", forwards_policy_params=True),
    Recipe("hetlora", "none", "lora-grad", "hetlora", _hetlora, "HetLoRA: no pruning, static rank by device type",
           params=(RANKS_BY_TYPE,)),
    Recipe("prune-then-tune", "oneshot", "taylor", "fedavg", _prune_then_tune,
           "one-shot Taylor pruning to s* before FL, then FedAvg LoRA at one rank", params=(RANK,)),
    Recipe("uniform", "iterative", "lora-grad", "flexlora", _uniform, "iterative pruning, the same p and rank for all",
           params=(RANK, S_STAR, ROUNDS_TO_TARGET)),
    Recipe("fedmp", "iterative", "lora-grad", "flexlora", _fedmp, "FedMP-style bandit (discounted UCB) on p only, fixed rank",
           policy="discounted-ucb", params=(RANK, N_P), forwards_policy_params=True),
    Recipe("oracle", "iterative", "lora-grad", "flexlora", _oracle, "reads the traces; equalises predicted completion times",
           policy="oracle", forwards_policy_params=True),
    Recipe("fedspine-fixed-rank", "iterative", "lora-grad", "flexlora", _fixed_rank, "ablation: S-UCB on p, rank fixed",
           policy="sucb", params=(RANK,), policy_args=("fix_r",), forwards_policy_params=True),
    Recipe("fedspine-fixed-ratio", "iterative", "lora-grad", "flexlora", _fixed_ratio, "ablation: S-UCB on r, p fixed",
           policy="sucb", params=(S_STAR, ROUNDS_TO_TARGET), policy_args=("fix_p",), forwards_policy_params=True),
]

METHODS: dict[str, Recipe] = {r.name: r for r in _RECIPES}


def get_method(name: str) -> Recipe:
    """The recipe of method ``name``.

    Raises:
        OptionError: an unknown method (the message lists the known ones).
    """
    recipe = METHODS.get(name)
    if recipe is None:
        raise OptionError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return recipe


def all_param_names() -> set[str]:
    """Every recipe parameter some method reads (a sweep shares one ``policy.method_params`` table)."""
    return {o.name for r in METHODS.values() for o in r.params}


def all_policy_param_names() -> set[str]:
    """Every policy option some method forwards (a sweep shares one ``policy.params`` table)."""
    return {name for r in METHODS.values() for name in r.policy_options().names}


def split_params(recipe: Recipe, params: Mapping[str, Any], prefix: str = "") -> tuple[dict, dict, dict]:
    """``params`` as (the recipe's parameters, checked and completed with defaults; its policy's
    options, checked; the server loop's inputs).

    Keys that only other methods read are left out: one table serves every method of a sweep.
    ``prefix`` goes before every key in messages.

    Raises:
        OptionError: a key no method reads, a value of the wrong type or out of range, a required
            parameter missing (``s_star`` for ``uniform``).
    """
    own = recipe.param_options()
    mine, others = {}, all_param_names()
    for key, value in params.items():
        if key in INPUTS:
            continue
        if key in own:
            mine[key] = value
        elif key not in others:
            raise OptionError(f"{prefix}{key}: not a parameter of any method (accepted: {', '.join(sorted(others))})")
    checked = own.check(mine, prefix, allow_provided=True, fill_defaults=True)
    policy_params = params.get("policy") or {}
    if not isinstance(policy_params, Mapping):
        raise OptionError(f"{prefix}policy: expected a table of policy options, got {policy_params!r}")
    table, shared = recipe.policy_options(), all_policy_param_names()
    for key in policy_params:
        if key not in table and key not in shared:
            raise table.unknown_key(key, f"{prefix}policy.")
    kwargs = table.check({k: v for k, v in policy_params.items() if k in table}, f"{prefix}policy.")
    inputs = {k: params[k] for k in INPUTS if k in params and k != "policy"}
    return checked, kwargs, inputs


def build_policy(method: str, arm_space: ArmSpace, device_ids: Sequence[str], device_types: Mapping[str, str],
                 seed: int, params: Mapping[str, Any] | None = None) -> Policy:
    """The policy of ``method`` for these devices (the server's registration data) and seed.

    ``params`` holds the recipe parameters (:attr:`Recipe.params`), ``policy`` (the user's policy
    options) and, for the oracle, ``traces`` and ``predict_completion_s`` (see :func:`split_params`).

    Raises:
        OptionError: an unknown method, parameter or policy option, or a value out of range.
        ValueError: the recipe cannot be built for these devices (e.g. a device type without a
            HetLoRA rank, the oracle without its inputs).
    """
    recipe = get_method(method)
    values, policy_params, inputs = split_params(recipe, dict(params or {}))
    ctx = PolicyContext(arm_space=arm_space, device_ids=tuple(device_ids), device_types=dict(device_types),
                        seed=int(seed), params=values, policy_params=policy_params, inputs=inputs)
    return recipe.policy_factory(ctx)

