"""One run from a :class:`~simfed.config.RunConfig` to a complete run directory, with resume.

:func:`run_config` builds the pieces each layer owns (the population and the cost model for time,
the method's policy for decisions, the trainer for accuracy in full mode), hands them to the timing
engine with the :class:`~simfed.experiments.loop.ServerLoop` as its round driver, and writes the run
directory (:mod:`simfed.experiments.outputs`).

Resume: after every round the ``state_dict()`` of the loop, the method (its policy), the trainer and the
aggregator, plain data, are pickled into ``checkpoint.pkl`` (atomically). A restarted run with the same resolved config loads it and asks
the engine to simulate from round 1 again; for the rounds already done the loop replays the
recorded plans and checks that the engine reproduces the recorded timeline, but trains nothing and
asks the policy nothing, so training and decisions continue exactly where they stopped. The timing
engine is deterministic and fast next to training, so re-simulating its part of finished rounds
costs little and keeps the engine free of checkpoint code.
"""

from __future__ import annotations

import functools
import math
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from simfed import config as config_mod
from simfed.config import RunConfig
from simfed.errors import SimfedError
from simfed.experiments.loop import LoopState, ServerLoop
from simfed.experiments.outputs import RunDir, json_safe
from simfed.timing.traces import Population

if TYPE_CHECKING:
    from simfed.decisions.methods import Method


class RunError(SimfedError, ValueError):
    """A run cannot start (its directory holds another run, a component is missing, ...)."""


# ---------------------------------------------------------------------------------------- population


def stratified_subset(population: Population, n: int) -> Population:
    """``n`` devices keeping the population's type mix (largest remainders), first ids of each type.

    Deterministic and seed-free: the same population and ``n`` always give the same devices, which
    keeps a small demo representative of the 30/40/10 testbed mix.
    """
    if n <= 0 or n >= len(population):
        return population
    by_type: dict[str, list] = {}
    for d in sorted(population.devices, key=lambda d: d.device_id):
        by_type.setdefault(d.device_type, []).append(d)
    total = len(population)
    quotas = {t: n * len(ds) / total for t, ds in by_type.items()}
    counts = {t: int(math.floor(q)) for t, q in quotas.items()}
    left = n - sum(counts.values())
    for t in sorted(quotas, key=lambda t: (-(quotas[t] - counts[t]), t))[:left]:
        counts[t] += 1
    keep = {d.device_id for t, ds in by_type.items() for d in ds[: counts[t]]}
    devices = tuple(d for d in population.devices if d.device_id in keep)
    return Population(devices, {**population.meta, "subset_of": total, "subset": n}, population.access_points)


def load_population(cfg: RunConfig) -> Population:
    """The configured population: a trace directory or a seeded generator, then the subset."""
    t = cfg.traces
    if t.dir:
        from simfed.timing.tracefile import read_population

        pop = read_population(t.dir)
    else:
        try:
            from simfed.timing import generators
        except ImportError as exc:  # pragma: no cover - until the generators land
            raise RunError(f"traces.generator: trace generators are not available ({exc})") from None
        seed = cfg.seed if t.seed_follows_run else t.seed
        pop = generators.generate(t.generator, seed=seed, **t.generator_args)
    return stratified_subset(pop, t.devices)


# ---------------------------------------------------------------------------------------- summary


