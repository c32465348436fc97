"""Devices of a round trained in parallel worker processes on the CPU (``train.workers``).

A round's devices are independent (each has its own model, data, generator and importance EMA), so
they can be trained in separate processes. With one torch thread per process this uses N cores for N
devices at a time, where one process with N intra-op threads scales poorly on the small matmuls of
a local step (docs/accuracy.md, "Performance of local training").

How: each worker is a spawned process (not forked: the parent's OpenMP state is not fork-safe) that
receives the frozen base model, the clients' data and the training settings once, and keeps its own
:class:`~simfed.accuracy.train.Trainer`. For every device it trains, the parent sends the plan, the
downloaded factors and the device's state (:meth:`~simfed.accuracy.train.DeviceState.snapshot`: kept
structure, importance EMA, generator state, step count, self-pruning tail norm); the worker rebuilds that device's model from the base (exactly the same weights: pruning
only index-selects), runs the very same :meth:`Trainer.train_device`, and returns the report and the
new state. The parent then applies the new state to its own copy of the device (and prunes its model
the same way), so evaluation, one-shot pruning, revert and checkpoints work as in one process, and
the results are bit-identical to training the devices one at a time with one thread.

Devices go to workers round-robin in plan order (device i of the round to worker i mod N).
"""

from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from typing import Any, Mapping

import numpy as np
import torch

_TRAINER: Any = None  # the worker process's own Trainer


def _init_worker(trainer_cls: type, base: Any, clients: Mapping[str, Any], config: Any) -> None:
    global _TRAINER
    torch.set_num_threads(1)
    _TRAINER = trainer_cls(base, clients, replace(config, workers=1))


def _same_kept(a: Any, b: Any) -> bool:
    return a.structure() == b.structure() and all(
        np.array_equal(x, y) for x, y in zip(a.groups + a.channels, b.groups + b.channels)
    )


def _train_in_worker(plan: Any, factors: Any, snapshot: tuple) -> tuple:
    """One device's round from its state (``DeviceState.snapshot``); its report and its state after."""
    from simfed.accuracy.adapters import Kept
    from simfed.accuracy.prune import prune_model_to_kept

    tr = _TRAINER
    st = tr.state(plan.device_id)
    kept = snapshot[0]
    if not _same_kept(st.kept, kept):  # rebuild the device's model at its current structure from the base
        model = tr.base.share_copy()
        prune_model_to_kept(model, Kept.full(tr.shape), kept)
        st.model = model
    st.restore(snapshot)
    report = tr.train_device(plan, factors)
    tr._before.pop(plan.device_id, None)  # revert is the parent's business
    return report, st.snapshot()


class WorkerPool:
    """``n`` spawned worker processes, each with its own trainer (``trainer_cls(base, clients, config)``, the
    caller's class: this module does not import the trainer) over the same base and clients."""

    def __init__(self, trainer_cls: type, base: Any, clients: Mapping[str, Any], config: Any, n: int) -> None:
        if n < 2:
            raise ValueError(f"a worker pool needs at least 2 workers, got {n}")
        ctx = mp.get_context("spawn")
        # one single-process executor per worker: device i of a round always goes to worker i mod n
        self.executors = [
            ProcessPoolExecutor(max_workers=1, mp_context=ctx, initializer=_init_worker,
                                initargs=(trainer_cls, base, clients, config))
            for _ in range(n)
        ]

    def train(self, jobs: list[tuple]) -> list[tuple]:
        """Run ``_train_in_worker(*job)`` for every job (round-robin over the workers); results in job order."""
        futures = [self.executors[i % len(self.executors)].submit(_train_in_worker, *job) for i, job in enumerate(jobs)]
        return [f.result() for f in futures]

    def close(self) -> None:
        for ex in self.executors:
            ex.shutdown(wait=True, cancel_futures=True)
        self.executors = []


__all__ = ["WorkerPool"]
