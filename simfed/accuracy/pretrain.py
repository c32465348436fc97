"""Pre-training of the ``tiny`` preset (DESIGN.md §2).

Federated prune-and-tune needs a *pretrained* model (FedSpine tunes LLaMA-family models), so simfed
pre-trains its tiny character model itself, by default on Milton's verse and prose, so that tuning on
the clients' Shakespeare roles closes a domain shift (as tuning a general LLM on a downstream task
does); the alternative corpus is the Shakespeare plays disjoint from the clients' (see
:mod:`simfed.accuracy.data`). Full-parameter AdamW with linear warm-up and cosine decay (nanoGPT's
recipe), gradient clipping at 1.0, seeded batches. The checkpoint is cached as
``<cache>/tiny-<hash>.pt`` where the hash covers the model config, the training settings, the seed
and the data rule, so the same settings always map to the same file and a second call loads it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from simfed.accuracy.data import PRETRAIN_CORPORA, VOCAB, cache_dir, load_pretrain_corpus, random_windows
from simfed.accuracy.evaluate import evaluate_tokens
from simfed.accuracy.model import Model, ModelConfig
from simfed.accuracy.presets import preset

CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class PretrainConfig:
    preset: str = "tiny"
    steps: int = 500  # optimiser steps
    batch_size: int = 16  # sequences per step
    seq_len: int = 128  # characters per sequence
    lr: float = 3e-3  # peak learning rate
    min_lr: float = 3e-4  # end of the cosine decay
    warmup_steps: int = 50
    weight_decay: float = 0.1
    seed: int = 0
    # A key of data.PRETRAIN_CORPORA: "milton" (default: a domain shift that federated tuning has to close)
    # or "shakespeare" (plays disjoint from the clients'; tuning gains little, docs/accuracy.md).
    corpus: str = "milton"

    def __post_init__(self) -> None:
        if self.corpus not in PRETRAIN_CORPORA:
            raise ValueError(f"pretrain corpus must be one of {', '.join(PRETRAIN_CORPORA)}, got {self.corpus!r}")
        for name in ("steps", "batch_size", "seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"pretrain {name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.min_lr <= self.lr:
            raise ValueError(f"pretrain needs 0 < min_lr <= lr, got min_lr={self.min_lr}, lr={self.lr}")

    def model_config(self) -> ModelConfig:
        return preset(self.preset)

    def digest(self) -> str:
        train = asdict(self)
        corpus = train.pop("corpus")  # named by its rule under "data" (keeps the Shakespeare digest of earlier versions)
        key = {"format": CHECKPOINT_FORMAT, "train": train, "model": asdict(self.model_config()), "data": PRETRAIN_CORPORA[corpus], "vocab": VOCAB}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def checkpoint_path(config: PretrainConfig, cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / f"{config.preset}-{config.digest()}.pt"


def lr_at(step: int, config: PretrainConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def pretrain(
    config: PretrainConfig = PretrainConfig(), cache: Path | None = None, log: Callable[[str], None] | None = None
) -> tuple[Model, dict]:
    """Train from scratch and save the checkpoint atomically; returns the model and its info."""
    if config.preset != "tiny":
        raise ValueError(f"only the 'tiny' preset is pre-trained by simfed, not {config.preset!r}")
    train_tokens, val_tokens = load_pretrain_corpus(config.corpus, cache=cache)
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)  # weight init draws from the default generator; seeded here
    model = Model(config.model_config())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.95),
    )
    initial = evaluate_tokens(model, val_tokens, config.seq_len)
    t0 = time.perf_counter()
    model.train()
    recent = []
    for step in range(config.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, config)
        x, y = random_windows(train_tokens, config.batch_size, config.seq_len, gen)
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        recent.append(float(loss.detach()))
        if log and (step + 1) % 50 == 0:
            log(f"step {step + 1}/{config.steps} loss {sum(recent[-50:]) / len(recent[-50:]):.3f} {time.perf_counter() - t0:.0f}s")
    wall_s = time.perf_counter() - t0
    val = evaluate_tokens(model, val_tokens, config.seq_len)
    info = {
        "config": asdict(config),
        "model_config": asdict(config.model_config()),
        "params": model.num_params(),
        "train_wall_s": wall_s,
        "initial_val_loss": initial.loss,
        "val_loss": val.loss,
        "val_accuracy": val.accuracy,
        "final_train_loss": sum(recent[-50:]) / len(recent[-50:]),
        "torch_threads": torch.get_num_threads(),
    }
    path = checkpoint_path(config, cache)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".tmp") as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, "state_dict": model.state_dict(), "info": info, "vocab": VOCAB}, tmp)
    os.replace(tmp.name, path)
    return model, info


def load_checkpoint(path: Path) -> tuple[Model, dict]:
    """A saved pre-trained model and its info."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise ValueError(f"{path}: not a readable simfed checkpoint ({exc.__class__.__name__}: {exc})") from None
    if ckpt.get("format") != CHECKPOINT_FORMAT or ckpt.get("vocab") != VOCAB:
        raise ValueError(f"{path}: checkpoint format/vocabulary does not match this simfed version")
    model = Model(ModelConfig(**ckpt["info"]["model_config"]))
    model.load_state_dict(ckpt["state_dict"])
    return model, ckpt["info"]


def load_pretrained(
    config: PretrainConfig = PretrainConfig(), cache: Path | None = None, log: Callable[[str], None] | None = None
) -> tuple[Model, dict]:
    """The cached pre-trained model for ``config``, training (and caching) it on first use."""
    path = checkpoint_path(config, cache)
    if path.exists():
        model, info = load_checkpoint(path)
        return model, {**info, "cached": True, "path": str(path)}
    model, info = pretrain(config, cache, log)
    return model, {**info, "cached": False, "path": str(path)}