def summarise(cfg: RunConfig, loop: ServerLoop, final: dict[str, float], cost: Any, n_devices: int) -> dict:
    """Headline numbers of a finished run (documented in docs/experiments.md), from the loop's running totals."""
    from simfed.experiments.tables import SCHEMA_VERSION

    totals = loop.state.totals
    target = cfg.target_accuracy
    final_sparsity = float(np.mean(loop.state.sparsity)) if loop.state.sparsity.size else 0.0
    inf_flops = cost.inference_flops(final_sparsity, cfg.train.seq_len) / cost.inference_flops(0.0, cfg.train.seq_len)
    inf_mem = cost.inference_memory_bytes(final_sparsity) / cost.inference_memory_bytes(0.0)
    return {
        "schema_version": SCHEMA_VERSION,
        "name": cfg.name,
        "method": cfg.method,
        "seed": cfg.seed,
        "mode": cfg.mode,
        "n_devices": n_devices,
        "rounds": totals.rounds,
        "simulated_time_s": totals.end_s,
        "target_accuracy": target if target > 0 else None,
        "time_to_target_s": totals.time_to_target_s,
        "rounds_to_target": totals.rounds_to_target,
        "time_to_s_star_s": totals.time_to_s_star_s,
        "final_accuracy": final["accuracy"],
        "final_eval_loss": final["loss"],
        "s_star": loop.s_star,
        "final_sparsity": final_sparsity,
        "mean_wait_s": totals.mean_wait_s,
        "mean_round_s": totals.mean_round_s,
        "inference_flops_rel": inf_flops,
        "inference_memory_rel": inf_mem,
        "outcomes": dict(sorted(totals.outcomes.items())),
    }


# ---------------------------------------------------------------------------------------- building


class TracePredictor:
    """Completion-time predictor for the *oracle* baseline only: it reads the traces, as no server can.

    Predicts a plan started at ``now_s`` (set by the loop each round) with the round model on the
    device's own links (:func:`simfed.timing.round.predict_completion_s`: availability, memory and its
    traces; no contention). Picklable, so the oracle survives checkpoints.
    """

    def __init__(self, population: Population, cost: Any, s_star: float, local_iters: int, tau: int) -> None:
        self.population = population
        self.positions = {d.device_id: i for i, d in enumerate(population.devices)}
        self.cost = cost
        self.s_star = s_star
        self.local_iters = local_iters
        self.tau = tau
        self.now_s = 0.0

    def __call__(self, device_id: str, arm: Any, sparsity_before: float) -> float:
        return float(self.many([(device_id, arm, sparsity_before)])[0])

    def many(self, requests: "list[tuple[str, Any, float]]") -> "np.ndarray":
        """``self(device_id, arm, sparsity_before)`` for many requests in one vectorised pass (the same values)."""
        from simfed.records import Plan
        from simfed.structure import next_sparsity
        from simfed.timing.packed import PackedPopulation
        from simfed.timing.round import predict_completions_s

        costs = [self.cost.plan_cost(Plan(round=0, device_id=d, arm=arm, sparsity_before=s,
                                          sparsity_after=next_sparsity(s, arm.p, self.s_star),
                                          local_iters=self.local_iters, tau=self.tau))
                 for d, arm, s in requests]
        positions = np.array([self.positions[d] for d, _, _ in requests], dtype=np.int64)
        return predict_completions_s(PackedPopulation.of(self.population), positions, self.now_s, costs)


def build_cost(cfg: RunConfig) -> Any:
    """The cost model of the timed model preset (``model.timing_preset``, else the trained one): its batch and
    sequence length, LoRA targets and dtype, memory overheads (:func:`simfed.timing.presets.cost_from_config`)."""
    from simfed.timing.presets import cost_from_config

    return cost_from_config(cfg)


def _config_text(cfg: RunConfig) -> str:
    return config_mod.dumps(cfg)


def run_config(cfg: RunConfig, out_dir: str | Path, *, progress: bool = True, fresh: bool = False) -> dict:
    """Run ``cfg`` into ``out_dir`` (resuming from its checkpoint) and return the summary.

    A complete run with the same resolved config is not re-run; a directory holding another run is
    refused unless ``fresh``.
    """
    rd = RunDir(out_dir)
    text = _config_text(cfg)
    recorded = rd.recorded_config()
    if fresh:
        rd.clear()
        recorded = None
    if recorded is not None and recorded != text:
        raise RunError(f"{rd.path}: holds a run with another config; use another --out or --fresh to discard it")
    if recorded is not None and rd.is_complete():
        return rd.read_summary()
    rd.path.mkdir(parents=True, exist_ok=True)
    rd.write_config(text)
    t0 = time.perf_counter()
    session = Session(cfg, rd, progress=progress)
    summary = session.run()
    rd.write_wall({"wall_s": time.perf_counter() - t0, "resumed_from_round": session.resumed_from,
                   "host": platform.node(), "pid": os.getpid()})
    return summary


