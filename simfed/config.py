"""Run configuration: TOML presets → ``--set key.sub=value`` overrides → one validated :class:`RunConfig`.

A run is one method, one seed, one population of device traces and one model preset (FedSpine,
arXiv 2501.02438, §5: 80 Jetson boards, target sparsity s*, τ local iterations between pruning steps).
The same file may carry a ``[sweep]`` table (methods × seeds × parameter grid) that ``simfed sweep``
expands; ``simfed run`` ignores it. Every key is typed by the dataclasses below; an unknown key, a
wrong type or a bad value is rejected with one line that names the dotted key (nanoGPT's
configurator keeps that behaviour, here without ``exec``).

Relative paths (``traces.dir``, ``model.cache_dir``) are resolved against the directory of the file
that names them, so a config works from any working directory; the resolved config written into a
run directory holds absolute paths.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

import simfed.timing.cost as _cost  # the memory overheads' defaults (light: shapes and arithmetic only)

from simfed.errors import ConfigError, OptionError




@dataclass
class TracesOptions:
    """Where the device population comes from: a trace directory, or a generator and its arguments."""

    dir: str = ""  # a simfed trace directory (e.g. traces/fedspine-testbed); relative to this file
    generator: str = ""  # or the name of a seeded population generator (e.g. "fedspine-testbed")
    generator_args: dict = field(default_factory=dict)  # keyword arguments of that generator
    seed: int = 0  # the generator's seed (a trace directory is already fixed)
    # Generate with the run's `seed` instead of `traces.seed`, so that seeds also vary the trace realisation
    # (default false: one fixed population, like one physical testbed; docs/RESULTS.md "Seeds").
    seed_follows_run: bool = False
    devices: int = 0  # use a type-stratified subset of this many devices (0 = all of them)


@dataclass
class ModelOptions:
    """The language model: a preset of the accuracy layer (its shape also drives the cost model)."""

    preset: str = "tiny"
    cache_dir: str = ""  # where pre-trained checkpoints are cached ("" = the accuracy layer's default)
    # The model whose shape the time layer costs ("" = the trained preset). Setting it to a larger preset
    # (e.g. "smollm2-135m") times the rounds as if devices ran that model while the trained `preset` stands
    # in as the accuracy proxy; see docs/experiments.md, "Timing proxy".
    timing_preset: str = ""
    # The tiny preset's pre-training corpus: "milton" (a domain shift that federated tuning has to close)
    # or "shakespeare" (plays disjoint from the clients'); docs/accuracy.md, "Pre-training corpus".
    pretrain_corpus: str = "milton"
    # A local LLaMA-family checkpoint to train instead of the preset's weights: a transformers directory
    # (config.json + safetensors/bin weights + tokenizer files) or a .gguf file; loaded offline, relative to
    # this file. `preset` (or `timing_preset`) still names the shape the time layer costs. docs/accuracy.md.
    path: str = ""


@dataclass
class LoRAOptions:
    """LoRA on the timed model (``model.timing_preset``, else ``model.preset``): docs/timing.md §1."""

    # Adapted linears in simfed's names (q, k, v, o, gate, up, down; an encoder has no gate). [] = the preset's
    # default: q and v for roberta-base, roberta-large and llama-7b (as PEFT does), all seven for tiny and smollm2-135m.
    targets: list = field(default_factory=list)
    dtype: str = "float32"  # adapters, their gradients and optimizer state, and the payload: "float32" or "float16"
    train_head: bool = True  # an encoder's classification head trains and travels with the adapters (PEFT's SEQ_CLS)


@dataclass
class MemoryOptions:
    """Runtime overheads of training memory (docs/timing.md §1.4; an OS reserve belongs to the devices)."""

    # Peak tensors are multiplied by this: PyTorch's caching allocator, 15 % fragmentation (GMLake) -> 1/0.85.
    allocator_factor: float = _cost.DEFAULT_ALLOCATOR_FACTOR
    # Added bytes: a Python/PyTorch process (measured here) and a CUDA context without lazy loading (Jetson).
    runtime_bytes: float = _cost.DEFAULT_RUNTIME_BYTES


@dataclass
class TrainOptions:
    """Local training on each device (the paper's τ and local iterations per round)."""

    local_iters: int = 20  # LoRA iterations per device per round
    tau: int = 20  # iterations between two pruning steps (FedSpine: τ = 20 was best)
    batch_size: int = 8  # sequences per local iteration
    seq_len: int = 80  # characters per sequence (LEAF's Shakespeare setting)
    lr: float = 2e-3  # AdamW on the LoRA factors
    eval_every: int = 5  # evaluate the global model every this many rounds (and always at the end)
    # Where training, evaluation, pruning and aggregation run: auto (a GPU torch sees, else the CPU), cpu,
    # cuda, cuda:N or mps. Results are bit-identical per device type for a seed, not across types.
    device: str = "auto"
    # float32, or mixed precision bfloat16 / float16 (frozen weights in that type, LoRA and optimizer in
    # float32; float16 with a loss scaler), where the device supports it. docs/accuracy.md.
    dtype: str = "float32"
    # CPU only: train a round's devices in this many worker processes (one torch thread each); the results
    # are bit-identical to 1 (one process). Each worker holds a copy of the base model.
    workers: int = 1


@dataclass
class EngineOptions:
    """Round-closing rules of the timing engine."""

    participants: int = 0  # devices sampled per round (0 = all devices)
    overcommit: float = 1.0  # FedScale-style: sample participants × overcommit, keep the first participants
    deadline_s: float = 0.0  # simulated seconds after the round start when late work is discarded (0 = none)
    max_concurrent_transfers: int = 0  # server-side connection slots that transfers queue for (0 = unlimited)
    # Share of the devices whose events go to events.parquet (each device by a hash of its id and the seed; server
    # events always): 1 logs every device; large populations log a sample (docs/experiments.md §3).
    log_sample: float = 1.0


@dataclass
class ServerOptions:
    """The server's own links and work (docs/timing.md §3.1, "Server-side time")."""

    # The server's effective throughput for aggregation, evaluation and one-shot pruning, FLOP/s. Default:
    # 1e13, about half of an NVIDIA A100's 19.5 TFLOP/s FP32 peak (an assumption: FedSpine's server is not stated).
    flops: float = 1e13
    downlink: float = 0.0  # bytes/s the server can send to all devices together (what they download); 0 = unlimited
    uplink: float = 0.0  # bytes/s it can receive from all devices together (what they upload); 0 = unlimited
    aggregation_time: bool = True  # time the aggregation from the aggregator's FLOPs
    oneshot_time: bool = True  # time one-shot pruning (prune-then-tune) before the first round
    calibration_sequences: int = 10  # one-shot pruning's calibration sequences (LLM-Pruner: 10 samples)
    base_download: bool = True  # devices download the base model (at their structure) with their first payload
    eval_sequences: int = 0  # sequences scored per device per evaluation (0: evaluation takes no time)


@dataclass
class PolicyOptions:
    """The arm space every method draws from, plus free keyword arguments for the method's policy."""

    p_max: float = 0.2  # largest pruning increment per round
    r_min: int = 2  # smallest LoRA rank
    r_max: int = 32  # largest LoRA rank
    rank: int = 8  # the one rank of single-rank methods (prune-then-tune, uniform, fedmp)
    name: str = ""  # replaces the method's own policy: a registered policy or module:Class ("" = the method's)
    params: dict = field(default_factory=dict)  # options of the method's policy (e.g. discount, S-UCB's γ)
    method_params: dict = field(default_factory=dict)  # recipe parameters (rounds_to_target, ranks_by_type, n_p)
    reward: dict = field(default_factory=dict)  # reward weights (names as in simfed.decisions.reward)


@dataclass
class SweepOptions:
    """What ``simfed sweep`` expands: methods × seeds × every combination of the grid values."""

    methods: list = field(default_factory=list)  # default: the run's method
    seeds: list = field(default_factory=list)  # default: the run's seed
    grid: dict = field(default_factory=dict)  # dotted key -> list of values, e.g. {"train.tau" = [10, 20]}


MODES = ("full", "timing")


@dataclass
class RunConfig:
    """One simulated federated prune-and-tune run."""

    name: str = ""  # free label, copied into the summary
    mode: str = "full"  # "full": real training; "timing": the time layer and the policies only
    method: str = "fedspine"  # a method of simfed.decisions.methods
    aggregator: str = ""  # replaces the method's aggregator: a registered name or module:Class ("" = the method's)
    seed: int = 0  # root seed; every random component gets its own stream spawned from it
    s_star: float = 0.5  # target sparsity every device ends at
    rounds: int = 50
    target_accuracy: float = 0.0  # for time-to-target (0 = report none)
    torch_threads: int = 1  # PyTorch CPU threads in full mode (1: fastest on a shared machine; 0: torch's default)
    traces: TracesOptions = field(default_factory=TracesOptions)
    model: ModelOptions = field(default_factory=ModelOptions)
    lora: LoRAOptions = field(default_factory=LoRAOptions)
    memory: MemoryOptions = field(default_factory=MemoryOptions)
    train: TrainOptions = field(default_factory=TrainOptions)
    engine: EngineOptions = field(default_factory=EngineOptions)
    server: ServerOptions = field(default_factory=ServerOptions)
    policy: PolicyOptions = field(default_factory=PolicyOptions)
    sweep: SweepOptions = field(default_factory=SweepOptions)


# --------------------------------------------------------------------------------------------------
# dict <-> dataclass with type checks


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _check_scalar(value: Any, tp: Any, key: str) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(float(value)):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if tp is list or typing.get_origin(tp) is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return list(value)
    if tp is dict or typing.get_origin(tp) is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        return copy.deepcopy(value)
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")  # pragma: no cover


def _from_dict(cls: type, data: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (known in {where}: {', '.join(names)})")
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _from_dict(tp, data[name], f"{prefix}{name}.")
        else:
            kwargs[name] = _check_scalar(data[name], tp, f"{prefix}{name}")
    return cls(**kwargs)


def _validate(cfg: RunConfig) -> None:
    """Value checks; each names the dotted key and the rule it breaks."""

    def need(ok: bool, key: str, rule: str, value: Any) -> None:
        if not ok:
            raise ConfigError(f"{key}: {rule}, got {value!r}")

    need(cfg.mode in MODES, "mode", f"must be one of {', '.join(MODES)}", cfg.mode)
    need(bool(cfg.method), "method", "must name a method", cfg.method)
    need(cfg.seed >= 0, "seed", "must be >= 0", cfg.seed)
    need(0.0 <= cfg.s_star < 1.0, "s_star", "must be in [0, 1)", cfg.s_star)
    need(cfg.rounds >= 1, "rounds", "must be >= 1", cfg.rounds)
    need(cfg.torch_threads >= 0, "torch_threads", "must be >= 0 (0 = torch's default)", cfg.torch_threads)
    need(0.0 <= cfg.target_accuracy <= 1.0, "target_accuracy", "must be in [0, 1]", cfg.target_accuracy)
    t = cfg.traces
    need(bool(t.dir) != bool(t.generator), "traces", "needs exactly one of traces.dir and traces.generator",
         {"dir": t.dir, "generator": t.generator})
    need(t.devices >= 0, "traces.devices", "must be >= 0", t.devices)
    need(t.seed >= 0, "traces.seed", "must be >= 0", t.seed)
    need(not (t.seed_follows_run and t.dir), "traces.seed_follows_run",
         "applies to traces.generator only (a trace directory is one fixed realisation)", t.seed_follows_run)
    need(bool(cfg.model.preset), "model.preset", "must name a model preset", cfg.model.preset)
    need(cfg.model.pretrain_corpus in ("shakespeare", "milton"), "model.pretrain_corpus",
         "must be 'shakespeare' or 'milton'", cfg.model.pretrain_corpus)
    lo = cfg.lora
    need(lo.dtype in ("float32", "float16"), "lora.dtype", "must be 'float32' or 'float16'", lo.dtype)
    from simfed.timing.presets import preset_modules  # light: no model code

    timed = cfg.model.timing_preset or cfg.model.preset
    modules = preset_modules(timed)
    from simfed.structure import DECODER_MODULES

    known = modules or DECODER_MODULES
    for i, m in enumerate(lo.targets):
        need(isinstance(m, str) and m in known, f"lora.targets[{i}]",
             f"must be a linear of {timed} (one of {', '.join(known)})", m)
    need(len(set(lo.targets)) == len(lo.targets), "lora.targets", "names a linear twice", lo.targets)
    mem = cfg.memory
    need(mem.allocator_factor >= 1.0, "memory.allocator_factor", "must be >= 1 (1 = tensors only)", mem.allocator_factor)
    need(mem.runtime_bytes >= 0.0, "memory.runtime_bytes", "must be >= 0 bytes", mem.runtime_bytes)
    tr = cfg.train
    need(tr.local_iters >= 1, "train.local_iters", "must be >= 1", tr.local_iters)
    need(tr.tau >= 1, "train.tau", "must be >= 1", tr.tau)
    need(tr.batch_size >= 1, "train.batch_size", "must be >= 1", tr.batch_size)
    need(tr.seq_len >= 2, "train.seq_len", "must be >= 2", tr.seq_len)
    need(tr.lr > 0, "train.lr", "must be > 0", tr.lr)
    need(tr.eval_every >= 1, "train.eval_every", "must be >= 1", tr.eval_every)
    from simfed.accuracy.device import DTYPES, check_device_name  # light: names only, no hardware query

    try:
        check_device_name(tr.device)
    except ValueError:
        need(False, "train.device", "must be auto, cpu, cuda, cuda:N (a GPU index) or mps", tr.device)
    need(tr.dtype in DTYPES, "train.dtype", f"must be one of {', '.join(DTYPES)}", tr.dtype)
    need(tr.workers >= 1, "train.workers", "must be >= 1 (1 = train in this process)", tr.workers)
    if cfg.model.path:
        mp = Path(cfg.model.path)
        need(mp.is_dir() or (mp.is_file() and mp.suffix == ".gguf"), "model.path",
             "must be a transformers checkpoint directory or a .gguf file that exists", cfg.model.path)
    e = cfg.engine
    need(e.participants >= 0, "engine.participants", "must be >= 0 (0 = all devices)", e.participants)
    need(e.overcommit >= 1.0, "engine.overcommit", "must be >= 1", e.overcommit)
    need(e.deadline_s >= 0.0, "engine.deadline_s", "must be >= 0 (0 = no deadline)", e.deadline_s)
    need(e.max_concurrent_transfers >= 0, "engine.max_concurrent_transfers", "must be >= 0", e.max_concurrent_transfers)
    need(0.0 <= e.log_sample <= 1.0, "engine.log_sample", "must be in [0, 1]", e.log_sample)
    sv = cfg.server
    need(sv.flops > 0, "server.flops", "must be > 0 (FLOP/s)", sv.flops)
    need(sv.downlink >= 0, "server.downlink", "must be >= 0 bytes/s (0 = unlimited)", sv.downlink)
    need(sv.uplink >= 0, "server.uplink", "must be >= 0 bytes/s (0 = unlimited)", sv.uplink)
    need(sv.calibration_sequences >= 1, "server.calibration_sequences", "must be >= 1", sv.calibration_sequences)
    need(sv.eval_sequences >= 0, "server.eval_sequences", "must be >= 0 (0 = evaluation takes no time)", sv.eval_sequences)
    p = cfg.policy
    need(0.0 <= p.p_max < 1.0, "policy.p_max", "must be in [0, 1)", p.p_max)
    need(p.r_min >= 1, "policy.r_min", "must be >= 1", p.r_min)
    need(p.r_max >= p.r_min, "policy.r_max", f"must be >= policy.r_min ({p.r_min})", p.r_max)
    need(p.rank >= 1, "policy.rank", "must be >= 1", p.rank)
    s = cfg.sweep
    for i, m in enumerate(s.methods):
        need(isinstance(m, str) and bool(m), f"sweep.methods[{i}]", "must be a method name", m)
    for i, sd in enumerate(s.seeds):
        need(isinstance(sd, int) and not isinstance(sd, bool) and sd >= 0, f"sweep.seeds[{i}]",
             "must be an integer >= 0", sd)
    for key, values in s.grid.items():
        need(isinstance(values, list) and len(values) > 0, f"sweep.grid.{key}", "must be a non-empty list", values)
        need(not key.startswith("sweep"), f"sweep.grid.{key}", "cannot sweep the sweep table", key)
        for v in values:  # each grid point must itself be a valid config
            trial = to_dict(cfg)
            trial.pop("sweep")
            try:
                _set_dotted(trial, key, v)
                from_dict(trial)
            except ConfigError as exc:
                raise ConfigError(f"sweep.grid.{key}: value {v!r} is not valid ({exc})") from None
    # the free-form tables (generator_args, method_params, params, reward) against what reads them
    from simfed.config_tables import check_tables  # lazy: they belong to the generators and methods

    try:
        check_tables(cfg)
    except OptionError as exc:
        raise ConfigError(str(exc)) from None


def from_dict(data: dict, *, base_dir: Path | None = None) -> RunConfig:
    """Build and validate a :class:`RunConfig`; relative paths resolve against ``base_dir``."""
    cfg = _from_dict(RunConfig, data, "")
    if base_dir is not None:
        if cfg.traces.dir and not Path(cfg.traces.dir).is_absolute():
            cfg.traces.dir = str((base_dir / cfg.traces.dir).resolve())
        if cfg.model.cache_dir and not Path(cfg.model.cache_dir).is_absolute():
            cfg.model.cache_dir = str((base_dir / cfg.model.cache_dir).resolve())
        if cfg.model.path and not Path(cfg.model.path).is_absolute():
            cfg.model.path = str((base_dir / cfg.model.path).resolve())
    _validate(cfg)
    return cfg


def to_dict(cfg: RunConfig) -> dict:
    """A plain dict (TOML-serialisable) of every field, defaults included."""
    return dataclasses.asdict(cfg)


# --------------------------------------------------------------------------------------------------
# overrides


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=1e-3"`` → ``("train.lr", 0.001)``. The value is read as TOML, else kept as a string."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE (e.g. train.lr=1e-3)")
    key, raw = text.split("=", 1)
    key, raw = key.strip(), raw.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: bad key {key!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def _set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    if parts[0] == "sweep" and parts[-1] == "grid":
        raise ConfigError(f"{key}: set grid entries one by one (sweep.grid.KEY=[...])")
    # keys inside free tables (policy.params, sweep.grid) may themselves contain dots: keep the rest whole
    for free in (("policy", "params"), ("policy", "method_params"), ("policy", "reward"), ("traces", "generator_args"), ("sweep", "grid")):
        if tuple(parts[: len(free)]) == free and len(parts) > len(free) + 1:
            node = data
            for part in free:
                node = node.setdefault(part, {})
            node[".".join(parts[len(free):])] = value
            return
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: {part} is not a table")
        node = child
    node[parts[-1]] = value


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Return a copy of ``data`` with ``--set`` overrides applied (not yet validated)."""
    out = copy.deepcopy(data)
    for text in overrides or []:
        key, value = parse_override(text)
        _set_dotted(out, key, value)
    return out


def read_toml(path: str | Path) -> dict:
    """Read a TOML file; a syntax error names the file and the position."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML ({exc})") from None


def load(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a config file, apply ``--set`` overrides and validate; errors name the file and the key."""
    p = Path(path)
    data = apply_overrides(read_toml(p), overrides)
    try:
        cfg = from_dict(data, base_dir=p.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None
    from simfed.config_tables import warn_unread

    warn_unread(cfg, f"{p}: ")  # keys of the shared tables that none of this run's methods reads
    return cfg


def dumps(cfg: RunConfig) -> str:
    """The resolved config as TOML text (what a run directory records)."""
    return tomli_w.dumps(to_dict(cfg))


def with_values(cfg: RunConfig, values: dict[str, Any]) -> RunConfig:
    """A validated copy of ``cfg`` with dotted keys replaced (used by sweeps)."""
    data = to_dict(cfg)
    for key, value in values.items():
        _set_dotted(data, key, value)
    return from_dict(data)


__all__ = [
    "ConfigError",
    "RunConfig",
    "TracesOptions",
    "ModelOptions",
    "LoRAOptions",
    "MemoryOptions",
    "TrainOptions",
    "EngineOptions",
    "ServerOptions",
    "PolicyOptions",
    "SweepOptions",
    "MODES",
    "load",
    "from_dict",
    "to_dict",
    "dumps",
    "apply_overrides",
    "parse_override",
    "read_toml",
    "with_values",
]
