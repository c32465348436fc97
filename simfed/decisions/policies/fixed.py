"""Fixed arms: one arm for every device, optionally a per-device override table.

This is the decision of the non-adaptive methods: ``uniform`` (the same p and rank for all),
``prune-then-tune`` (p = 0 during FL, one rank) and ``hetlora`` (ranks by device type, which the
server knows from registration, so ``per_device`` is built from types, never from traces).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from simfed.decisions.arms import ArmSpace
from simfed.decisions.policies.base import Policy
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
        self._selected: dict[str, int] = {}

    def select(self, round: int, device_ids: Sequence[str]) -> dict[str, Arm]:
        table = self.per_device or {}
        out = {dev: table.get(dev, self.arm) for dev in device_ids}
        for dev in device_ids:
            self._selected[dev] = round
        return out

    def update(self, round: int, observations: Sequence[Observation], rewards: Mapping[str, float]) -> None:
        for obs in observations:
            if self._selected.get(obs.device_id) != round:
                raise ValueError(
                    f"fixed.update: observation for device {obs.device_id!r} in round {round}, "
                    "but no arm was selected for it in that round"
                )

    @classmethod
    def _test_params(cls) -> list[dict]:
        return [{}, {"arm": Arm(0.1, 4)}, {"per_device": {"d1": Arm(0.2, 2)}}]
