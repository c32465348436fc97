"""The policy interface the server loop calls, and the per-device bandit scaffolding behind it.

A :class:`Policy` has two verbs (the shape of Flower's paired ``configure_fit``/``aggregate_fit``,
with the round passed explicitly):

* ``select(round, device_ids) -> {device_id: Arm}``: the arms for this round's participants;
* ``update(round, observations, rewards)``: what the server observed about each of them and the
  reward it computed (:mod:`simfed.decisions.reward`). A failed device (OOM, offline, late) has an
  observation with a non-OK outcome and reward 0; a selected device with no observation is simply
  never credited (its pending choice is dropped at its next selection).

and their array forms for large populations (every policy has them; :attr:`Policy.vectorised` says
whether they run without a Python loop over devices):

* ``register(device_ids) -> positions``: the devices' rows in the policy's device table (new ids are
  appended in the order given; register the population once, in its order, and position i is its i-th device);
* ``select_array(round, devices) -> (p, r)``: float64 and int64 arrays in the order of ``devices``
  (device ids, or int positions from ``register``);
* ``update_array(round, devices, columns, rewards)``: ``columns`` maps :data:`OBSERVATION_COLUMNS`
  names to arrays aligned with ``devices`` (``ok`` is required), ``rewards`` is a float array in which
  NaN means "no reward" (allowed for a failed device only, which then counts 0).

A policy sees nothing else: no traces, no clock, no training internals. The oracle baseline is the
one labelled exception (:mod:`.oracle`).

Most policies are "one bandit per device" (FedMP, FedSpine): :class:`PerDevicePolicy` keeps one
learner per device, created on first sight with a seed derived from the policy seed and the device
id (so a device's choices do not depend on which other devices exist or in which order they come).
A *learner* is the single-device algorithm: ``choose() -> choice`` and ``learn(choice, reward)``.
Policies that declare a ``backend`` option keep that state in one of three ways (:data:`BACKENDS`):
``"arrays"`` (default: the state of all devices as arrays, :mod:`.arrays`, random draws counter-based,
:mod:`.counter_rng`), ``"learners"`` (one learner object per device with the same counter-based draws:
the reference the arrays reproduce choice for choice) and ``"mersenne"`` (one learner per device with
its own ``random.Random``: the behaviour before the arrays existed, river's conventions for UCB1, EXP3
and Thompson sampling).

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
from typing import TYPE_CHECKING, Any, ClassVar, Hashable

import numpy as np

from simfed.decisions.arms import ArmSpace
from simfed.decisions.policies.counter_rng import CounterStream
from simfed.options import OptionTable, check_arguments, signature_table
from simfed.records import Arm, Observation, Outcome

if TYPE_CHECKING:
    from simfed.decisions.policies.arrays import DeviceArrays

#: Where a per-device policy keeps its state (see the module docstring).
BACKENDS = ("arrays", "learners", "mersenne")

#: The observation columns ``update_array`` accepts: :class:`~simfed.records.Observation`'s fields besides
#: ``round``, ``device_id`` and ``arm``, plus ``ok`` (bool, required). ``outcome`` holds Outcome values or
#: their strings; missing float columns are NaN.
OBSERVATION_COLUMNS = ("ok", "outcome", "completion_s", "round_mean_completion_s", "sparsity_before",
                       "sparsity_after", "s_star", "loss_before", "loss_after", "update_norm", "rank_after")

#: What a device argument of the array interface may be: device ids, or int positions from ``register``.
Devices = Sequence[str] | np.ndarray


def derived_seed(seed: int, *labels: Hashable) -> int:
    """A 63-bit seed derived from ``seed`` and labels (stable across runs and Python versions)."""
    text = repr((int(seed),) + tuple(str(x) for x in labels)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def argmax_random_ties(values: Sequence[float], rng: Any, tol: float = 0.0) -> int:
    """The index of the largest value; ties (within ``tol`` of the largest) broken by ``rng.choice``.

    ``rng`` is the learner's own ``random.Random`` (no global state) or a counter-based stream
    (:class:`~simfed.decisions.policies.counter_rng.CounterStream`); with a single maximum it is not drawn
    from, so the learner's random stream only moves on real ties.
    """
    best = max(values)
    candidates = [i for i, v in enumerate(values) if v >= best - tol]
    return rng.choice(candidates) if len(candidates) > 1 else candidates[0]


class IndexLearner:
    """A single-device learner that plays the arm of largest index (``indices()``, one per arm), ties broken by
    its own random stream ``_rng``; a counter-based stream advances once per choice, whatever happened."""

    _rng: Any

    def indices(self) -> list[float]:
        raise NotImplementedError

    def choose(self) -> int:
        arm = argmax_random_ties(self.indices(), self._rng)
        if isinstance(self._rng, CounterStream):
            self._rng.counter += 1
        return arm


def clip01(x: float) -> float:
    return 0.0 if x < 0.0 else (1.0 if x > 1.0 else float(x))


def observation_columns(columns: Mapping[str, Any], n: int, owner: str) -> dict[str, np.ndarray]:
    """``columns`` checked against :data:`OBSERVATION_COLUMNS` (numpy arrays of length ``n``).

    Raises:
        ValueError: an unknown column name, a missing ``ok`` column, or a column whose length is not ``n``.
    """
    out: dict[str, np.ndarray] = {}
    for key, values in columns.items():
        if key not in OBSERVATION_COLUMNS:
            raise ValueError(f"{owner}.update_array: unknown observation column {key!r}; accepted: {', '.join(OBSERVATION_COLUMNS)}")
        arr = np.asarray(values, dtype=bool if key == "ok" else (object if key == "outcome" else np.float64))
        if arr.shape != (n,):
            raise ValueError(f"{owner}.update_array: column {key!r} has shape {arr.shape}, expected ({n},) like the devices")
        out[key] = arr
    if "ok" not in out:
        if "outcome" not in out:
            raise ValueError(f"{owner}.update_array: the observation columns need 'ok' (or 'outcome')")
        out["ok"] = np.array([Outcome(o) is Outcome.OK for o in out["outcome"]], dtype=bool)
    return out


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

    # --- the array interface ----------------------------------------------------------------------
    @property
    def vectorised(self) -> bool:
        """True when ``select_array``/``update_array`` run without a Python loop over devices."""
        return False

    def register(self, device_ids: Sequence[str]) -> np.ndarray:
        """The positions (int64 array) of ``device_ids`` in this policy's device table.

        Ids not seen before are appended in the order given (their learners start fresh, as on first
        sight); registering changes no choice. Positions never change afterwards.

        Raises:
            TypeError: a device id that is not a string.
        """
        if not hasattr(self, "_ids"):
            self._ids: list[str] = []
            self._rows: dict[str, int] = {}
        rows = self._rows
        pos = np.fromiter((rows.get(d, -1) for d in device_ids), dtype=np.int64, count=len(device_ids))
        missing = np.flatnonzero(pos < 0)
        if missing.size:
            new: list[str] = []
            for i in missing.tolist():
                dev = device_ids[i]
                row = rows.get(dev)
                if row is None:
                    if not isinstance(dev, str):
                        raise TypeError(f"{type(self).__name__}.register: device ids are strings, got {dev!r}")
                    row = len(self._ids)
                    rows[dev] = row
                    self._ids.append(dev)
                    new.append(dev)
                pos[i] = row
            if new:
                self._on_register(new)
        return pos

    def device_ids_at(self, positions: np.ndarray) -> list[str]:
        """The device ids at ``positions`` (from :meth:`register`)."""
        ids = getattr(self, "_ids", [])
        return [ids[i] for i in np.asarray(positions, dtype=np.int64).tolist()]

    def _on_register(self, new_ids: list[str]) -> None:
        """Hook: ``new_ids`` were just appended to the device table (vectorised policies add rows)."""

    def _positions(self, devices: Devices, round: int, *, register: bool) -> np.ndarray:
        """Positions of ``devices`` (ids or int positions). Unknown ids are registered when ``register``,
        else an error names the first (an observation for a device that was never selected)."""
        owner = type(self).__name__
        if isinstance(devices, np.ndarray) and devices.dtype.kind in "iu":
            pos = devices.astype(np.int64, copy=False)
        elif len(devices) and not isinstance(devices[0], str):
            pos = np.asarray(devices, dtype=np.int64)
        elif register:
            return self.register(devices)
        else:
            rows = getattr(self, "_rows", {})
            pos = np.fromiter((rows.get(d, -1) for d in devices), dtype=np.int64, count=len(devices))
            bad = np.flatnonzero(pos < 0)
            if bad.size:
                raise ValueError(f"{owner}.update: observation for device {devices[bad[0]]!r} in round {round}, "
                                 "but no arm was selected for it in that round")
            return pos
        n = len(getattr(self, "_ids", []))
        if pos.ndim != 1:
            raise ValueError(f"{owner}: device positions must be a 1-d array, got shape {pos.shape}")
        bad = np.flatnonzero((pos < 0) | (pos >= n))
        if bad.size:
            raise ValueError(f"{owner}: device position {int(pos[bad[0]])} is not registered (the policy knows {n} "
                             "devices; call register(device_ids) first)")
        return pos

    def _check_unique(self, pos: np.ndarray, round: int, verb: str) -> None:
        if pos.size and np.bincount(pos).max() > 1:
            counts = np.bincount(pos)
            dev = self._ids[int(np.flatnonzero(counts > 1)[0])]
            raise ValueError(f"{type(self).__name__}.{verb}: device {dev!r} appears twice in round {round}")

    def _update_inputs(self, round: int, devices: Devices, columns: Mapping[str, Any],
                       rewards: Any) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
        """``update_array``'s arguments checked: the devices' positions, the observation columns, the rewards."""
        owner = type(self).__name__
        pos = self._positions(devices, round, register=False)
        cols = observation_columns(columns, len(pos), owner)
        values = np.asarray(rewards, dtype=np.float64)
        if values.shape != pos.shape:
            raise ValueError(f"{owner}.update_array: rewards have shape {values.shape}, expected {pos.shape} like the devices")
        return pos, cols, values

    def select_array(self, round: int, devices: Devices) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`select` for arrays: ``(p, r)`` as float64 and int64 arrays in the order of ``devices``
        (device ids, or int positions from :meth:`register`; new ids are registered).

        This default calls :meth:`select` (a Python loop); vectorised policies override it.

        Raises:
            ValueError: a position that is not registered, or a device given twice.
        """
        pos = self._positions(devices, round, register=True)
        self._check_unique(pos, round, "select")
        ids = self.device_ids_at(pos)
        arms = self.select(round, ids)
        self._array_arms = (round, arms)
        p = np.fromiter((arms[d].p for d in ids), dtype=np.float64, count=len(ids))
        r = np.fromiter((arms[d].r for d in ids), dtype=np.int64, count=len(ids))
        return p, r

    def update_array(self, round: int, devices: Devices, columns: Mapping[str, Any], rewards: Any) -> None:
        """:meth:`update` for arrays: the observations of ``devices`` as ``columns`` (see
        :data:`OBSERVATION_COLUMNS`; ``ok`` is required) and their ``rewards`` (float array; NaN: no reward,
        allowed only for a device that is not ok, which then counts 0).

        This default builds the records and calls :meth:`update` (a Python loop; it takes the arms from the
        round's :meth:`select_array`); vectorised policies override it.

        Raises:
            ValueError: as :meth:`update`; a column that is not an observation column or not aligned with
                ``devices``; a device with no arm from ``select_array`` in that round.
        """
        owner = type(self).__name__
        pos, cols, values = self._update_inputs(round, devices, columns, rewards)
        ids = self.device_ids_at(pos)
        sel_round, arms = getattr(self, "_array_arms", (None, {}))
        observations, reward_of = [], {}
        nan = math.nan
        for k, dev in enumerate(ids):
            arm = arms.get(dev) if sel_round == round else None
            if arm is None:
                raise ValueError(f"{owner}.update: observation for device {dev!r} in round {round}, "
                                 "but no arm was selected for it in that round (by select_array)")
            ok = bool(cols["ok"][k])
            outcome = Outcome(cols["outcome"][k]) if "outcome" in cols else (Outcome.OK if ok else Outcome.FAILED)

            def col(name: str) -> float:
                return float(cols[name][k]) if name in cols else nan

            observations.append(Observation(
                round=round, device_id=dev, arm=arm, outcome=outcome, completion_s=col("completion_s"),
                round_mean_completion_s=col("round_mean_completion_s"), sparsity_before=col("sparsity_before"),
                sparsity_after=col("sparsity_after"), s_star=col("s_star"), loss_before=col("loss_before"),
                loss_after=col("loss_after"), update_norm=col("update_norm"), rank_after=col("rank_after")))
            if not math.isnan(values[k]):
                reward_of[dev] = float(values[k])
        self.update(round, observations, reward_of)

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

        A policy that keeps derived or shared objects privately overrides this (see the oracle). The device
        table of :meth:`register` is stored as its id list (strings need no deep copy; the index is rebuilt)."""
        learned = {k: v for k, v in vars(self).items()
                   if k.startswith("_") and not k.startswith("__") and k not in ("_ids", "_rows")}
        state = copy.deepcopy(learned)
        if hasattr(self, "_ids"):
            state["_ids"] = list(self._ids)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (on a policy built with the same arguments)."""
        state = dict(state)
        ids = state.pop("_ids", None)
        for k, v in copy.deepcopy(state).items():
            if not k.startswith("_"):
                raise ValueError(f"{type(self).__name__}.load_state_dict: {k!r} is not learned state")
            setattr(self, k, v)
        if ids is not None:
            self._ids = list(ids)
            self._rows = {d: i for i, d in enumerate(self._ids)}

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
    """One independent learner per device. Subclasses say how to make a learner and read its choice.

    ``backend`` (see the module docstring): a subclass that declares the option implements
    :meth:`_new_arrays` (``"arrays"``) and passes ``rng="counter"`` or ``"mersenne"`` to its learners
    (:attr:`_learner_rng`); one that does not keeps ``"mersenne"`` learners.
    """

    def __init__(self, *, arm_space: ArmSpace | None = None, seed: int = 0, backend: str = "mersenne") -> None:
        super().__init__(arm_space=arm_space, seed=seed)
        if backend not in BACKENDS:
            raise ValueError(f"{type(self).__name__}: backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        self._learners: dict[str, Any] = {}
        self._pending: dict[str, tuple[int, Any, Arm]] = {}
        self._arrays: DeviceArrays | None = None  # built on first use: subclass attributes are set after this

    @abc.abstractmethod
    def _new_learner(self, seed: int) -> Any:
        """A fresh single-device learner seeded with ``seed``."""

    @abc.abstractmethod
    def _arm_of(self, choice: Any) -> Arm:
        """The playable arm a learner's choice stands for."""

    def _new_arrays(self) -> "DeviceArrays":
        """The empty vectorised state (backend ``"arrays"``); subclasses offering that backend override it."""
        raise NotImplementedError(f"{type(self).__name__} has no array backend")

    @property
    def _learner_rng(self) -> str:
        """The random draws of this policy's learners: ``"mersenne"`` or ``"counter"``."""
        return "mersenne" if self.backend == "mersenne" else "counter"

    @property
    def vectorised(self) -> bool:
        return self.backend == "arrays"

    def _device_key(self, device_id: str) -> int:
        return derived_seed(self.seed, type(self).__name__, device_id)

    def _state_arrays(self) -> "DeviceArrays":
        if self._arrays is None:
            self._arrays = self._new_arrays()
            ids = getattr(self, "_ids", [])
            if ids:
                self._arrays.add_rows([self._device_key(d) for d in ids])
        return self._arrays

    def _on_register(self, new_ids: list[str]) -> None:
        if self.backend != "arrays":
            return
        if self._arrays is None:
            self._state_arrays()  # rows for every registered device, the new ones included
        else:
            self._arrays.add_rows([self._device_key(d) for d in new_ids])

    def learner(self, device_id: str) -> Any:
        """The device's learner (created on first use; backends ``"learners"`` and ``"mersenne"``)."""
        lrn = self._learners.get(device_id)
        if lrn is None:
            lrn = self._new_learner(self._device_key(device_id))
            self._learners[device_id] = lrn
        return lrn

    def select(self, round: int, device_ids: Sequence[str]) -> dict[str, Arm]:
        if len(set(device_ids)) != len(device_ids):
            raise ValueError(f"{type(self).__name__}.select: duplicate device ids in round {round}")
        if self.backend == "arrays":
            return self._state_arrays().select_arms(round, self.register(device_ids), list(device_ids))
        out: dict[str, Arm] = {}
        for dev in device_ids:
            choice = self.learner(dev).choose()
            arm = self._arm_of(choice)
            self._pending[dev] = (round, choice, arm)
            out[dev] = arm
        return out

    def update(self, round: int, observations: Sequence[Observation], rewards: Mapping[str, float]) -> None:
        if self.backend == "arrays":
            self._update_arrays_from_records(round, observations, rewards)
            return
        learned: list[tuple[str, float]] = []
        seen: set[str] = set()
        for obs in observations:  # every check first: a refused round changes nothing
            dev = obs.device_id
            pending = self._pending.get(dev)
            if pending is None or pending[0] != round or dev in seen:
                raise ValueError(
                    f"{type(self).__name__}.update: observation for device {dev!r} in round {round}, "
                    "but no arm was selected for it in that round"
                )
            seen.add(dev)
            if dev in rewards:
                r = float(rewards[dev])
            elif not obs.ok:
                r = 0.0  # a failure earns nothing
            else:
                raise ValueError(f"{type(self).__name__}.update: no reward for device {dev!r} in round {round}")
            if math.isnan(r):
                raise ValueError(f"{type(self).__name__}.update: reward for device {dev!r} in round {round} is NaN")
            learned.append((dev, r))
        for dev, r in learned:
            _, choice, _ = self._pending.pop(dev)
            self.learner(dev).learn(choice, clip01(r))

    def _update_arrays_from_records(self, round: int, observations: Sequence[Observation],
                                    rewards: Mapping[str, float]) -> None:
        ids = [obs.device_id for obs in observations]
        for dev in ids:
            if dev in rewards and math.isnan(float(rewards[dev])):
                raise ValueError(f"{type(self).__name__}.update: reward for device {dev!r} in round {round} is NaN")
        pos = self._positions(ids, round, register=False)
        ok = np.fromiter((obs.ok for obs in observations), dtype=bool, count=len(ids))
        values = np.fromiter((float(rewards[d]) if d in rewards else math.nan for d in ids), dtype=np.float64,
                             count=len(ids))
        self._state_arrays().update(round, pos, ok, values, self._ids)

    def select_array(self, round: int, devices: Devices) -> tuple[np.ndarray, np.ndarray]:
        if self.backend != "arrays":
            return super().select_array(round, devices)
        pos = self._positions(devices, round, register=True)
        self._check_unique(pos, round, "select")
        return self._state_arrays().select(round, pos)

    def update_array(self, round: int, devices: Devices, columns: Mapping[str, Any], rewards: Any) -> None:
        if self.backend != "arrays":
            super().update_array(round, devices, columns, rewards)
            return
        pos, cols, values = self._update_inputs(round, devices, columns, rewards)
        self._state_arrays().update(round, pos, cols["ok"], values, self._ids)

    # --- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.backend != "arrays":
            return super().state_dict()
        return {"_ids": list(getattr(self, "_ids", [])),
                "_arrays": self._arrays.state() if self._arrays is not None else None}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.backend != "arrays":
            super().load_state_dict(state)
            return
        unknown = set(state) - {"_ids", "_arrays"}
        if unknown:
            raise ValueError(f"{type(self).__name__}.load_state_dict: {sorted(unknown)[0]!r} is not learned state "
                             "of the arrays backend")
        self._ids = list(state["_ids"])
        self._rows = {d: i for i, d in enumerate(self._ids)}
        self._arrays = None
        if state["_arrays"] is not None:
            self._arrays = self._new_arrays()
            self._arrays.load(state["_arrays"])
            if self._arrays.n != len(self._ids):
                raise ValueError(f"{type(self).__name__}.load_state_dict: {self._arrays.n} rows for {len(self._ids)} devices")


class DiscretePolicy(PerDevicePolicy):
    """A per-device bandit over a finite arm list (default: the arm space's grid).

    A learner's choice is an index into ``arms``.
    """

    code_args = ("arm_space", "seed", "arms")

    def __init__(self, *, arm_space: ArmSpace | None = None, seed: int = 0, arms: Sequence[Arm] | None = None,
                 backend: str = "mersenne") -> None:
        super().__init__(arm_space=arm_space, seed=seed, backend=backend)
        self.arms = list(arms) if arms is not None else None
        self._arms: list[Arm] = list(arms) if arms is not None else self.arm_space.grid()
        if not self._arms:
            raise ValueError(f"{type(self).__name__}: empty arm list")

    @property
    def arm_list(self) -> list[Arm]:
        return list(self._arms)

    def _arm_of(self, choice: int) -> Arm:
        return self._arms[choice]