#: The checkpoint's layout (2: built from state_dicts, with the journal of columnar rounds). A resume refuses
#: another format with one clear error instead of failing inside.
CHECKPOINT_FORMAT = 2


class Session:
    """One run being executed: the layers' objects, the loop, checkpoints and the results."""

    def __init__(self, cfg: RunConfig, rd: RunDir, *, progress: bool = True) -> None:
        self.cfg = cfg
        self.rd = rd
        self.progress = progress
        self.text = _config_text(cfg)
        self.resumed_from = 0
        self.shared: dict[str, Any] = {}
        self._bar = None

    # ------------------------------------------------------------------ building
    def _learner(self, method: Any, device_ids: list[str]) -> Any:
        from simfed.experiments.learner import FullLearner

        trainer, aggregator = build_training(self.cfg, method, device_ids, self.shared)
        return FullLearner(trainer, aggregator, device_ids)

    def _checkpoint(self, loop: ServerLoop) -> None:
        """After a round: append its plans and rows to the journal, then replace the checkpoint.

        The checkpoint holds what changes in place (sparsities, the policy, the trainer's device
        state, the aggregator) and the journal length it matches; rows are only ever appended. It is
        built from the objects' ``state_dict()``s, plain data (dicts, lists, numbers, arrays, tensors),
        pickled: no simfed accuracy-layer object is in it, and nothing of the base model or the data.
        """
        import pickle

        fast = pickle.HIGHEST_PROTOCOL
        length = self.rd.append_journal(pickle.dumps(loop.state.last_round(), protocol=fast))
        state = {"loop": loop.state.state_dict(), "method": loop.method.state_dict()}
        if loop.learner is not None:
            state["learner"] = loop.learner.state_dict()
        checkpoint = {"format": CHECKPOINT_FORMAT, "config": self.text, "rounds_done": loop.state.rounds_done,
                      "journal_bytes": length, "state": state}
        self.rd.save_checkpoint(pickle.dumps(checkpoint, protocol=fast))
        if self._bar is not None:
            self._bar.update(1)

    def _restore(self) -> tuple[LoopState, dict] | None:
        """The loop state and the stateful objects of the last checkpoint (None: start afresh)."""
        import pickle

        if not self.rd.has_checkpoint():
            if self.rd.file("journal.bin").exists():  # rows of a run killed before its first checkpoint
                self.rd.file("journal.bin").unlink()
            return None
        try:
            checkpoint = pickle.loads(self.rd.load_checkpoint())
        except Exception as exc:  # a checkpoint pickled by another version of simfed, or damaged
            raise RunError(f"{self.rd.path}: cannot read its checkpoint ({type(exc).__name__}: {exc}); use --fresh "
                           "to start the run again") from None
        if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
            found = checkpoint.get("format", "none") if isinstance(checkpoint, dict) else "none"
            raise RunError(f"{self.rd.path}: the checkpoint has format {found}, this simfed writes and reads format "
                           f"{CHECKPOINT_FORMAT} (another version of simfed wrote it); use --fresh to start the run again")
        if checkpoint.get("config") != self.text:
            raise RunError(f"{self.rd.path}: the checkpoint belongs to another config; use --fresh to discard it")
        state = checkpoint["state"]
        loop_state = LoopState.from_state_dict(state["loop"])
        for record in self.rd.read_journal(checkpoint["journal_bytes"]):
            loop_state.add_round(*pickle.loads(record))
        if loop_state.rounds_done != checkpoint["rounds_done"]:
            raise RunError(f"{self.rd.path}: the journal holds {loop_state.rounds_done} rounds, the checkpoint "
                           f"{checkpoint['rounds_done']}; use --fresh to start again")
        return loop_state, state

    # ------------------------------------------------------------------ running
    def run(self) -> dict:
        if self.cfg.mode != "full" or self.cfg.torch_threads == 0:
            return self._run()
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(self.cfg.torch_threads)
        try:
            return self._run()
        finally:
            torch.set_num_threads(before)

    def _run(self) -> dict:
        from tqdm import tqdm

        from simfed.experiments.loop import ServerLoop
        from simfed.timing.engine import Engine

        cfg = self.cfg
        population = load_population(cfg)
        cost = build_cost(cfg)
        device_ids = sorted(d.device_id for d in population.devices)
        types = {d.device_id: d.device_type for d in population.devices}
        predictor = TracePredictor(population, cost, cfg.s_star, cfg.train.local_iters, cfg.train.tau)
        method = resolve_method(cfg, population, predictor)
        learner = self._learner(method, device_ids) if cfg.mode == "full" else None
        state = None
        restored = self._restore()
        if restored is not None:
            state, objects = restored
            method.load_state_dict(objects["method"])
            if learner is not None:
                learner.load_state_dict(objects["learner"])
            self.resumed_from = state.rounds_done
        check_settings(cfg, population)
        loop = ServerLoop(
            method=method, device_types=types, s_star=cfg.s_star, limits=model_limits(cfg, cost),
            local_iters=cfg.train.local_iters, tau=cfg.train.tau, rounds=cfg.rounds,
            eval_every=cfg.train.eval_every, learner=learner, target_accuracy=cfg.target_accuracy,
            server_costs=build_server_costs(cfg, cost, method), on_round_end=self._checkpoint,
            on_round_start=_NowSetter(predictor), state=state,
        )
        from simfed.timing.log import sample_mask

        events = self.rd.event_writer()  # the event log streams to disk round by round (all rounds: resume re-simulates)
        engine = Engine(population, cost, build_engine_config(cfg), loop, event_sink=events.write,
                        event_sample=sample_mask([d.device_id for d in population.devices], cfg.engine.log_sample, cfg.seed),
                        keep_timings=False)
        try:
            with tqdm(total=cfg.rounds, initial=self.resumed_from, disable=not self.progress, unit="round",
                      desc=f"{cfg.method} s{cfg.seed}", leave=False) as bar:
                self._bar = bar
                engine.run(cfg.rounds)
                self._bar = None
            final = loop.finish()
        except BaseException:
            events.close(ok=False)
            raise
        events.close()
        summary = summarise(cfg, loop, final, cost, len(population))
        self.rd.write_results(summary)
        n_failed, n_ok = loop.state.totals.outcomes.get("failed", 0), loop.state.totals.outcomes.get("ok", 0)
        if n_failed and not n_ok:
            r, dev, why = loop.state.totals.first_failure
            raise RunError(f"{self.rd.path}: every round failed: all {n_failed} finished updates were rejected by the "
                           f"training health check (first: round {r}, device {dev!r}: {why}); nothing was aggregated "
                           "(the results are written; lower train.lr?)")
        return json_safe(summary)


