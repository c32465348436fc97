"""Fixed arms: one arm for every device, optionally a per-device override table.

This is the decision of the non-adaptive methods: ``uniform`` (the same p and rank for all),
``prune-then-tune`` (p = 0 during FL, one rank) and ``hetlora`` (ranks by device type, which the
server knows from registration, so ``per_device`` is built from types, never from traces).

The state is two arrays over the device table (each device's arm, filled in when it is registered) and
the round each device was last selected in, so :meth:`Fixed.select_array` and :meth:`Fixed.update_array`
cost a few numpy operations whatever the population.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from simfed.decisions.arms import ArmSpace
from simfed.decisions.policies.base import Devices, Policy, observation_columns
from simfed.records import Arm, Observation


class Fixed(Policy):
    """Plays ``per_device[id]`` if given for the device, else ``arm``; learns nothing."""

    name = "fixed"
    code_args = ("arm_space", "seed", "arm", "per_device")

    def __init__(self, *, arm_space: ArmSpace | None = None, seed: int = 0, arm: Arm | None = None,
                 per_device: Mapping[str, Arm] | None = None) -> None:
        super().__init__(arm_space=arm_space, seed=seed)
        if arm is None:
            # the centre of the grid: a middle ratio and a middle rank
            ps, rs = self.arm_space.grid_ps(), self.arm_space.grid_ranks()
            arm = Arm(p=ps[len(ps) // 2], r=rs[len(rs) // 2])
        if not isinstance(arm, Arm):
            raise ValueError(f"fixed: arm must be an Arm, got {arm!r}")
        for dev, a in (per_device or {}).items():
            if not isinstance(a, Arm):
                raise ValueError(f"fixed: per_device[{dev!r}] must be an Arm, got {a!r}")
        self.arm = arm
        self.per_device = dict(per_device) if per_device is not None else None
        self._p = np.zeros(0)
        self._r = np.zeros(0, dtype=np.int64)
        self._selected = np.zeros(0, dtype=np.int64)  # the round each device was last selected in (-1: never)

    @property
    def vectorised(self) -> bool:
        return True

    def _on_register(self, new_ids: list[str]) -> None:
        table = self.per_device or {}
        arms = [table.get(d, self.arm) for d in new_ids] if table else None
        k = len(new_ids)
        self._p = np.concatenate([self._p, [a.p for a in arms] if arms else np.full(k, float(self.arm.p))])
        self._r = np.concatenate([self._r, np.array([a.r for a in arms] if arms else np.full(k, int(self.arm.r)),
                                                    dtype=np.int64)])
        self._selected = np.concatenate([self._selected, np.full(k, -1, dtype=np.int64)])

    def select(self, round: int, device_ids: Sequence[str]) -> dict[str, Arm]:
        pos = self.register(device_ids)  # first: registering replaces the arrays
        self._selected[pos] = round
        table = self.per_device or {}
        return {dev: table.get(dev, self.arm) for dev in device_ids}

    def select_array(self, round: int, devices: Devices) -> tuple[np.ndarray, np.ndarray]:
        pos = self._positions(devices, round, register=True)
        self._selected[pos] = round
        return self._p[pos], self._r[pos]

    def _check_selected(self, round: int, pos: np.ndarray) -> None:
        bad = np.flatnonzero(self._selected[pos] != round)
        if bad.size:
            raise ValueError(
                f"fixed.update: observation for device {self._ids[pos[bad[0]]]!r} in round {round}, "
                "but no arm was selected for it in that round"
            )

    def update(self, round: int, observations: Sequence[Observation], rewards: Mapping[str, float]) -> None:
        ids = [obs.device_id for obs in observations]
        rows = getattr(self, "_rows", {})
        for dev in ids:
            if dev not in rows:
                raise ValueError(f"fixed.update: observation for device {dev!r} in round {round}, "
                                 "but no arm was selected for it in that round")
        self._check_selected(round, np.array([rows[d] for d in ids], dtype=np.int64))

    def update_array(self, round: int, devices: Devices, columns: Mapping[str, Any], rewards: Any) -> None:
        pos = self._positions(devices, round, register=False)
        observation_columns(columns, len(pos), "fixed")
        if np.shape(rewards) != pos.shape:
            raise ValueError(f"fixed.update_array: rewards have shape {np.shape(rewards)}, expected {pos.shape} like the devices")
        self._check_selected(round, pos)

    @classmethod
    def _test_params(cls) -> list[dict]:
        return [{}, {"arm": Arm(0.1, 4)}, {"per_device": {"d1": Arm(0.2, 2)}}]
