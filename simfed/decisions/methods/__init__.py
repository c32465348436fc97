"""Methods to compare (DESIGN §5): one :class:`~simfed.decisions.methods.base.Method` subclass per file, a name ->
class registry here. Adding a method is one file plus one line in ``_CLASSES``; a user's own method, in their own
file, is named by import path (``module:Class``) wherever a registered name is accepted.

| method                | prune     | importance | aggregator | decision                                       |
|-----------------------|-----------|------------|------------|------------------------------------------------|
| fedspine              | iterative | lora-grad  | flexlora   | S-UCB on (p, r) per device (Yao et al. 2025)  |
| hetlora               | none      | lora-grad  | hetlora    | static rank by device type (Cho et al. 2024)   |
| flora                 | none      | lora-grad  | flora      | static rank by type; stacking merged into base |
| prune-then-tune       | oneshot   | taylor     | fedavg     | p = 0 during FL, one rank (LLM-Pruner + FedIT) |
| uniform               | iterative | lora-grad  | flexlora   | the same p = s*/rounds_to_target and one rank  |
| fedmp                 | iterative | lora-grad  | flexlora   | discounted UCB on p only, fixed rank (FedMP)   |
| oracle                | iterative | lora-grad  | flexlora   | reads the traces; equalises completion times   |
| fedspine-fixed-rank   | iterative | lora-grad  | flexlora   | S-UCB on p only, rank fixed (ablation)         |
| fedspine-fixed-ratio  | iterative | lora-grad  | flexlora   | S-UCB on r only, p fixed (ablation)            |

The τ ablation is not a method: τ (local iterations between pruning steps) is a run parameter (a sweep over
``train.tau``). ``hetlora`` has no pruning, so its importance criterion is unused.

Method parameters (``policy.method_params``) are declared per method (:attr:`Method.params`, with types, ranges
and defaults): ``rank`` (one-rank methods; a run sets it from ``policy.rank``), ``s_star`` (from ``s_star``),
``rounds_to_target`` (uniform, fixed-ratio: p = s*/rounds_to_target, default 10), ``ranks_by_type`` (hetlora, flora),
``n_p`` (fedmp's number of pruning increments, default 5). ``policy.params`` holds the user's options of the
method's policy (e.g. S-UCB's ``discount`` γ, ``nu`` ν, ``rho`` ρ): :meth:`Method.policy_options` says which.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from simfed.decisions.arms import ArmSpace
from simfed.decisions.methods.base import PRUNE_MODES, Method, MethodContext, TracePredictor
from simfed.decisions.methods.fedmp import FedMP
from simfed.decisions.methods.fedspine import FedSpine, FedSpineFixedRank, FedSpineFixedRatio
from simfed.decisions.methods.flora import FLoRAMethod
from simfed.decisions.methods.hetlora import HetLoRA
from simfed.decisions.methods.oracle import OracleMethod
from simfed.decisions.methods.prune_then_tune import PruneThenTune
from simfed.decisions.methods.uniform import Uniform
from simfed.decisions.policies import POLICIES
from simfed.decisions.reward import DEFAULT_WEIGHTS, RewardWeights
from simfed.errors import OptionError
from simfed.plugins import load_class

_CLASSES: list[type[Method]] = [
    FedSpine,
    HetLoRA,
    PruneThenTune,
    Uniform,
    FedMP,
    OracleMethod,
    FedSpineFixedRank,
    FedSpineFixedRatio,
    FLoRAMethod,
]

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in _CLASSES}


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name``, or a user's class named by import path ``module:Class``.

    Raises:
        OptionError: an unknown name, an import path that does not load, or a class that is not a
            :class:`Method` or declares unknown components.
    """
    cls = METHODS.get(name)
    if cls is None:
        if ":" not in name:
            raise OptionError(f"unknown method {name!r}; known: {', '.join(METHODS)} (or a module:Class of your own)")
        cls = load_class(name, Method, "method")
    check_method(cls)
    return cls