def check_settings(cfg: RunConfig, population: Population) -> None:
    """Settings that cannot take effect on this population are refused; those that change nothing, warned about."""
    import warnings

    from simfed.errors import SimfedWarning

    e = cfg.engine
    n = len(population)
    if e.overcommit > 1.0 and not e.participants:
        raise config_mod.ConfigError(f"engine.overcommit={e.overcommit:g} has no effect without engine.participants "
                                     "(0 selects every device each round); set engine.participants or overcommit = 1")
    if e.participants > n:
        raise config_mod.ConfigError(f"engine.participants={e.participants} exceeds the population's {n} devices; "
                                     f"use at most {n}, or 0 to select every device")
    if e.participants:
        selected = min(n, int(e.participants * e.overcommit + 1e-9))
        if e.overcommit > 1.0 and selected == e.participants:
            why = "the population has no more devices" if selected == n else f"int({e.participants} x {e.overcommit:g}) = {selected}"
            warnings.warn(f"engine.overcommit={e.overcommit:g} with engine.participants={e.participants} selects "
                          f"{selected} devices ({why}): no over-commitment", SimfedWarning, stacklevel=2)


def model_limits(cfg: RunConfig, cost: Any) -> Any:
    """Measured sparsity and the largest useful rank, from the shape of the model whose rank is trained (the
    trained preset in full mode, the timed one in timing mode); warns once when s* cannot be reached exactly."""
    import warnings

    from simfed.errors import SimfedWarning
    from simfed.experiments.loop import ModelLimits
    from simfed.structure import sparsity_of, structure_at
    from simfed.timing.cost import linear_dims

    shape, targets = cost.shape, cost.lora_targets
    if cfg.mode == "full" and cfg.model.timing_preset and cfg.model.timing_preset != cfg.model.preset:
        from simfed.accuracy.presets import preset

        shape = preset(cfg.model.preset).shape()
        targets = None  # the trainer adapts every linear of its model

    @functools.lru_cache(maxsize=None)
    def measured(s: float) -> float:
        return sparsity_of(shape, structure_at(shape, s))

    @functools.lru_cache(maxsize=None)
    def max_rank(s: float) -> int:
        dims = linear_dims(shape, structure_at(shape, s))
        return min(min(dims[m]) for m in (targets or dims))

    if cfg.s_star > 0 and abs(measured(cfg.s_star) - cfg.s_star) > 0.01:
        st = structure_at(shape, cfg.s_star)
        warnings.warn(f"s_star={cfg.s_star:g}: whole KV groups and MLP channels are pruned, so the model keeps "
                      f"{st.kv_groups} of {shape.n_kv_heads} KV groups and {st.channels} of {shape.d_ff} channels per "
                      f"layer: the measured sparsity is {measured(cfg.s_star):.4f} (tables show both)",
                      SimfedWarning, stacklevel=2)
    return ModelLimits(measured=measured, max_rank=max_rank)


