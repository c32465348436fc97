"""The accuracy layer seen from the server loop: a :class:`~simfed.experiments.loop.Learner` over the
trainer, an aggregator and the evaluation (DESIGN §1 step 4; FedSpine evaluates the global LoRA on
each device's own pruned model, arXiv 2501.02438).

Its checkpoint state is the trainer's and the aggregator's ``state_dict()``, plain data: the frozen base
model and the clients' data are rebuilt deterministically on resume, so no checkpoint holds them.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from simfed.accuracy.evaluate import weighted_mean
from simfed.accuracy.lora import lora_scale
from simfed.records import DeviceReport, Plan


class RankScale:
    """The LoRA scale rule the trainer applies (``lora_scale(rank, alpha)``), as a picklable callable."""

    def __init__(self, alpha: float) -> None:
        self.alpha = float(alpha)

    def __call__(self, rank: int) -> float:
        return lora_scale(rank, self.alpha)


class FullLearner:
    """Real training: local rounds on the trainer from the method's downlinks, aggregation, evaluation.

    ``aggregator`` is the method's aggregator, built; ``eval_devices`` are the devices whose held-out data
    the global model is scored on (all devices of the run: each with its own pruned structure, so the
    score reflects what would be deployed).
    """

    def __init__(self, trainer: Any, aggregator: Any, eval_devices: list[str]) -> None:
        self.trainer = trainer
        self.aggregator = aggregator
        self.eval_devices = sorted(eval_devices)

    def kept(self, device_id: str) -> Any:
        return self.trainer.kept(device_id)

    def train(self, plans: list[Plan], downlinks: Mapping[str, Any]) -> dict[str, DeviceReport]:
        self._reference = {p.device_id: self._weight_norm(p.device_id) for p in plans}
        return {r.device_id: r for r in self.trainer.run_round(plans, downlinks)}

    def _weight_norm(self, device_id: str) -> float:
        from simfed.accuracy.lora import adapted_linears

        with torch.no_grad():
            model = self.trainer.state(device_id).model
            return float(sum(torch.linalg.matrix_norm(lin.weight.float()) for lin in adapted_linears(model).values()))

    def reference_norm(self, device_id: str) -> float:
        """‖W‖_F summed over the adapted linears of the device's model as it was when its last round began."""
        return self._reference[device_id]

    def reject(self, device_id: str) -> None:
        """The server rejected the device's update: undo its local round (pruning, importance, data position)."""
        self.trainer.revert(device_id)

    def aggregate(self, reports: list[DeviceReport]) -> None:
        self.aggregator.aggregate([r.update for r in reports])

    def evaluate(self) -> dict[str, float]:
        delta_for = self.aggregator.delta_for if self.aggregator.rounds > 0 else None
        mean = weighted_mean(self.trainer.evaluate(self.eval_devices, delta_for))
        return {"accuracy": mean.accuracy, "loss": mean.loss}

    def oneshot_prune(self, device_ids: list[str], s_star: float, criterion: str) -> None:
        self.trainer.oneshot_prune(device_ids, s_star, criterion=criterion)

    def finalize(self, device_id: str, s_star: float) -> None:
        self.trainer.finalize(device_id, s_star)

    def state_dict(self) -> dict[str, Any]:
        """``{"trainer": Trainer.state_dict(), "aggregator": Aggregator.state_dict()}``: plain data."""
        return {"trainer": self.trainer.state_dict(), "aggregator": self.aggregator.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take back a :meth:`state_dict` (on a learner built from the same configuration)."""
        self.trainer.load_state_dict(state["trainer"])
        self.aggregator.load_state_dict(state["aggregator"])
