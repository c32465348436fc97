"""The policy interface the server loop calls, and the per-device bandit scaffolding behind it.

A :class:`Policy` has two verbs (the shape of Flower's paired ``configure_fit``/``aggregate_fit``,
with the round passed explicitly):

* ``select(round, device_ids) -> {device_id: Arm}``: the arms for this round's participants;
* ``update(round, observations, rewards)``: what the server observed about each of them and the
  reward it computed (:mod:`simfed.decisions.reward`). A failed device (OOM, offline, late) has an
  observation with a non-OK outcome and reward 0; a selected device with no observation is simply
  never credited (its pending choice is dropped at its next selection).

A policy sees nothing else: no traces, no clock, no training internals. The oracle baseline is the
one labelled exception (:mod:`.oracle`).

Most policies are "one bandit per device" (FedMP, FedSpine): :class:`PerDevicePolicy` keeps one
learner per device, created on first sight with a seed derived from the policy seed and the device
id (so a device's choices do not depend on which other devices exist or in which order they come).
A *learner* is the single-device algorithm: ``choose() -> choice`` and ``learn(choice, reward)``.

Conventions (river's ``bandit/`` style, reference/style.md §3): constructor arguments are public
attributes with the same names, learned state is private, every policy owns its seeded RNGs and
never touches global random state, and every policy class provides ``_test_params()`` for the one
parametrised contract test. Rewards are clipped to [0, 1] before a learner sees them (simfed's
default reward is already in [0, 1]; the algorithms' confidence terms assume that range).
"""

from __future__ import annotations

import abc
import copy
import hashlib
import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Hashable

from simfed.decisions.arms import ArmSpace
from simfed.options import OptionTable, check_arguments, signature_table
from simfed.records import Arm, Observation


def derived_seed(seed: int, *labels: Hashable) -> int:
    """A 63-bit seed derived from ``seed`` and labels (stable across runs and Python versions)."""
    text = repr((int(seed),) + tuple(str(x) for x in labels)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def argmax_random_ties(values: Sequence[float], rng: Any, tol: float = 0.0) -> int:
    """The index of the largest value; ties (within ``tol`` of the largest) broken by ``rng.choice``.

    ``rng`` is the learner's own ``random.Random`` (no global state); with a single maximum it is not drawn
    from, so the learner's random stream only moves on real ties.
    """
    best = max(values)
    candidates = [i for i, v in enumerate(values) if v >= best - tol]
    return rng.choice(candidates) if len(candidates) > 1 else candidates[0]


def clip01(x: float) -> float:
    return 0.0 if x < 0.0 else (1.0 if x > 1.0 else float(x))


class Policy(abc.ABC):
    """Chooses (p, r) for every participating device each round, and learns from the rewards."""

    name: ClassVar[str] = ""
    #: True only for policies that read device traces (the oracle). Reported in run configs.
    reads_traces: ClassVar[bool] = False
    #: Constructor arguments that code passes (the run's arm space and seed, arm lists, traces):
    #: they are not options a user sets in ``policy.params``.
    code_args: ClassVar[tuple[str, ...]] = ("arm_space", "seed")

    def __init__(self, *, arm_space: ArmSpace | None = None, seed: int = 0) -> None:
        self.arm_space = arm_space if arm_space is not None else ArmSpace()
        self.seed = int(seed)

    @abc.abstractmethod
    def select(self, round: int, device_ids: Sequence[str]) -> dict[str, Arm]:
        """The arm of each device in ``device_ids`` for round ``round``."""

    @abc.abstractmethod
    def update(self, round: int, observations: Sequence[Observation], rewards: Mapping[str, float]) -> None:
        """Learn from the round's observations and rewards (``rewards[device_id]``)."""

    @classmethod
    def options(cls) -> OptionTable:
        """The user options of this policy: its constructor's keyword arguments less :attr:`code_args`,
        typed and ranged by their annotations (``Annotated[float, Range(gt=0, le=1), "γ"]``)."""
        table = cls.__dict__.get("_options_table")
        if table is None:
            table = signature_table(cls.__init__, f"policy {cls.name!r}", skip=cls.code_args)
            cls._options_table = table  # per class: a subclass builds its own
        return table

    def _check_options(self, arguments: Mapping[str, Any]) -> None:
        """Check the constructor's arguments (pass ``locals()``) against :meth:`options`.

        Raises:
            OptionError: an argument of the wrong type or out of its declared range.
        """
        check_arguments(type(self).options(), arguments, f"{self.name}: ")

    @classmethod
    def _test_params(cls) -> list[dict[str, Any]]:
        """Small constructor kwargs for the contract test (besides ``arm_space`` and ``seed``)."""
        return [{}]

    # --- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What the policy has learned (its private attributes, by the convention above: learners, pending
        choices, RNG states), as a deep copy that :meth:`load_state_dict` restores exactly.

        A policy that keeps derived or shared objects privately overrides this (see the oracle)."""
        return copy.deepcopy({k: v for k, v in vars(self).items() if k.startswith("_") and not k.startswith("__")})

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (on a policy built with the same arguments)."""
        for k, v in copy.deepcopy(dict(state)).items():
            if not k.startswith("_"):
                raise ValueError(f"{type(self).__name__}.load_state_dict: {k!r} is not learned state")
            setattr(self, k, v)

    # --- river-style introspection ----------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """The constructor arguments, read back from the public attributes of the same name."""
        sig = inspect.signature(type(self).__init__)
        return {k: getattr(self, k) for k in sig.parameters if k != "self" and hasattr(self, k)}

    def clone(self, **overrides: Any) -> "Policy":
        """A fresh, untrained policy with the same arguments (``overrides`` replace some)."""
        return type(self)(**{**self.params(), **overrides})

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items() if k != "arm_space")
        return f"{type(self).__name__}({args})"


