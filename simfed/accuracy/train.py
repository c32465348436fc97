"""Local prune-and-tune on each device: the accuracy layer's side of a FedSpine round.

For each device the trainer holds what stays on the device between rounds: its frozen base model,
physically pruned to its current structure (:class:`~simfed.accuracy.adapters.Kept`), its
importance EMA, its data and its own seeded random generator. A round (:meth:`Trainer.run_round`)
follows FedSpine's iterative prune → tune (arXiv 2501.02438, notes §3.2): load the server's factors
(already in the device's rank and structure), run the plan's :func:`~simfed.structure.round_schedule`
— τ AdamW iterations on the LoRA parameters, tracking importance, then a pruning step to the next
nominal sparsity — and report losses, sparsity, update norm and the update itself.

The trainer knows nothing about time: it is pure computation, deterministic per device (each
device draws batches from its own generator seeded by the run seed and the device id), so devices
can be trained in any order.

Decisions recorded here:

- Importance is tracked only during stages that end with a pruning step (the EMA then spans the τ
  iterations before each pruning step, as in LoRAPrune); a round that prunes nothing skips it. The
  EMA persists across rounds and is sliced with the model.
- AdamW moments survive a pruning step (sliced with the factors); a new optimiser is made per round,
  since the server replaces the factors each round.
- ``taylor``/``magnitude`` as iterative criteria score one-shot at each pruning step on
  ``calib_batches`` local batches; ``lora-grad`` without an EMA (e.g. :meth:`Trainer.finalize` of a
  device that never pruned) falls back to ``taylor`` on local data.
- Devices and precision (``TrainConfig.device`` / ``dtype``, :mod:`simfed.accuracy.device`): the base
  model is moved (and, under mixed precision, stored in bf16/fp16) once; a device's model shares the
  base's tensors until it prunes them (:meth:`~simfed.accuracy.model.Model.share_copy`), so N
  devices of a 135M-parameter model do not hold N copies of it. Batches are drawn on the CPU from the
  device's own generator and copied to the accelerator, so the data order never depends on the
  hardware. LoRA factors, AdamW state, losses and importance stay float32.
- LoRA sits on ``TrainConfig.lora_modules`` of every layer (default all seven); ``lora-grad``
  importance then sums only over adapted linears (at least one attention and one MLP linear).
"""

from __future__ import annotations

import hashlib
import math
import time
import weakref
from copy import deepcopy
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from simfed.accuracy.adapters import MODULES, DeviceUpdate, Kept, LoRAFactors
from simfed.accuracy.data import ClientData, random_windows
from simfed.accuracy.device import (
    Precision,
    cast_frozen,
    check_device_name,
    check_dtype_name,
    deterministic,
    resolve_precision,
)
from simfed.accuracy.evaluate import Delta, EvalResult, evaluate_with_delta
from simfed.accuracy.lora import (
    DEFAULT_ALPHA,
    adapted_linears,
    check_modules,
    load_factors,
    read_factors,
    remove_adapters,
    truncate_rank,
    update_norm,
)
from simfed.accuracy.model import Model
from simfed.accuracy.prune import (
    NEEDS_LORA_GRAD,
    NEEDS_WEIGHT_GRAD,
    ImportanceEMA,
    LayerScores,
    criterion,
    prune_model_to_kept,
    prune_step,
)
from simfed.records import DeviceReport, Plan
from simfed.structure import sparsity_of, stage_targets, structure_at, round_schedule


