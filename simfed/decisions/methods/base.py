"""The :class:`Method` a researcher subclasses: what a federated prune-and-tune method is made of.

In the spirit of Flower's ``Strategy``: one class owns everything a method decides, and the server loop
(:class:`~simfed.experiments.loop.ServerLoop`) asks it, each round, for

- the **plans** of the selected devices (:meth:`Method.plans`): its policy picks each device's arm (p, r)
  and its **pruning schedule** (``prune_mode``) turns the arm into the sparsity the device reaches;
- the **downlinks** (:meth:`Method.downlink`): the global adapter cut to each device's rank and structure,
  by its **aggregator**, which also merges the updates (full runs only);
- the **one-shot step** (:meth:`Method.oneshot`): pruning to s* before the first round with its
  **importance criterion** (``prune_mode = "oneshot"``);
- the **rewards** of the round's devices and what its policy learns from them (:meth:`Method.rewards`,
  :meth:`Method.learn`).

Components are named (``aggregator``, ``importance``, ``policy_name``) and checked against their
registries once, when the method is built (:func:`simfed.decisions.methods.build_method`); the
aggregator and the criterion are built by the accuracy layer only in full runs, so a method never
imports training code. A method that needs to see what no server observes declares it
(``reads_traces = True``: the oracle) and receives the trace predictor through its context; nothing else
special-cases it. Parameters a user may set (``policy.method_params``) are declared in ``params``
(:class:`~simfed.options.Option`); which of its policy's options a user may set (``policy.params``) by
``forwards_policy_params`` and ``policy_args``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from simfed.decisions.arms import ArmSpace
from simfed.decisions.policies import POLICIES, Policy, make_policy
from simfed.decisions.reward import DEFAULT_WEIGHTS, RewardWeights, round_reward_arrays
from simfed.errors import OptionError
from simfed.options import REQUIRED, Option, OptionTable, Range
from simfed.records import Arm, Observation, ObservationBatch, Plan, PlanBatch
from simfed.structure import next_sparsities

PRUNE_MODES = ("iterative", "oneshot", "none")

#: A method's completion-time predictor from the traces (the oracle's only: ``(device_id, arm, sparsity) -> s``).
TracePredictor = Callable[[str, Arm, float], float]

# Parameters several methods read (declared once; each method lists those it reads). ``provided`` ones are
# set by a run from another config key, never in ``policy.method_params``.
RANK = Option("rank", "int", 8, range=Range(ge=1), provided="policy.rank")
S_STAR = Option("s_star", "float", REQUIRED, range=Range(ge=0, lt=1), provided="s_star")
ROUNDS_TO_TARGET = Option("rounds_to_target", "int", 10, range=Range(ge=1))


@dataclass(frozen=True)
class MethodContext:
    """What a method may use when it is built: only what a server knows at registration.

    ``params`` are the method's parameters, checked against :attr:`Method.params` with every default filled
    in; ``policy_params`` the user's options of its policy (checked); ``traces`` the trace predictor, given
    only to a method that declares ``reads_traces``.
    """

    arm_space: ArmSpace
    device_ids: tuple[str, ...]
    device_types: Mapping[str, str]
    seed: int
    params: Mapping[str, Any] = field(default_factory=dict)
    policy_params: Mapping[str, Any] = field(default_factory=dict)
    traces: TracePredictor | None = None

    def param(self, key: str) -> Any:
        """A declared parameter (its default when not given); an undeclared key is a bug in the method."""
        if key not in self.params:
            raise KeyError(f"method parameter {key!r} is not declared by this method (add it to Method.params)")
        return self.params[key]


class Method:
    """A federated prune-and-tune method (see the module docstring). Subclass it and override what differs.

    Class attributes (checked when the method is built): ``name``, ``description``; ``prune_mode``
    (``iterative``: each round's increment p until s*; ``oneshot``: pruned to s* before round 0, p = 0
    after; ``none``: never pruned); ``importance`` (a pruning criterion of
    :mod:`simfed.accuracy.prune`); ``aggregator`` (a registered aggregator name, or an
    :class:`~simfed.accuracy.aggregators.Aggregator` subclass); ``policy_name`` (the registered policy
    :meth:`build_policy` builds by default, whose options ``policy.params`` may set when
    ``forwards_policy_params``, less ``policy_args`` that the method sets itself); ``params`` (what it reads
    from ``policy.method_params``); ``reads_traces`` (the oracle's label).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    prune_mode: ClassVar[str] = "iterative"
    importance: ClassVar[str] = "lora-grad"
    aggregator: ClassVar[Any] = "flexlora"
    policy_name: ClassVar[str] = "fixed"
    params: ClassVar[tuple[Option, ...]] = ()
    policy_args: ClassVar[tuple[str, ...]] = ()
    forwards_policy_params: ClassVar[bool] = False
    reads_traces: ClassVar[bool] = False

    def __init__(self, context: MethodContext, *, reward_weights: RewardWeights = DEFAULT_WEIGHTS) -> None:
        self.context = context
        self.reward_weights = reward_weights
        self.policy: Policy = self.build_policy(context)

    @classmethod
    def with_policy(cls, policy: Policy, *, reward_weights: RewardWeights = DEFAULT_WEIGHTS) -> "Method":
        """This method's pruning schedule and components around a ready-made policy (timing studies, tests)."""
        method = object.__new__(cls)
        method.context = None
        method.reward_weights = reward_weights
        method.policy = policy
        return method

    # ------------------------------------------------------------------ declarations
    @classmethod
    def param_options(cls) -> OptionTable:
        """The parameters this method reads (``policy.method_params``; ``rank``/``s_star`` are provided)."""
        return OptionTable(f"method {cls.name!r}", cls.params)

    @classmethod
    def policy_options(cls) -> OptionTable:
        """The options of this method's policy that a user may set (``policy.params``)."""
        owner = f"policy {cls.policy_name!r} of method {cls.name!r}"
        if not cls.forwards_policy_params:
            return OptionTable(owner, [])
        return OptionTable(owner, list(POLICIES[cls.policy_name].options().without(*cls.policy_args)))

    # ------------------------------------------------------------------ building
    def build_policy(self, ctx: MethodContext) -> Policy:
        """The method's policy (default: its registered ``policy_name`` with the user's options)."""
        return make_policy(self.policy_name, arm_space=ctx.arm_space, seed=ctx.seed, **ctx.policy_params)

    def replace_policy(self, policy: Policy) -> None:
        """Use another policy (an experiment: a user's policy inside this method's pruning and aggregation)."""
        self.policy = policy

    # ------------------------------------------------------------------ asked by the server loop
    def start_sparsity(self, s_star: float) -> float:
        """Nominal sparsity of every device before round 0 (``s_star`` after one-shot pruning)."""
        return s_star if self.prune_mode == "oneshot" else 0.0

    def schedule(self, p: np.ndarray, r: np.ndarray, sparsity_before: np.ndarray,
                 s_star: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The pruning schedule: the arms the devices play and the nominal sparsity each reaches this round.

        Arrays aligned over the round's devices: ``p`` (float64 increments), ``r`` (int64 ranks),
        ``sparsity_before`` (float64); returns ``(p, r, sparsity_after)``. Iterative: ``s + p`` capped at s*
        (:func:`~simfed.structure.next_sparsities`); one-shot and none: p = 0, the sparsity unchanged.
        """
        if self.prune_mode == "iterative":
            return p, r, next_sparsities(sparsity_before, p, s_star)
        return np.zeros_like(p), r, sparsity_before  # one-shot devices are already at s*; "none" never prunes

    def plans(self, round: int, device_ids: Sequence[str], sparsity_before: np.ndarray, *, s_star: float,
              local_iters: int, tau: int) -> PlanBatch:
        """The plans of the selected devices (``sparsity_before``: float64 aligned with ``device_ids``): the
        policy's arms (its array interface, :meth:`~simfed.decisions.policies.Policy.select_array`) through
        the pruning schedule (:meth:`schedule`)."""
        ids = device_ids if isinstance(device_ids, list) else list(device_ids)
        positions = self.policy.register(ids)
        p, r = self.policy.select_array(round, positions)
        p, r, after = self.schedule(p, r, np.asarray(sparsity_before, dtype=np.float64), s_star)
        self._selected = (round, ids, positions)
        return PlanBatch(round, ids, p, r, sparsity_before, after, local_iters, tau)

    def train_options(self) -> dict[str, Any]:
        """Settings of the devices' local training that this method asks for (fields of
        :class:`~simfed.accuracy.train.TrainConfig`, e.g. HetLoRA's rank self-pruning); none by default.
        The accuracy layer applies them in full runs."""
        return {}

    def downlink(self, aggregator: Any, plan: Plan, kept: Any) -> Any:
        """A device's downlink: the global adapter cut to its rank and kept structure (full runs)."""
        return aggregator.factors_for(plan.rank, kept)

    def oneshot(self, learner: Any, device_ids: Sequence[str], s_star: float) -> None:
        """Prune every device to s* before round 0 with the method's importance criterion (``prune_mode = oneshot``)."""
        learner.oneshot_prune(list(device_ids), s_star, self.importance)

    def rewards(self, observations: "ObservationBatch | Sequence[Observation]") -> np.ndarray:
        """Each device's reward for the round, a float64 array aligned with ``observations`` (FedSpine's,
        :mod:`simfed.decisions.reward`, by default). A method may return a ``{device_id: reward}`` mapping
        instead; a device it leaves out then earns nothing."""
        return round_reward_arrays(observations, self.reward_weights)["total"]

    def learn(self, round: int, observations: "ObservationBatch | Sequence[Observation]",
              rewards: "np.ndarray | Mapping[str, float]") -> None:
        """What the policy learns from the round (its array interface,
        :meth:`~simfed.decisions.policies.Policy.update_array`). ``rewards``: aligned with ``observations``, or a
        ``{device_id: reward}`` mapping (a device left out: NaN, "no reward")."""
        batch = ObservationBatch.of(observations, round=round)
        if isinstance(rewards, Mapping):
            rewards = np.fromiter((float(rewards.get(d, np.nan)) for d in batch.device_ids), dtype=np.float64,
                                  count=len(batch))
        selected = getattr(self, "_selected", None)
        if selected is not None and selected[0] == round and selected[1] is batch.device_ids:
            devices = selected[2]  # the positions of this round's plans, in the same order
        else:
            devices = batch.device_ids
        self.policy.update_array(round, devices, batch.columns(), rewards)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything that changes as the method runs (its policy's state), as plain data."""
        return {"policy": self.policy.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(policy={self.policy!r})"


def one_rank(ctx: MethodContext) -> int:
    """The one rank of a single-rank method (``rank``, from ``policy.rank``), inside the arm space."""
    rank = ctx.param("rank")
    if not (ctx.arm_space.r_min <= rank <= ctx.arm_space.r_max):
        raise OptionError(f"rank: {rank!r} is outside the arm space's ranks [{ctx.arm_space.r_min}, {ctx.arm_space.r_max}] "
                          "(policy.r_min, policy.r_max)")
    return int(rank)


def uniform_increment(ctx: MethodContext) -> float:
    """p = s* / rounds_to_target: every device reaches s* after the same number of rounds."""
    return ctx.param("s_star") / ctx.param("rounds_to_target")