def build_engine_config(cfg: RunConfig) -> Any:
    """The timing engine's rules from the config's ``engine`` and ``server`` tables."""
    from simfed.timing.engine import EngineConfig

    e, sv = cfg.engine, cfg.server
    return EngineConfig(
        participants=e.participants or None, overcommit=e.overcommit, deadline_s=e.deadline_s or None,
        max_concurrent_transfers=e.max_concurrent_transfers or None, seed=cfg.seed,
        server_down_bytes_s=sv.downlink or None, server_up_bytes_s=sv.uplink or None, server_flops=sv.flops,
    )


def build_server_costs(cfg: RunConfig, cost: Any, method: "Method") -> Any:
    """What the server's own phases cost (docs/timing.md §3.1), each part as the ``server`` table says."""
    from simfed.accuracy.aggregators import aggregator_class
    from simfed.experiments.loop import ServerCosts
    from simfed.structure import structure_at
    from simfed.timing.cost import linear_dims

    sv = cfg.server
    shape = cost.shape
    aggregate = None
    if sv.aggregation_time:
        merge = aggregator_class(method.aggregator).merge_flops
        targets = cost.lora_targets

        @functools.lru_cache(maxsize=None)
        def adapted(sparsity: float) -> list[tuple[int, int]]:
            dims = linear_dims(shape, structure_at(shape, sparsity))
            return [dims[m] for m in targets] * shape.n_layers

        full_dims = adapted(0.0)

        def aggregate(plans, merged_before):
            groups, counts = np.unique(np.stack([plans.r.astype(float), plans.sparsity_after], axis=1), axis=0,
                                       return_counts=True)
            return merge(full_dims, [(int(r), adapted(float(s)), int(n)) for (r, s), n in zip(groups.tolist(), counts.tolist())],
                         merged_before)

    evaluate = None
    if sv.eval_sequences > 0:
        def evaluate(sparsity):
            levels, counts = np.unique(sparsity, return_counts=True)
            return sv.eval_sequences * sum(n * cost.inference_flops(float(s)) for s, n in zip(levels.tolist(), counts.tolist()))

    oneshot = cost.oneshot_pruning_flops(sv.calibration_sequences) if (sv.oneshot_time and method.prune_mode == "oneshot") else 0.0
    return ServerCosts(aggregate=aggregate, evaluate=evaluate, oneshot_flops=oneshot, base_download=sv.base_download)