@dataclass(frozen=True)
class TrainConfig:
    """Local-training settings shared by all devices."""

    batch_size: int = 8  # sequences per local iteration
    seq_len: int = 80  # characters per sequence (LEAF's Shakespeare setting)
    lr: float = 2e-3  # AdamW learning rate on the LoRA factors (best of 5e-4..1e-2 with 8 roles averaged: docs/accuracy.md)
    weight_decay: float = 0.0
    criterion: str = "lora-grad"  # importance for the iterative pruning steps (see prune.CRITERIA)
    ema_beta: float = 0.9  # LoRAPrune's importance smoothing
    loss_window: int = 5  # iterations averaged for loss_before / loss_after
    alpha: float = DEFAULT_ALPHA  # LoRA scale = alpha / sqrt(r)
    calib_batches: int = 4  # local batches for one-shot scoring (taylor, magnitude, fallbacks)
    seed: int = 0
    device: str = "cpu"  # auto | cpu | cuda | cuda:N | mps (simfed.accuracy.device.resolve_device)
    dtype: str = "float32"  # float32 | bfloat16 | float16 (mixed precision; float16 with a loss scaler)
    lora_modules: tuple[str, ...] = MODULES  # the linears of every layer that carry LoRA
    workers: int = 1  # > 1: a round's devices trained in this many CPU processes (simfed.accuracy.parallel)
    # HetLoRA's rank self-pruning (Cho et al., arXiv 2401.06432): the local loss adds
    # self_prune_weight * sum over adapted linears of ||B[:, t:]||_F * ||A[t:, :]||_F, t = floor(self_prune_decay * r),
    # and a device whose tail norm fell below its previous round's reports rank t (off: weight 0 or decay 1)
    self_prune_decay: float = 1.0
    self_prune_weight: float = 0.0

    def __post_init__(self) -> None:
        for name in ("batch_size", "seq_len", "loss_window", "calib_batches", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if not 0.0 < self.self_prune_decay <= 1.0:
            raise ValueError(f"TrainConfig.self_prune_decay must be in (0, 1], got {self.self_prune_decay}")
        if not self.self_prune_weight >= 0.0:
            raise ValueError(f"TrainConfig.self_prune_weight must be >= 0, got {self.self_prune_weight}")
        criterion(self.criterion)  # validates the name
        check_device_name(self.device)
        check_dtype_name(self.dtype)
        object.__setattr__(self, "lora_modules", check_modules(tuple(self.lora_modules)))


@dataclass
class DeviceState:
    """What persists on one device between rounds."""

    device_id: str
    model: Model  # frozen base, physically pruned to ``kept``
    kept: Kept
    ema: ImportanceEMA
    data: ClientData
    generator: torch.Generator
    steps: int = 0
    tail_norm: float = math.inf  # HetLoRA self-pruning: the LoRA tail norm at the end of the device's last round (inf: none yet)

    def snapshot(self) -> tuple:
        """What a local round changes besides the model's weights, copied: ``(kept, ema, generator state, steps,
        tail_norm)`` (the model is the base index-selected to ``kept``)."""
        return self.kept.copy(), deepcopy(self.ema), self.generator.get_state(), self.steps, self.tail_norm

    def restore(self, snapshot: tuple) -> None:
        """Take back a :meth:`snapshot`'s values (the caller re-prunes the model when ``kept`` differs)."""
        self.kept, self.ema, gen_state, self.steps, self.tail_norm = snapshot
        self.generator.set_state(gen_state)


def device_seed(seed: int, device_id: str) -> int:
    """A stable 63-bit seed per (run seed, device) — independent of Python's hash randomisation."""
    digest = hashlib.sha256(f"{seed}:{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class Trainer:
    """Owns every device's local state and runs their local prune-and-tune rounds.

    ``base`` is frozen and, when ``config.device`` is an accelerator or ``config.dtype`` is not
    float32, moved and cast *in place* (the trainer keeps the same object). Raises
    :class:`~simfed.accuracy.device.DeviceUnavailable` when the device or dtype is not available here.
    """

    def __init__(self, base: Model, clients: Mapping[str, ClientData], config: TrainConfig = TrainConfig()) -> None:
        self.precision: Precision = resolve_precision(config.device, config.dtype)
        self.device = self.precision.device
        self.modules = config.lora_modules
        base.freeze_base()
        self.base = cast_frozen(base, self.precision)
        self.shape = base.config.shape()
        self.clients = clients
        self.config = config
        self._states: dict[str, DeviceState] = {}
        self._before: dict[str, tuple] = {}  # device -> its state before its last local round (see revert)
        self.train_wall_s = 0.0  # host seconds spent in local training (for benchmarks, not simulated time)
        self.train_steps = 0
        self._workers: Any = None  # the WorkerPool of config.workers > 1, started by the first round
        if config.workers > 1 and self.device.type != "cpu":
            raise ValueError(f"TrainConfig.workers={config.workers}: worker processes are for the CPU; on {self.device} "
                             "train in one process (workers = 1)")

    # ----------------------------------------------------------------- device state
    def state(self, device_id: str) -> DeviceState:
        st = self._states.get(device_id)
        if st is None:
            if device_id not in self.clients:
                raise KeyError(f"unknown device {device_id!r}: no client data with that id")
            data = self.clients[device_id]
            if data.n_samples(self.config.seq_len) < 1:
                raise ValueError(f"device {device_id!r} has {len(data.train)} training tokens, fewer than seq_len+1")
            model = self.base.share_copy()
            gen = torch.Generator().manual_seed(device_seed(self.config.seed, device_id))
            st = DeviceState(device_id, model, Kept.full(self.shape), ImportanceEMA(self.config.ema_beta), data, gen)
            self._states[device_id] = st
        return st

    def kept(self, device_id: str) -> Kept:
        return self.state(device_id).kept.copy()

    def sparsity(self, device_id: str) -> float:
        return sparsity_of(self.shape, self.state(device_id).kept.structure())

    def n_samples(self, device_id: str) -> int:
        return self.state(device_id).data.n_samples(self.config.seq_len)

    # ----------------------------------------------------------------- a round
    def run_round(self, plans: Iterable[Plan], factors: Mapping[str, LoRAFactors]) -> list[DeviceReport]:
        """Local prune-and-tune of every planned device with its downloaded ``factors``."""
        plans = list(plans)
        for plan in plans:
            if plan.device_id not in factors:
                raise KeyError(f"no LoRA factors given for device {plan.device_id!r}")
        if self.config.workers > 1 and len(plans) > 1:
            return self._run_round_in_workers(plans, factors)
        return [self.train_device(plan, factors[plan.device_id]) for plan in plans]

    def _run_round_in_workers(self, plans: list[Plan], factors: Mapping[str, LoRAFactors]) -> list[DeviceReport]:
        """The same rounds in ``config.workers`` processes (:mod:`simfed.accuracy.parallel`), bit-identical."""
        t0 = time.perf_counter()
        jobs = []
        for plan in plans:
            st = self.state(plan.device_id)
            self._check_plan(st, plan, factors[plan.device_id])
            jobs.append((plan, factors[plan.device_id], st.snapshot()))
        if self._workers is None:
            from simfed.accuracy.parallel import WorkerPool

            self._workers = WorkerPool(type(self), self.base, self.clients, self.config, self.config.workers)
            weakref.finalize(self, self._workers.close)
        results = self._workers.train(jobs)
        reports = []
        for plan, (report, after) in zip(plans, results):
            st = self.state(plan.device_id)
            self._before[plan.device_id] = st.snapshot()
            if after[0].structure() != st.kept.structure():  # prune this process's copy the same way
                prune_model_to_kept(st.model, st.kept, after[0])
            st.restore(after)
            self.train_steps += plan.local_iters
            reports.append(report)
        self.train_wall_s += time.perf_counter() - t0
        return reports

    def close(self) -> None:
        """Stop the worker processes (``workers > 1``); a later round starts new ones."""
        if self._workers is not None:
            self._workers.close()
            self._workers = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_workers"] = None  # processes do not travel with a checkpoint
        return state

    def _batch(self, st: DeviceState) -> tuple[torch.Tensor, torch.Tensor]:
        """The device's next random training windows, drawn on the CPU, on the compute device."""
        x, y = random_windows(st.data.train, self.config.batch_size, self.config.seq_len, st.generator)
        if self.device.type == "cpu":
            return x, y
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def train_device(self, plan: Plan, factors: LoRAFactors) -> DeviceReport:
        """One device's local round (see the module docstring); the report's update is on the compute device.
        A downlink's ``base_delta`` (FLoRA's merged update) is in the device's frozen weights for the round only."""
        with deterministic(self.device):
            take_out = self._add_base_delta(plan.device_id, factors.base_delta)
            try:
                return self._train_device(plan, factors)
            finally:
                take_out()

    def _add_base_delta(self, device_id: str, delta: Mapping[tuple[int, str], torch.Tensor] | None) -> Callable[[], None]:
        """Add ``delta`` (``LoRAFactors.base_delta``: per linear, in the device's structure) to the device's frozen
        weights; returns the function that takes it out again.

        The weights are replaced by new tensors, so the base the devices share is never written. Taking the
        delta out leaves the device's model the base index-selected to its structure, exactly as before: the
        original tensors are put back, or, when the round pruned the device, its model is rebuilt from the base
        at its new structure (as :meth:`revert` does). Raises ``ValueError`` for a delta of another shape than
        the weight or for a linear the model lacks.
        """
        if not delta:
            return lambda: None
        st = self.state(device_id)
        linears = adapted_linears(st.model)
        kept = st.kept.copy()
        originals: dict[tuple[int, str], nn.Parameter] = {}
        delta = dict(delta.items())  # a KeptDelta cuts each device's rows and columns on access: once here
        for key, d in delta.items():  # every shape checked before any weight is replaced
            lin = linears.get(key)
            if lin is None or tuple(d.shape) != tuple(lin.weight.shape):
                want = "no such linear" if lin is None else f"its weight is {tuple(lin.weight.shape)}"
                raise ValueError(f"device {device_id!r}: base_delta for layer {key[0]} module {key[1]!r} is "
                                 f"{tuple(d.shape)}; {want}")
        with torch.no_grad():
            for key, d in delta.items():
                lin = linears[key]
                w = originals[key] = lin.weight
                lin.weight = nn.Parameter((w.float() + d.to(device=w.device, dtype=torch.float32)).to(w.dtype),
                                          requires_grad=False)

        def take_out() -> None:
            if kept.structure() == st.kept.structure() and all(
                np.array_equal(a, b) for a, b in zip(kept.groups + kept.channels, st.kept.groups + st.kept.channels)
            ):
                for key, w in originals.items():
                    linears[key].weight = w
            else:
                model = self.base.share_copy()
                prune_model_to_kept(model, Kept.full(self.shape), st.kept)
                st.model = model

        return take_out

    def _check_plan(self, st: DeviceState, plan: Plan, factors: LoRAFactors) -> None:
        expected = structure_at(self.shape, plan.sparsity_before)
        if st.kept.structure() != expected:
            raise ValueError(
                f"device {plan.device_id!r} has structure {st.kept.structure()}, but the plan's sparsity_before="
                f"{plan.sparsity_before} means {expected}"
            )
        if factors.rank != plan.arm.r:
            raise ValueError(f"device {plan.device_id!r}: factors have rank {factors.rank}, the plan says {plan.arm.r}")

    def _train_device(self, plan: Plan, factors: LoRAFactors) -> DeviceReport:
        cfg = self.config
        st = self.state(plan.device_id)
        self._check_plan(st, plan, factors)
        t0 = time.perf_counter()
        self._before[plan.device_id] = st.snapshot()
        sparsity_before = sparsity_of(self.shape, st.kept.structure())
        model = st.model
        model.train()
        params = load_factors(model, factors, self.modules)
        # fused: one kernel for all LoRA tensors instead of a loop of small per-tensor ops
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        scaler = self.precision.scaler()  # float16 only: a fresh dynamic loss scale per device-round
        stages = round_schedule(plan.sparsity_before, plan.sparsity_after, plan.local_iters, plan.tau)
        targets = iter(stage_targets(plan.sparsity_before, plan.sparsity_after, sum(s.prune_after for s in stages)))
        score_fn = criterion(cfg.criterion)
        losses = torch.empty(plan.local_iters, device=self.device)  # read once at the end: no sync per step
        tail = self_prune_tail(plan.arm.r, cfg.self_prune_decay, cfg.self_prune_weight)
        adapters = list(adapted_linears(model, self.modules).values()) if tail is not None else []
        it = 0
        for stage in stages:
            track = stage.prune_after and cfg.criterion in NEEDS_LORA_GRAD
            for _ in range(stage.iters):
                x, y = self._batch(st)
                with self.precision.autocast():
                    _, loss = model(x, y)
                objective = loss if tail is None else loss + cfg.self_prune_weight * tail_norm(adapters, tail)
                opt.zero_grad(set_to_none=True)
                if scaler is None:
                    objective.backward()
                    if track:
                        st.ema.update(score_fn(model))
                    opt.step()
                else:  # float16: scaled backward, unscaled gradients for the importance, skipped step on overflow
                    scaler.scale(objective).backward()
                    scaler.unscale_(opt)
                    if track and _finite_grads(opt):
                        st.ema.update(score_fn(model))
                    scaler.step(opt)
                    scaler.update()
                losses[it] = loss.detach()
                it += 1
            if stage.prune_after:
                target = structure_at(self.shape, next(targets))
                if target != st.kept.structure():
                    scores = self._scores_for_pruning(st)
                    st.kept = prune_step(model, st.kept, scores, target, st.ema, _optimizer_slicer(opt))
        k = min(cfg.loss_window, max(1, plan.local_iters // 2))
        losses = losses.cpu()
        rank_after = plan.arm.r
        if tail is not None:  # HetLoRA: the rank shrinks to the tail's start when the tail norm fell
            with torch.no_grad():
                norm = float(tail_norm(adapters, tail))
            if norm < st.tail_norm < math.inf:  # the first round has no earlier norm to compare with
                rank_after = tail
            st.tail_norm = norm
        trained = read_factors(model)
        if rank_after < trained.rank:
            trained = truncate_rank(trained, rank_after, cfg.alpha)
        remove_adapters(model)
        st.steps += plan.local_iters
        self.train_steps += plan.local_iters
        self.train_wall_s += time.perf_counter() - t0
        n = st.data.n_samples(cfg.seq_len)
        return DeviceReport(
            round=plan.round,
            device_id=plan.device_id,
            arm=plan.arm,
            sparsity_before=sparsity_before,
            sparsity_after=sparsity_of(self.shape, st.kept.structure()),
            loss_before=float(losses[:k].mean()),
            loss_after=float(losses[-k:].mean()),
            update_norm=update_norm(trained),
            n_samples=n,
            rank_after=rank_after,
            update=DeviceUpdate(factors=trained, kept=st.kept.copy(), n_samples=n),
        )

    def revert(self, device_id: str) -> None:
        """Put a device back as it was before its last local round (the server rejected that round's update:
        its pruning, importance EMA and data position are undone, as if it had not trained)."""
        if device_id not in self._before:
            raise KeyError(f"device {device_id!r} has not trained: nothing to revert")
        before = self._before.pop(device_id)
        kept = before[0]
        st = self.state(device_id)
        if kept.structure() != st.kept.structure() or any(
            not np.array_equal(a, b) for a, b in zip(kept.groups + kept.channels, st.kept.groups + st.kept.channels)
        ):
            model = self.base.share_copy()
            prune_model_to_kept(model, Kept.full(self.shape), kept)
            st.model = model
        st.restore(before)

    # ----------------------------------------------------------------- checkpoint state
    def state_dict(self) -> dict[str, Any]:
        """What local training has changed, as plain data (for a checkpoint between rounds).

        ``{"devices": {device_id: {"kept": {"groups": [int arrays per layer], "channels": [...]}, "ema": {"beta",
        "updates", "scores": None or [(group scores, channel scores) float32 CPU tensors per layer]}, "generator":
        uint8 tensor (torch.Generator state), "steps": int, "tail_norm": float}}, "train_steps": int,
        "train_wall_s": float}`` for every device that has state. The frozen base model and the clients' data
        are not in it: they are rebuilt deterministically, and a device's model between rounds is the base
        index-selected to its kept structure (its adapters are detached after every round).
        """
        devices = {}
        for device_id, st in self._states.items():
            scores = st.ema.scores
            devices[device_id] = {
                "kept": {"groups": [np.array(g) for g in st.kept.groups],
                         "channels": [np.array(c) for c in st.kept.channels]},
                "ema": {"beta": float(st.ema.beta), "updates": int(st.ema.updates),
                        "scores": None if scores is None else [(g.detach().cpu().clone(), c.detach().cpu().clone())
                                                               for g, c in scores]},
                "generator": st.generator.get_state(),
                "steps": int(st.steps),
                "tail_norm": float(st.tail_norm),
            }
        return {"devices": devices, "train_steps": int(self.train_steps), "train_wall_s": float(self.train_wall_s)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take back a :meth:`state_dict` (on a trainer built with the same base, clients and config): each device's
        model is rebuilt as the base index-selected to its kept structure. Raises ``KeyError`` for a device
        without client data and ``ValueError`` for a structure the model cannot have."""
        for device_id, saved in state["devices"].items():
            st = self.state(device_id)
            kept = Kept([np.array(g) for g in saved["kept"]["groups"]], [np.array(c) for c in saved["kept"]["channels"]])
            if len(kept.groups) != self.shape.n_layers or len(kept.channels) != self.shape.n_layers:
                raise ValueError(f"Trainer.load_state_dict: device {device_id!r} has a structure of {len(kept.groups)} "
                                 f"layers, the model has {self.shape.n_layers}")
            if kept.structure() != st.kept.structure() or any(
                not np.array_equal(a, b) for a, b in zip(kept.groups + kept.channels, st.kept.groups + st.kept.channels)
            ):
                model = self.base.share_copy()
                prune_model_to_kept(model, Kept.full(self.shape), kept)
                st.model = model
            ema = ImportanceEMA(saved["ema"]["beta"])
            ema.updates = int(saved["ema"]["updates"])
            scores = saved["ema"]["scores"]
            if scores is not None:
                ema.scores = [(g.to(self.device, copy=True), c.to(self.device, copy=True)) for g, c in scores]
            st.kept, st.ema, st.steps, st.tail_norm = kept, ema, int(saved["steps"]), float(saved["tail_norm"])
            st.generator.set_state(saved["generator"])
        self.train_steps = int(state["train_steps"])
        self.train_wall_s = float(state["train_wall_s"])
        self._before.clear()

    def _scores_for_pruning(self, st: DeviceState) -> list[LayerScores]:
        if self.config.criterion in NEEDS_LORA_GRAD and st.ema.scores is not None:
            return st.ema.scores
        name = self.config.criterion if self.config.criterion not in NEEDS_LORA_GRAD else "taylor"
        return self.oneshot_scores(st.device_id, name)

    # ----------------------------------------------------------------- one-shot pruning
    def oneshot_scores(self, device_id: str, criterion_name: str = "taylor") -> list[LayerScores]:
        """Importance from ``calib_batches`` local batches (weights' gradients summed for ``taylor``)."""
        st = self.state(device_id)
        score_fn = criterion(criterion_name)
        if criterion_name in NEEDS_LORA_GRAD:
            if st.ema.scores is None:
                raise ValueError(f"device {device_id!r} has no LoRA-gradient importance yet; use 'taylor' one-shot")
            return st.ema.scores
        if criterion_name not in NEEDS_WEIGHT_GRAD:
            return score_fn(st.model)
        # (an unpruned device's weights are the base's own tensors: their .grad is cleared below)
        weights = [b.linear(m).weight for b in st.model.layers for m in MODULES]
        for w in weights:
            w.requires_grad_(True)
            w.grad = None
        try:
            with deterministic(self.device):
                for _ in range(self.config.calib_batches):
                    x, y = self._batch(st)
                    with self.precision.autocast():
                        _, loss = st.model(x, y)
                    (loss / self.config.calib_batches).backward()
                return score_fn(st.model)
        finally:
            for w in weights:
                w.grad = None
                w.requires_grad_(False)
            st.model.zero_grad(set_to_none=True)

    def prune_to(self, device_id: str, sparsity: float, criterion_name: str) -> Kept:
        """Prune one device (without adapters) to ``structure_at(sparsity)`` with a one-shot criterion."""
        st = self.state(device_id)
        target = structure_at(self.shape, sparsity)
        current = st.kept.structure()
        if target.kv_groups > current.kv_groups or target.channels > current.channels:
            raise ValueError(f"device {device_id!r} is already pruned beyond sparsity {sparsity} ({current})")
        if target != current:
            scores = self.oneshot_scores(device_id, criterion_name)
            with deterministic(self.device):
                st.kept = prune_step(st.model, st.kept, scores, target, st.ema)
        return st.kept.copy()

    def oneshot_prune(self, device_ids: Iterable[str], sparsity: float, criterion: str = "taylor") -> dict[str, Kept]:
        """Prune-then-tune baseline: each device prunes once to ``sparsity`` before federated tuning."""
        return {d: self.prune_to(d, sparsity, criterion) for d in device_ids}

    def finalize(self, device_id: str, s_star: float) -> Kept:
        """Prune a device that is still below ``s_star`` to it (before the final evaluation)."""
        st = self.state(device_id)
        target = structure_at(self.shape, s_star)
        current = st.kept.structure()
        if target.kv_groups >= current.kv_groups and target.channels >= current.channels:
            return st.kept.copy()
        name = self.config.criterion
        if name in NEEDS_LORA_GRAD and st.ema.scores is None:
            name = "taylor"
        return self.prune_to(device_id, s_star, name)

    # ----------------------------------------------------------------- evaluation
    def evaluate(
        self, device_ids: Iterable[str], delta_for: Callable[[Kept], Delta] | None = None
    ) -> dict[str, EvalResult]:
        """Held-out loss/accuracy of each device's pruned model with ``delta_for(kept)`` merged.

        ``delta_for=None`` evaluates the pruned models without any adapter (the baseline).
        """
        out = {}
        with deterministic(self.device):
            for d in device_ids:
                st = self.state(d)
                delta = delta_for(st.kept.copy()) if delta_for is not None else None
                with self.precision.autocast():
                    out[d] = evaluate_with_delta(st.model, st.data.test, self.config.seq_len, delta)
        return out


def self_prune_tail(rank: int, decay: float, weight: float) -> int | None:
    """Where HetLoRA's pruned tail of a rank-``rank`` adapter starts, ``floor(decay * rank)``; None when
    self-pruning is off (``weight`` 0, ``decay`` 1) or would leave no component (rank 1)."""
    if weight <= 0.0 or decay >= 1.0:
        return None
    start = math.floor(decay * rank)
    return start if 1 <= start < rank else None


def tail_norm(linears: Iterable[nn.Module], start: int) -> torch.Tensor:
    """HetLoRA's self-pruning regulariser: Σ over adapted linears of ``‖B[:, start:]‖_F · ‖A[start:, :]‖_F``
    (Cho et al., arXiv 2401.06432, the norm of the components a rank cut at ``start`` would drop)."""
    return sum(torch.linalg.matrix_norm(lin.lora_B[:, start:]) * torch.linalg.matrix_norm(lin.lora_A[start:, :])
               for lin in linears)


def _finite_grads(opt: torch.optim.Optimizer) -> bool:
    """Every gradient of the optimiser's (current) parameters finite: when a float16 loss scale overflowed,
    GradScaler skips the step, and the importance EMA skips it too."""
    return all(p.grad is None or bool(torch.isfinite(p.grad).all()) for g in opt.param_groups for p in g["params"])


def _optimizer_slicer(opt: torch.optim.Optimizer) -> Callable[[nn.Parameter, nn.Parameter, int, torch.Tensor], None]:
    """A pruning hook that moves a LoRA parameter's AdamW moments to its sliced replacement."""

    def hook(old: nn.Parameter, new: nn.Parameter, dim: int, index: torch.Tensor) -> None:
        state = opt.state.pop(old, None)
        if state is not None:
            opt.state[new] = {
                k: (v.index_select(dim, index.to(v.device)) if torch.is_tensor(v) and v.shape == old.shape else v)
                for k, v in state.items()
            }
        for group in opt.param_groups:
            group["params"] = [new if p is old else p for p in group["params"]]

    return hook
