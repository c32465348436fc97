"""The accuracy layer seen from the server loop: a :class:`~simfed.experiments.loop.Learner` over the
trainer, an aggregator and the evaluation (DESIGN §1 step 4; FedSpine evaluates the global LoRA on
each device's own pruned model, arXiv 2501.02438).

It also gives the checkpoint a compact, picklable form of the trainer: the frozen base model and
the clients' data are rebuilt deterministically on resume, so they are referenced, not copied,
into every round's checkpoint (:func:`dumps_state` / :func:`loads_state`).
"""

from __future__ import annotations

import copyreg
import io
import pickle
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


# ------------------------------------------------------------------------------------ checkpoints


def _rebuild_generator(state: torch.Tensor) -> torch.Generator:
    g = torch.Generator()
    g.set_state(state)
    return g


def _reduce_generator(g: torch.Generator):
    return _rebuild_generator, (g.get_state(),)


def _rebuild_device_state(base: Any, device_id: str, kept: Any, ema: Any, data: Any, generator: Any, steps: int) -> Any:
    """A device's state with its model rebuilt as the frozen base index-selected to ``kept``.

    Exact: between rounds a device model is the base with whole groups and channels removed (its
    LoRA adapters are detached after every round), so storing the kept indices is enough.
    """
    from copy import deepcopy

    from simfed.accuracy.adapters import Kept
    from simfed.accuracy.prune import prune_model_to_kept
    from simfed.accuracy.train import DeviceState

    model = deepcopy(base)
    model.freeze_base()
    prune_model_to_kept(model, Kept.full(base.config.shape()), kept)
    return DeviceState(device_id, model, kept, ema, data, generator, steps)


class _Pickler(pickle.Pickler):
    """Pickles torch generators by state, device models as their kept indices, and refers to the
    shared read-only objects (base model, client data) by name."""

    def __init__(self, fh, shared: dict[str, Any]):
        super().__init__(fh, protocol=pickle.HIGHEST_PROTOCOL)
        self.dispatch_table = copyreg.dispatch_table.copy()
        self.dispatch_table[torch.Generator] = _reduce_generator
        self._shared = {id(obj): name for name, obj in shared.items()}
        self._base = shared.get("base")

    def persistent_id(self, obj: Any) -> str | None:
        return self._shared.get(id(obj))

    def reducer_override(self, obj: Any) -> Any:
        from simfed.accuracy.train import DeviceState

        if self._base is not None and type(obj) is DeviceState and not _has_adapters(obj.model):
            return _rebuild_device_state, (self._base, obj.device_id, obj.kept, obj.ema, obj.data, obj.generator, obj.steps)
        return NotImplemented


def _has_adapters(model: Any) -> bool:
    return any("lora_" in name for name, _ in model.named_parameters())


class _Unpickler(pickle.Unpickler):
    def __init__(self, fh, shared: dict[str, Any]):
        super().__init__(fh)
        self._shared = shared

    def persistent_load(self, pid: str) -> Any:
        try:
            return self._shared[pid]
        except KeyError:
            raise pickle.UnpicklingError(f"checkpoint refers to {pid!r}, which this run did not rebuild") from None


def dumps_state(state: Any, shared: dict[str, Any]) -> bytes:
    """Pickle ``state``; objects in ``shared`` (base model, client data) are stored as references."""
    buf = io.BytesIO()
    _Pickler(buf, shared).dump(state)
    return buf.getvalue()


def loads_state(data: bytes, shared: dict[str, Any]) -> Any:
    return _Unpickler(io.BytesIO(data), shared).load()