class _NowSetter:
    """Tells the oracle's predictor when the round starts (it binds the start time of its forecasts)."""

    def __init__(self, predictor: TracePredictor) -> None:
        self.predictor = predictor

    def __call__(self, now_s: float) -> None:
        self.predictor.now_s = now_s


def reward_weights(cfg: RunConfig) -> Any:
    """The reward's weights from ``policy.reward`` (``rank_ref`` defaults to the arm space's ``r_max``)."""
    from simfed.decisions.reward import RewardWeights

    weights = dict(cfg.policy.reward)
    weights.setdefault("rank_ref", cfg.policy.r_max)
    try:
        return RewardWeights.from_dict(weights)
    except (TypeError, ValueError) as exc:
        raise config_mod.ConfigError(f"policy.reward: {exc}") from None


def resolve_method(cfg: RunConfig, population: Population, predictor: TracePredictor) -> Any:
    """The run's :class:`~simfed.decisions.methods.Method`, built for its devices; errors name the config key.

    ``method`` is a registered name or a ``module:Class`` path; ``policy.name`` and ``aggregator``, when set,
    replace the method's own policy (it then gets ``policy.params``) and aggregator. The method's aggregator
    and importance criterion are checked against the accuracy layer's registries here, once. Only a method
    that declares ``reads_traces`` (the oracle) receives the trace predictor.
    """
    from simfed.accuracy.aggregators import aggregator_class
    from simfed.accuracy.prune import criterion
    from simfed.decisions.arms import ArmSpace
    from simfed.decisions.methods import build_method, get_method

    cls = get_method(cfg.method)
    if cfg.aggregator:
        cls = type(cls.__name__, (cls,), {"aggregator": cfg.aggregator, "__module__": cls.__module__})
    where = f"method {cls.name or cls.__name__!r}"
    try:
        aggregator_class(cls.aggregator)
        criterion(cls.importance)
    except ValueError as exc:
        raise config_mod.ConfigError(f"{'aggregator' if cfg.aggregator else 'method'}: {where}: {exc}") from None
    arm_space = ArmSpace(p_max=cfg.policy.p_max, r_min=cfg.policy.r_min, r_max=cfg.policy.r_max)
    params = {"rank": cfg.policy.rank, "s_star": cfg.s_star, **cfg.policy.method_params}
    devices = sorted(d.device_id for d in population.devices)
    types = {d.device_id: d.device_type for d in population.devices}
    try:
        built = build_method(cls, arm_space, devices, types, cfg.seed, params,
                             None if cfg.policy.name else cfg.policy.params, traces=predictor,
                             reward_weights=reward_weights(cfg))
        if cfg.policy.name:
            built.replace_policy(build_user_policy(cfg.policy.name, arm_space, cfg.seed, cfg.policy.params))
    except (TypeError, ValueError) as exc:
        raise config_mod.ConfigError(f"{where}: {exc}") from None
    return built


def build_user_policy(spec: str, arm_space: Any, seed: int, params: dict) -> Any:
    """``policy.name``: a registered policy or a ``module:Class`` path, with ``policy.params`` (checked)."""
    from simfed.decisions.policies import POLICIES, Policy
    from simfed.plugins import load_class

    cls = POLICIES.get(spec) or (load_class(spec, Policy, "policy.name") if ":" in spec else None)
    if cls is None:
        raise config_mod.ConfigError(f"policy.name: unknown policy {spec!r} (known: {', '.join(POLICIES)}, "
                                     "or a module:Class of your own)")
    kwargs = cls.options().check(dict(params), "policy.params.")
    return cls(arm_space=arm_space, seed=seed, **kwargs)


def build_training(cfg: RunConfig, method: Any, device_ids: list[str], shared: dict) -> tuple[Any, Any]:
    """The trainer and the method's aggregator: :func:`simfed.accuracy.factory.build_training` (the ``tiny``
    or ``smollm2-135m`` preset, or ``model.path``; one Shakespeare role per device drawn with the run seed;
    ``train.device`` / ``train.dtype``). The base model and the roles' data go into ``shared``."""
    from simfed.accuracy.factory import build_training as build

    return build(cfg, method, device_ids, shared)