def check_method(cls: type[Method]) -> None:
    """A method's decisions-side declarations hold (its aggregator and importance criterion belong to the
    accuracy layer's registries and are checked where a run meets both layers, ``resolve_method``).

    Raises:
        OptionError: an unknown prune mode or policy.
    """
    where = f"method {cls.name or cls.__name__!r}"
    if cls.prune_mode not in PRUNE_MODES:
        raise OptionError(f"{where}: prune_mode {cls.prune_mode!r} is not one of {', '.join(PRUNE_MODES)}")
    if cls.policy_name not in POLICIES:
        raise OptionError(f"{where}: policy {cls.policy_name!r} is not registered (known: {', '.join(POLICIES)})")


def all_param_names() -> set[str]:
    """Every parameter some registered method reads (a sweep shares one ``policy.method_params`` table)."""
    return {o.name for cls in METHODS.values() for o in cls.params}


def all_policy_param_names() -> set[str]:
    """Every policy option some registered method forwards (a sweep shares one ``policy.params`` table)."""
    return {name for cls in METHODS.values() for name in cls.policy_options().names}


def split_params(cls: type[Method], params: Mapping[str, Any], policy_params: Mapping[str, Any] | None = None,
                 prefix: str = "") -> tuple[dict, dict]:
    """(the method's parameters, checked and completed with defaults; its policy's options, checked).

    Keys that only other methods read are left out: one table serves every method of a sweep. ``prefix``
    goes before every key in messages.

    Raises:
        OptionError: a key no method reads, a value of the wrong type or out of range, a required parameter
            missing (``s_star`` for ``uniform``).
    """
    own = cls.param_options()
    mine, others = {}, all_param_names() | set(own.names)
    for key, value in params.items():
        if key in own:
            mine[key] = value
        elif key not in others:
            raise OptionError(f"{prefix}{key}: not a parameter of any method (accepted: {', '.join(sorted(others))})")
    checked = own.check(mine, prefix, allow_provided=True, fill_defaults=True)
    policy_params = dict(policy_params or {})
    table, shared = cls.policy_options(), all_policy_param_names()
    for key in policy_params:
        if key not in table and key not in shared:
            raise table.unknown_key(key, f"{prefix}policy.")
    kwargs = table.check({k: v for k, v in policy_params.items() if k in table}, f"{prefix}policy.")
    return checked, kwargs


def build_method(method: str | type[Method], arm_space: ArmSpace, device_ids: Sequence[str],
                 device_types: Mapping[str, str], seed: int, params: Mapping[str, Any] | None = None,
                 policy_params: Mapping[str, Any] | None = None, *, traces: TracePredictor | None = None,
                 reward_weights: RewardWeights = DEFAULT_WEIGHTS) -> Method:
    """A method for these devices (the server's registration data) and seed.

    ``method`` is a registered name, a ``module:Class`` path or a :class:`Method` subclass. ``params`` holds
    its parameters (:attr:`Method.params`), ``policy_params`` its policy's options; ``traces`` is given to the
    method only if it declares ``reads_traces``.

    Raises:
        OptionError: an unknown method, component, parameter or policy option, or a value out of range.
        ValueError: the method cannot be built for these devices (e.g. a device type without a HetLoRA rank).
    """
    cls = get_method(method) if isinstance(method, str) else method
    if not isinstance(method, str):
        check_method(cls)
    values, kwargs = split_params(cls, dict(params or {}), policy_params)
    ctx = MethodContext(arm_space=arm_space, device_ids=tuple(device_ids), device_types=dict(device_types),
                        seed=int(seed), params=values, policy_params=kwargs,
                        traces=traces if cls.reads_traces else None)
    return cls(ctx, reward_weights=reward_weights)


__all__ = ["METHODS", "Method", "MethodContext", "get_method", "check_method", "build_method", "split_params",
           "all_param_names", "all_policy_param_names", "PRUNE_MODES"]