class PerDevicePolicy(Policy):
    """One independent learner per device. Subclasses say how to make a learner and read its choice."""

    def __init__(self, *, arm_space: ArmSpace | None = None, seed: int = 0) -> None:
        super().__init__(arm_space=arm_space, seed=seed)
        self._learners: dict[str, Any] = {}
        self._pending: dict[str, tuple[int, Any, Arm]] = {}

    @abc.abstractmethod
    def _new_learner(self, seed: int) -> Any:
        """A fresh single-device learner seeded with ``seed``."""

    @abc.abstractmethod
    def _arm_of(self, choice: Any) -> Arm:
        """The playable arm a learner's choice stands for."""

    def learner(self, device_id: str) -> Any:
        """The device's learner (created on first use)."""
        lrn = self._learners.get(device_id)
        if lrn is None:
            lrn = self._new_learner(derived_seed(self.seed, type(self).__name__, device_id))
            self._learners[device_id] = lrn
        return lrn

    def select(self, round: int, device_ids: Sequence[str]) -> dict[str, Arm]:
        if len(set(device_ids)) != len(device_ids):
            raise ValueError(f"{type(self).__name__}.select: duplicate device ids in round {round}")
        out: dict[str, Arm] = {}
        for dev in device_ids:
            choice = self.learner(dev).choose()
            arm = self._arm_of(choice)
            self._pending[dev] = (round, choice, arm)
            out[dev] = arm
        return out

    def update(self, round: int, observations: Sequence[Observation], rewards: Mapping[str, float]) -> None:
        for obs in observations:
            dev = obs.device_id
            pending = self._pending.get(dev)
            if pending is None or pending[0] != round:
                raise ValueError(
                    f"{type(self).__name__}.update: observation for device {dev!r} in round {round}, "
                    "but no arm was selected for it in that round"
                )
            if dev in rewards:
                r = float(rewards[dev])
            elif not obs.ok:
                r = 0.0  # a failure earns nothing
            else:
                raise ValueError(f"{type(self).__name__}.update: no reward for device {dev!r} in round {round}")
            if math.isnan(r):
                raise ValueError(f"{type(self).__name__}.update: reward for device {dev!r} in round {round} is NaN")
            _, choice, _ = self._pending.pop(dev)
            self.learner(dev).learn(choice, clip01(r))


class DiscretePolicy(PerDevicePolicy):
    """A per-device bandit over a finite arm list (default: the arm space's grid).

    A learner's choice is an index into ``arms``.
    """

    code_args = ("arm_space", "seed", "arms")

    def __init__(self, *, arm_space: ArmSpace | None = None, seed: int = 0, arms: Sequence[Arm] | None = None) -> None:
        super().__init__(arm_space=arm_space, seed=seed)
        self.arms = list(arms) if arms is not None else None
        self._arms: list[Arm] = list(arms) if arms is not None else self.arm_space.grid()
        if not self._arms:
            raise ValueError(f"{type(self).__name__}: empty arm list")

    @property
    def arm_list(self) -> list[Arm]:
        return list(self._arms)

    def _arm_of(self, choice: int) -> Arm:
        return self._arms[choice]
