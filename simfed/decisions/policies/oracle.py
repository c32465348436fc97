"""The oracle baseline: it READS THE DEVICE TRACES (through a completion-time predictor built from
them and the cost model), which no real server can. It bounds what an online policy could achieve
and is labelled as such in every run (``reads_traces = True``).

Rule (simfed's; the paper's oracle, if any, is unknown): every device prunes at the largest increment
of the grid (p_max: the fastest way to the target sparsity s*, and a pruned model is never slower in a
later round), and the round time buys rank. Each round, for every participant i and every grid arm a of
increment p_max it predicts T_i(a) from the device's current sparsity. The round cannot end before
T* = max_i min_a T_i(a), the slowest device at its fastest such arm. Each device then plays, among those
arms with T_i(a) ≤ T*·(1 + slack), the largest rank. Completion times are thus equalised near T* at the
highest capacity the round time allows. A device whose every arm is predicted infeasible (infinite time,
e.g. out of memory) plays its fastest arm of any increment.

Why p is not left to the time rule: a pruning step costs a little time in the round that takes it (the
importance scores), so a purely myopic equaliser left the slowest device unpruned round after round: it
stayed the bottleneck, never reached s*, and set every round's T* (found in the sensitivity study,
docs/RESULTS.md).

The predictor ``predict_completion_s(device_id, arm, sparsity_before) -> seconds`` is built by the
server loop from the cost model and the traces (it binds the round's start time); the oracle tracks
each device's sparsity from the observations' ``sparsity_after``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from simfed.decisions.arms import ArmSpace
from simfed.decisions.policies.base import Policy
from simfed.options import Annotated, Range
from simfed.records import Arm, Observation

CompletionPredictor = Callable[[str, Arm, float], float]


class Oracle(Policy):
    """Trace-reading oracle: equalises predicted completion times at the best quality (see module)."""

    name = "oracle"
    reads_traces = True
    code_args = ("arm_space", "seed", "predict_completion_s", "arms")

    def __init__(self, *, arm_space: ArmSpace | None = None, seed: int = 0,
                 predict_completion_s: CompletionPredictor | None = None,
                 arms: Sequence[Arm] | None = None, slack: Annotated[float, Range(ge=0)] = 0.0) -> None:
        super().__init__(arm_space=arm_space, seed=seed)
        self._check_options(locals())
        if predict_completion_s is None or not callable(predict_completion_s):
            raise ValueError("oracle: needs a predict_completion_s(device_id, arm, sparsity) callable built from the traces")
        self.predict_completion_s = predict_completion_s
        self.arms = list(arms) if arms is not None else None
        self.slack = slack
        self._arms = list(arms) if arms is not None else self.arm_space.grid()
        self._sparsity: dict[str, float] = {}
        self._selected: dict[str, int] = {}

    def predicted_times(self, device_id: str) -> list[float]:
        s = self._sparsity.get(device_id, 0.0)
        out = []
        for arm in self._arms:
            t = float(self.predict_completion_s(device_id, arm, s))
            out.append(t if not math.isnan(t) else math.inf)
        return out

    def _all_predicted_times(self, device_ids: Sequence[str]) -> dict[str, list[float]]:
        """:meth:`predicted_times` of every device; in one call when the predictor offers ``many`` (a vectorised
        form taking ``[(device_id, arm, sparsity_before), ...]``)."""
        many = getattr(self.predict_completion_s, "many", None)
        if many is None:
            return {d: self.predicted_times(d) for d in device_ids}
        k = len(self._arms)
        flat = many([(d, arm, self._sparsity.get(d, 0.0)) for d in device_ids for arm in self._arms])
        return {d: [t if not math.isnan(t) else math.inf for t in flat[i * k:(i + 1) * k].tolist()]
                for i, d in enumerate(device_ids)}

    def select(self, round: int, device_ids: Sequence[str]) -> dict[str, Arm]:
        times = self._all_predicted_times(device_ids)
        p_max = max(a.p for a in self._arms)
        full = [k for k, a in enumerate(self._arms) if a.p == p_max]  # the arms at the largest increment
        fastest = [min(ts[k] for k in full) for ts in times.values()]
        fastest = [t for t in fastest if math.isfinite(t)]
        t_star = max(fastest) * (1.0 + self.slack) if fastest else math.inf
        out: dict[str, Arm] = {}
        for d in device_ids:
            ts = times[d]
            feasible = [self._arms[k] for k in full if ts[k] <= t_star and math.isfinite(ts[k])]
            if feasible:
                out[d] = max(feasible, key=lambda a: a.r)
            else:
                out[d] = self._arms[min(range(len(ts)), key=lambda i: (ts[i], -self._arms[i].p, self._arms[i].r))]
            self._selected[d] = round
        return out

    def update(self, round: int, observations: Sequence[Observation], rewards: Mapping[str, float]) -> None:
        for obs in observations:
            if self._selected.get(obs.device_id) != round:
                raise ValueError(
                    f"oracle.update: observation for device {obs.device_id!r} in round {round}, "
                    "but no arm was selected for it in that round"
                )
            if math.isfinite(obs.sparsity_after):
                self._sparsity[obs.device_id] = obs.sparsity_after

    @classmethod
    def _test_params(cls) -> list[dict]:
        """Four devices whose speed grows with their index (a predictor from made-up traces, for tests)."""
        speeds = {f"d{i}": 1e9 * (i + 1) for i in range(4)}

        def predict(dev: str, arm: Arm, s: float) -> float:
            return (1e10 * (1.0 - s - 0.5 * arm.p) + 1e8 * arm.r) / speeds[dev]

        return [{"predict_completion_s": predict}]
