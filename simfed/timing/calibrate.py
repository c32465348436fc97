"""Device profiles from measured step times and memory: ``simfed calibrate``.

The cost model (:mod:`simfed.timing.cost`) counts the FLOPs and the tensor memory of a training step from the
model's shape; a device turns FLOPs into time through its effective throughput, and its memory needs add the
runtime's overheads. This module fits those device constants to measurements and stores them as a **device
profile** (a small JSON file, :class:`Profile`):

- **time**: step time ``t = (F + o) / θ``, with ``F`` the cost model's FLOPs of the measured configuration
  (:meth:`CostModel.iteration_flops` without overhead), ``θ`` the effective throughput (FLOP/s) and ``o`` the
  per-iteration overhead (FLOPs of this device; ``CostModel(iteration_overhead_flops=o)``). Both are fitted by
  least squares on relative error, ``Σ ((F_i + o)/θ / t_i − 1)²``, which is linear in ``1/θ`` and ``o/θ``
  (``benchmarks/bench_cost_model.py``'s fit), with ``θ > 0`` and ``o ≥ 0`` (non-negative least squares,
  Lawson & Hanson 1974 as ``scipy.optimize.nnls``);
- **memory**: peak ``M = a T + b``, with ``T`` the cost model's tensor peak of the configuration
  (:meth:`CostModel.tensor_memory_bytes`, at the dtypes the measurement ran), ``a`` the allocator factor and
  ``b`` the runtime bytes (``CostModel(allocator_factor=a, runtime_bytes=b)``), fitted the same way with
  ``a ≥ 1`` and ``b ≥ 0`` (the cost model's ranges).

Measurements come from this host (:func:`measure_host`: the accuracy layer's real model, pruned and with LoRA,
stepped as ``train.Trainer`` steps it, as ``benchmarks/bench_cost_model.py`` and ``bench_memory.py`` do) or from
a small CSV a user fills on a real board (:func:`read_measurements`; columns in :data:`CSV_COLUMNS` and
docs/timing.md §8). A profile feeds a trace: the ``fedspine-testbed`` generator's ``profiles`` option, or
:func:`apply_profiles` on any trace directory (``simfed calibrate apply``).
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import math
import os
import platform
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from scipy.optimize import nnls

from simfed.errors import SimfedError, SimfedWarning
from simfed.structure import structure_at
from simfed.timing.cost import DTYPE_BYTES, CostModel
from simfed.timing.presets import preset_names, timing_cost

__all__ = ["CalibrationError", "Measurement", "Profile", "CSV_COLUMNS", "PROFILE_FORMAT", "PROFILE_VERSION",
           "read_measurements", "write_measurements", "measurement_cost", "fit_throughput", "fit_memory",
           "fit_profile", "load_profile", "write_profile", "measure_host", "host_description", "apply_profiles",
           "HOST_PRESETS"]

PROFILE_FORMAT = "simfed-device-profile"
PROFILE_VERSION = 1
#: The presets :func:`measure_host` can run (the accuracy layer's models; the paper's presets are timing-only).
HOST_PRESETS = ("tiny", "smollm2-135m")

#: CSV columns: name -> (required, meaning). Units: seconds, bytes; blank optional fields take the default.
CSV_COLUMNS: dict[str, tuple[bool, str]] = {
    "preset": (True, "model preset the step trained (simfed timing preset name, e.g. roberta-base)"),
    "batch": (True, "sequences per step"),
    "seq_len": (True, "tokens per sequence"),
    "sparsity": (True, "structured sparsity of the model, in [0, 1) (simfed.structure.structure_at)"),
    "rank": (True, "LoRA rank"),
    "step_s": (True, "seconds per training step (forward, backward, optimizer), e.g. the best of several"),
    "device_type": (True, "the device type the profile is for, e.g. tx2"),
    "peak_bytes": (False, "peak memory of the training process over the idle system, bytes (blank: not measured)"),
    "targets": (False, "adapted linears, space-separated simfed names (q k v o gate up down; "
                       "blank: the preset's default)"),
    "weights_dtype": (False, "dtype of the base weights and activations: float32 (default) or float16"),
    "lora_dtype": (False, "dtype of the LoRA factors and their optimizer state: float32 (default) or float16"),
    "importance": (False, "1 if the step also computed FedSpine's LoRA-gradient importance (default 0)"),
    "power_mode": (False, "the board's power mode during the measurement (e.g. MAXN; blank: its maximum mode)"),
}


class CalibrationError(SimfedError, ValueError):
    """A measurement CSV, a profile file or a calibration request that cannot be used (one line: file, line, field)."""


@dataclass(frozen=True)
class Measurement:
    """One measured training step of a configuration (a row of the measurement CSV).

    ``step_s`` in seconds, ``peak_bytes`` in bytes (None: not measured); ``targets`` None means the preset's
    default adapted linears; ``weights_dtype``/``lora_dtype`` are ``float32`` or ``float16``.
    """

    preset: str
    batch: int
    seq_len: int
    sparsity: float
    rank: int
    step_s: float
    device_type: str
    peak_bytes: float | None = None
    targets: tuple[str, ...] | None = None
    weights_dtype: str = "float32"
    lora_dtype: str = "float32"
    importance: bool = False
    power_mode: str | None = None


@dataclass(frozen=True)
class Profile:
    """A device type's calibrated constants.

    ``throughput_flops`` (FLOP/s of the cost model's FLOPs) in ``power_mode`` (None: the device's maximum
    mode), ``iteration_overhead_flops`` (FLOPs of this device per local iteration), the memory overheads
    ``allocator_factor`` and ``runtime_bytes`` (None when no memory was measured), ``usable_ram_bytes`` (the
    RAM a training process can use, if known), and ``fit``/``source``: how it was obtained and how well the
    fit reproduces the measurements.
    """

    device_type: str
    throughput_flops: float
    iteration_overhead_flops: float = 0.0
    power_mode: str | None = None
    allocator_factor: float | None = None
    runtime_bytes: float | None = None
    usable_ram_bytes: float | None = None
    fit: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"format": PROFILE_FORMAT, "version": PROFILE_VERSION, "device_type": self.device_type,
                "throughput_flops": self.throughput_flops, "iteration_overhead_flops": self.iteration_overhead_flops,
                "power_mode": self.power_mode, "allocator_factor": self.allocator_factor,
                "runtime_bytes": self.runtime_bytes, "usable_ram_bytes": self.usable_ram_bytes,
                "fit": self.fit, "source": self.source}


# --------------------------------------------------------------------------------------------- CSV


def _split_targets(text: str) -> tuple[str, ...]:
    return tuple(t for t in text.replace(",", " ").replace(";", " ").replace("+", " ").split() if t)


def _parse_row(values: dict[str, str], where: str) -> Measurement:
    def need(name: str) -> str:
        text = values.get(name, "").strip()
        if not text:
            raise CalibrationError(f"{where}: {name}: missing value ({CSV_COLUMNS[name][1]})")
        return text

    def integer(name: str) -> int:
        text = need(name)
        try:
            v = int(text)
        except ValueError:
            raise CalibrationError(f"{where}: {name}: expected an integer >= 1, got {text!r}") from None
        if v < 1:
            raise CalibrationError(f"{where}: {name}: expected an integer >= 1, got {text!r}")
        return v

    def number(name: str, text: str, lo: float, lo_open: bool, hi: float | None = None) -> float:
        try:
            v = float(text)
        except ValueError:
            v = math.nan
        ok = math.isfinite(v) and (v > lo if lo_open else v >= lo) and (hi is None or v < hi)
        if not ok:
            rng = f"{'>' if lo_open else '>='} {lo:g}" + (f" and < {hi:g}" if hi is not None else "")
            raise CalibrationError(f"{where}: {name}: expected a finite number {rng}, got {text!r}")
        return v

    def dtype(name: str) -> str:
        text = values.get(name, "").strip() or "float32"
        if text not in DTYPE_BYTES:
            raise CalibrationError(f"{where}: {name}: expected one of {', '.join(DTYPE_BYTES)}, got {text!r}")
        return text

    preset = need("preset")
    if preset not in preset_names():
        raise CalibrationError(f"{where}: preset: unknown preset {preset!r} (known: {', '.join(preset_names())})")
    imp_text = values.get("importance", "").strip().lower()
    if imp_text not in ("", "0", "1", "true", "false", "yes", "no"):
        raise CalibrationError(f"{where}: importance: expected 0 or 1, got {values.get('importance')!r}")
    peak_text = values.get("peak_bytes", "").strip()
    targets_text = values.get("targets", "").strip()
    m = Measurement(
        preset=preset,
        batch=integer("batch"),
        seq_len=integer("seq_len"),
        sparsity=number("sparsity", need("sparsity"), 0.0, False, 1.0),
        rank=integer("rank"),
        step_s=number("step_s", need("step_s"), 0.0, True),
        device_type=need("device_type"),
        peak_bytes=number("peak_bytes", peak_text, 0.0, True) if peak_text else None,
        targets=_split_targets(targets_text) if targets_text else None,
        weights_dtype=dtype("weights_dtype"),
        lora_dtype=dtype("lora_dtype"),
        importance=imp_text in ("1", "true", "yes"),
        power_mode=values.get("power_mode", "").strip() or None,
    )
    try:
        measurement_cost(m)
    except ValueError as exc:
        raise CalibrationError(f"{where}: {exc}") from None
    return m


def read_measurements(path: str | os.PathLike) -> list[Measurement]:
    """The measurements of a CSV file (columns: :data:`CSV_COLUMNS`; ``#`` lines and blank lines are skipped).

    Raises:
        CalibrationError: no such file, no header, a missing required column, an unknown column (with the
            closest known name), a row with the wrong number of fields, a bad value (naming the line and the
            column) or no data rows.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise CalibrationError(f"{path}: no such measurement file") from None
    header: list[str] | None = None
    rows: list[Measurement] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in next(csv.reader(io.StringIO(line)))]
        if header is None:
            header = [f.lower() for f in fields]
            for name in header:
                if name not in CSV_COLUMNS:
                    close = difflib.get_close_matches(name, list(CSV_COLUMNS), n=1, cutoff=0.6)
                    hint = f"did you mean {close[0]!r}? " if close else ""
                    raise CalibrationError(f"{path}: line {lineno}: unknown column {name!r} ({hint}known: "
                                           f"{', '.join(CSV_COLUMNS)})")
            if len(set(header)) != len(header):
                raise CalibrationError(f"{path}: line {lineno}: a column is named twice: {', '.join(header)}")
            missing = [c for c, (req, _) in CSV_COLUMNS.items() if req and c not in header]
            if missing:
                raise CalibrationError(f"{path}: line {lineno}: missing column(s) {', '.join(missing)} "
                                       f"(required: {', '.join(c for c, (r, _) in CSV_COLUMNS.items() if r)})")
            continue
        if len(fields) != len(header):
            raise CalibrationError(f"{path}: line {lineno}: {len(fields)} fields for {len(header)} columns")
        rows.append(_parse_row(dict(zip(header, fields)), f"{path}: line {lineno}"))
    if header is None or not rows:
        raise CalibrationError(f"{path}: no measurements (a header row and at least one data row are needed)")
    return rows


def write_measurements(rows: Sequence[Measurement], path: str | os.PathLike) -> Path:
    """Write ``rows`` as a measurement CSV that :func:`read_measurements` reads back exactly (floats by ``repr``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = list(CSV_COLUMNS)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(cols)
    for m in rows:
        writer.writerow([m.preset, m.batch, m.seq_len, repr(m.sparsity), m.rank, repr(m.step_s), m.device_type,
                         "" if m.peak_bytes is None else repr(float(m.peak_bytes)),
                         "" if m.targets is None else " ".join(m.targets), m.weights_dtype, m.lora_dtype,
                         int(m.importance), m.power_mode or ""])
    path.write_text(out.getvalue())
    return path


def measurement_cost(m: Measurement) -> CostModel:
    """The cost model of a measured configuration: the preset at the row's batch, sequence length, targets and
    dtypes, with the importance step as measured and **no** overheads (tensors only, FLOPs only).

    Raises ``ValueError`` (a bad target name, a sequence longer than an encoder's positions).
    """
    wb, lb = DTYPE_BYTES[m.weights_dtype], DTYPE_BYTES[m.lora_dtype]
    return timing_cost(m.preset, m.batch, m.seq_len, lora_targets=m.targets, param_bytes=wb, act_bytes=wb,
                       lora_bytes=lb, importance=m.importance, allocator_factor=1.0, runtime_bytes=0.0)


def _flops_and_tensors(m: Measurement) -> tuple[float, float]:
    cost = measurement_cost(m)
    st = structure_at(cost.shape, m.sparsity)
    return cost.iteration_flops(st, m.rank, with_importance=m.importance), cost.tensor_memory_bytes(st, m.rank)


# --------------------------------------------------------------------------------------------- fits


def _scaled_nnls(design: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Non-negative least squares with the columns scaled to unit norm first (they differ by 10 orders)."""
    norms = np.linalg.norm(design, axis=0)
    norms[norms == 0] = 1.0
    x, _ = nnls(design / norms, target)
    return x / norms


def fit_throughput(flops: Sequence[float], step_s: Sequence[float], overhead: bool = True) -> tuple[float, float]:
    """(θ FLOP/s, o FLOPs) minimising ``Σ ((F_i + o)/θ / t_i − 1)²`` with ``θ > 0``, ``o ≥ 0``.

    Linear in ``x = (1/θ, o/θ)``: rows ``[F_i/t_i, 1/t_i] · x = 1``, solved by non-negative least squares.
    ``overhead=False`` (or fewer than two distinct FLOP counts, where ``o`` cannot be told from ``θ``) fits
    ``θ`` alone, ``o = 0``: ``1/θ = Σ(F/t) / Σ(F/t)²``.

    Raises:
        CalibrationError: no point, or times that do not grow with the FLOPs (no positive throughput fits).
    """
    f, t = np.asarray(flops, float), np.asarray(step_s, float)
    if f.size == 0:
        raise CalibrationError("no measurement to fit")
    if overhead and np.unique(f).size >= 2:
        a, b = _scaled_nnls(np.stack([f / t, 1.0 / t], axis=1), np.ones_like(t))
    else:
        x = f / t
        a, b = float(x.sum() / (x * x).sum()), 0.0
    if not a > 0:
        raise CalibrationError("the step times do not grow with the configurations' FLOPs: no positive "
                               "throughput fits them (all time would be per-iteration overhead)")
    return float(1.0 / a), float(b / a)


def fit_memory(tensors: Sequence[float], peak: Sequence[float]) -> tuple[float, float, bool]:
    """(allocator factor a ≥ 1, runtime bytes b ≥ 0, whether a was fitted) minimising ``Σ ((a T_i + b)/M_i − 1)²``.

    With ``a = 1 + a'``: rows ``[T_i/M_i, 1/M_i] · (a', b) = 1 − T_i/M_i``, non-negative least squares. With fewer
    than two distinct tensor peaks ``a`` cannot be told from ``b``: ``a = 1`` and ``b`` alone is fitted.

    Raises:
        CalibrationError: no point.
    """
    tt, mm = np.asarray(tensors, float), np.asarray(peak, float)
    if tt.size == 0:
        raise CalibrationError("no memory measurement to fit")
    target = 1.0 - tt / mm
    if np.unique(tt).size >= 2:
        ap, b = _scaled_nnls(np.stack([tt / mm, 1.0 / mm], axis=1), target)
        return float(1.0 + ap), float(b), True
    (b,) = _scaled_nnls((1.0 / mm)[:, None], target)
    return 1.0, float(b), False


def _errors(pred: np.ndarray, meas: np.ndarray) -> dict[str, float]:
    err = pred / meas - 1.0
    return {"max_abs": float(np.abs(err).max()), "mean_abs": float(np.abs(err).mean())}


def fit_profile(rows: Sequence[Measurement], device_type: str | None = None, *, usable_ram_bytes: float | None = None,
                source: dict | None = None) -> Profile:
    """Fit a device type's profile to its measurements (every row, or the rows of ``device_type``).

    Time: :func:`fit_throughput` over all rows; memory: :func:`fit_memory` over the rows with ``peak_bytes``
    (none: the profile has no memory overheads). ``fit`` records every point (FLOPs, measured and fitted time,
    tensor bytes, measured and fitted peak), the relative errors (max and mean of |fitted / measured − 1|) and,
    with three or more distinct configurations, the leave-one-out time errors (each point predicted by the
    constants fitted on the others).

    Raises:
        CalibrationError: no rows, rows of several device types and no ``device_type``, no row of
            ``device_type``, rows measured in different power modes, or a fit that fails.
    """
    rows = list(rows)
    types = sorted({m.device_type for m in rows})
    if device_type is None:
        if len(types) != 1:
            raise CalibrationError(f"the measurements hold device types {', '.join(types) or 'none'}: "
                                   "name the one to profile (--device-type)")
        device_type = types[0]
    rows = [m for m in rows if m.device_type == device_type]
    if not rows:
        raise CalibrationError(f"no measurement of device type {device_type!r} (found: {', '.join(types)})")
    modes = sorted({m.power_mode or "" for m in rows})
    if len(modes) > 1:
        raise CalibrationError(f"device type {device_type!r}: measurements in different power modes "
                               f"({', '.join(x or '(blank)' for x in modes)}): one profile holds one mode")
    if usable_ram_bytes is not None and not (math.isfinite(usable_ram_bytes) and usable_ram_bytes > 0):
        raise CalibrationError(f"usable_ram_bytes must be a positive number of bytes, got {usable_ram_bytes!r}")
    ft = np.array([_flops_and_tensors(m) for m in rows])
    flops, tensors = ft[:, 0], ft[:, 1]
    t = np.array([m.step_s for m in rows])
    theta, overhead = fit_throughput(flops, t)
    t_fit = (flops + overhead) / theta
    fit: dict[str, Any] = {"n_points": len(rows), "time_error": _errors(t_fit, t),
                           "overhead_fitted": bool(np.unique(flops).size >= 2)}
    if np.unique(flops).size >= 3:
        loo = np.empty_like(t)
        for i in range(len(rows)):
            rest = np.arange(len(rows)) != i
            th, ov = fit_throughput(flops[rest], t[rest])
            loo[i] = (flops[i] + ov) / th
        fit["time_error_leave_one_out"] = _errors(loo, t)
    pure = fit_throughput(flops, t, overhead=False)[0]
    fit["pure_throughput_flops"] = pure
    fit["pure_time_error"] = _errors(flops / pure, t)
    with_mem = np.array([m.peak_bytes is not None for m in rows])
    alloc = runtime = None
    m_fit = np.full(len(rows), np.nan)
    if with_mem.any():
        peak = np.array([m.peak_bytes for m in rows], dtype=float)
        alloc, runtime, fitted = fit_memory(tensors[with_mem], peak[with_mem])
        m_fit = alloc * tensors + runtime
        fit["memory_error"] = _errors(m_fit[with_mem], peak[with_mem])
        fit["allocator_factor_fitted"] = fitted
        fit["n_memory_points"] = int(with_mem.sum())
    fit["points"] = [
        {"preset": m.preset, "batch": m.batch, "seq_len": m.seq_len, "sparsity": m.sparsity, "rank": m.rank,
         "targets": list(m.targets) if m.targets else None, "flops": float(flops[i]), "step_s": m.step_s,
         "fitted_step_s": float(t_fit[i]), "tensor_bytes": float(tensors[i]), "peak_bytes": m.peak_bytes,
         "fitted_peak_bytes": None if m.peak_bytes is None else float(m_fit[i])}
        for i, m in enumerate(rows)
    ]
    return Profile(device_type=device_type, throughput_flops=theta, iteration_overhead_flops=overhead,
                   power_mode=rows[0].power_mode, allocator_factor=alloc, runtime_bytes=runtime,
                   usable_ram_bytes=usable_ram_bytes, fit=fit, source=dict(source or {}))


# --------------------------------------------------------------------------------------------- profile files


def write_profile(profile: Profile, path: str | os.PathLike) -> Path:
    """Write ``profile`` as JSON (atomically: a temporary file, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(profile.to_json(), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def _positive(data: dict, key: str, where: str, *, zero_ok: bool = False, none_ok: bool = False,
              at_least: float | None = None) -> float | None:
    v = data.get(key)
    if v is None and none_ok:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or \
            (v < 0 if zero_ok else v <= 0) or (at_least is not None and v < at_least):
        what = f">= {at_least:g}" if at_least is not None else (">= 0" if zero_ok else "> 0")
        raise CalibrationError(f"{where}: {key}: expected a finite number {what}"
                               f"{' or null' if none_ok else ''}, got {v!r}")
    return float(v)


def load_profile(path: str | os.PathLike) -> Profile:
    """Read a device profile written by :func:`write_profile` (``simfed calibrate``).

    Raises:
        CalibrationError: a missing file, text that is not JSON, another format or version, or a field of the
            wrong type or out of range (naming the file and the field).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CalibrationError(f"{path}: no such profile file") from None
    except json.JSONDecodeError as exc:
        raise CalibrationError(f"{path}: not a JSON file ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
        raise CalibrationError(f"{path}: not a device profile (format must be {PROFILE_FORMAT!r})")
    if data.get("version") != PROFILE_VERSION:
        raise CalibrationError(f"{path}: version: expected {PROFILE_VERSION}, got {data.get('version')!r}")
    dtype = data.get("device_type")
    if not isinstance(dtype, str) or not dtype:
        raise CalibrationError(f"{path}: device_type: expected a non-empty string, got {dtype!r}")
    mode = data.get("power_mode")
    if mode is not None and (not isinstance(mode, str) or not mode):
        raise CalibrationError(f"{path}: power_mode: expected a mode name or null, got {mode!r}")
    for key in ("fit", "source"):
        if not isinstance(data.get(key, {}), dict):
            raise CalibrationError(f"{path}: {key}: expected a JSON object, got {data.get(key)!r}")
    return Profile(
        device_type=dtype,
        throughput_flops=_positive(data, "throughput_flops", str(path)),
        iteration_overhead_flops=_positive(data, "iteration_overhead_flops", str(path), zero_ok=True),
        power_mode=mode,
        allocator_factor=_positive(data, "allocator_factor", str(path), none_ok=True, at_least=1.0),
        runtime_bytes=_positive(data, "runtime_bytes", str(path), zero_ok=True, none_ok=True),
        usable_ram_bytes=_positive(data, "usable_ram_bytes", str(path), none_ok=True),
        fit=data.get("fit", {}),
        source=data.get("source", {}),
    )


# --------------------------------------------------------------------------------------------- this host


def _host_model(preset: str, seq_len: int, sparsity: float, rank: int, seed: int):
    """The accuracy layer's model of ``preset``, physically pruned to ``structure_at(sparsity)`` (a seeded random
    kept subset per layer, as importance would choose), LoRA of ``rank`` on all seven linears, in train mode.
    Returns (model, trainable parameters)."""
    import torch

    from simfed.accuracy.adapters import Kept
    from simfed.accuracy.lora import init_factors, load_factors
    from simfed.accuracy.prune import prune_model_to_kept

    if preset == "tiny":
        from simfed.accuracy.model import Model
        from simfed.accuracy.presets import preset as get_preset

        torch.manual_seed(seed)
        model = Model(get_preset("tiny"))
    else:
        from simfed.accuracy.smollm2 import load_smollm2

        model, _, _ = load_smollm2(max_seq_len=seq_len)
    model.freeze_base()
    model.train()
    shape = model.config.shape()
    st = structure_at(shape, sparsity)
    rng = np.random.default_rng(seed)
    kept = Kept(
        groups=[np.sort(rng.choice(shape.n_kv_heads, st.kv_groups, replace=False)) for _ in range(shape.n_layers)],
        channels=[np.sort(rng.choice(shape.d_ff, st.channels, replace=False)) for _ in range(shape.n_layers)],
    )
    prune_model_to_kept(model, Kept.full(shape), kept)
    factors = init_factors(shape, kept, rank, torch.Generator().manual_seed(seed))
    for key in factors.B:  # non-zero B, as after a few steps (PEFT's init has B = 0; cost does not care)
        factors.B[key] = torch.randn(factors.B[key].shape, generator=torch.Generator().manual_seed(seed)) * 0.01
    return model, load_factors(model, factors)


def _host_step(model, params, batch: int, seq_len: int, seed: int):
    """A closure running one local iteration as ``train.Trainer`` does: forward and loss, backward, the
    LoRA-gradient importance into its EMA, fused AdamW."""
    import torch

    from simfed.accuracy.prune import ImportanceEMA, lora_grad_scores

    vocab = model.config.shape().vocab_size
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randint(0, vocab, (batch, seq_len), generator=gen)
    y = torch.randint(0, vocab, (batch, seq_len), generator=gen)
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    ema = ImportanceEMA(0.9)

    def step() -> None:
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ema.update(lora_grad_scores(model))
        opt.step()

    return step


def _status_bytes(field_name: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {field_name}")


def _memory_probe(preset: str, batch: int, seq_len: int, sparsity: float, rank: int, threads: int, seed: int) -> int:
    """In a fresh process: the peak resident memory (bytes) of a process that built the configuration and ran a
    warm-up step and two more (``VmHWM``, reset after the model is built, so the peak is the training's)."""
    import gc

    import torch

    torch.set_num_threads(threads)
    model, params = _host_model(preset, seq_len, sparsity, rank, seed)
    step = _host_step(model, params, batch, seq_len, seed)
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass  # then VmHWM also holds the model's construction, which the resident weights dominate
    for _ in range(3):
        step()
    return _status_bytes("VmHWM")


def measure_host(preset: str = "tiny", *, batch: int | None = None, seq_len: int | None = None,
                 sparsities: Sequence[float] = (0.0, 0.25, 0.5), ranks: Sequence[int] = (2, 8, 32),
                 steps: int = 12, passes: int = 3, warmup: int = 3, threads: int = 1, clock: str = "cpu",
                 memory: bool = True, device_type: str = "host", seed: int = 0,
                 progress: Any = None) -> list[Measurement]:
    """Measure this host's step time (and peak memory) of ``preset`` over the (sparsity, rank) grid.

    Each configuration is the accuracy layer's real model, physically pruned, with LoRA on all seven linears,
    stepped as the trainer steps it (forward and loss, backward, LoRA-gradient importance, fused AdamW; fp32).
    ``batch`` and ``seq_len`` default to the trainer's (``TrainConfig``: 8 × 80). A point's step time is the
    fastest of ``steps`` timed steps (after ``warmup``) over ``passes`` passes over the grid, so a burst of load
    on a shared machine hits no point alone; ``clock="cpu"`` times the process's CPU time (``time.process_time``,
    which other jobs' load does not inflate; only with ``threads=1``, as it adds up every thread), ``"wall"`` the
    elapsed time. Memory (Linux): the peak resident memory (``VmHWM``) of a fresh process per point that built
    the configuration and ran three steps: the PyTorch runtime, the allocator's slack and the tensors together.
    ``progress`` (a callable taking a line of text) reports each point.

    Raises:
        CalibrationError: a preset this host cannot run, an empty grid, a sparsity outside [0, 1), a rank < 1,
            ``steps``/``passes``/``threads`` < 1, ``warmup`` < 0, an unknown clock, or CPU time with
            several threads.
    """
    if preset not in HOST_PRESETS:
        raise CalibrationError(f"--preset: this host can run {', '.join(HOST_PRESETS)} (the accuracy layer's "
                               f"models), not {preset!r}; measure other presets on a board and import the CSV")
    if not sparsities or not ranks:
        raise CalibrationError("the (sparsity, rank) grid is empty")
    for s in sparsities:
        if not (0.0 <= s < 1.0):
            raise CalibrationError(f"--sparsities: {s!r} is not in [0, 1)")
    for r in ranks:
        if int(r) != r or r < 1:
            raise CalibrationError(f"--ranks: {r!r} is not an integer >= 1")
    for name, v, lo in (("steps", steps, 1), ("passes", passes, 1), ("threads", threads, 1), ("warmup", warmup, 0)):
        if int(v) != v or v < lo:
            raise CalibrationError(f"--{name}: expected an integer >= {lo}, got {v!r}")
    if clock not in ("cpu", "wall"):
        raise CalibrationError(f"--clock: expected 'cpu' or 'wall', got {clock!r}")
    if clock == "cpu" and threads > 1:
        raise CalibrationError("--clock cpu adds up the CPU time of every thread: use --threads 1 or --clock wall")
    import torch

    from simfed.accuracy.train import TrainConfig

    train = TrainConfig()
    batch = train.batch_size if batch is None else int(batch)
    seq_len = train.seq_len if seq_len is None else int(seq_len)
    if batch < 1 or seq_len < 1:
        raise CalibrationError(f"--batch and --seq-len must be >= 1, got {batch}, {seq_len}")
    torch.set_num_threads(threads)
    timer = time.process_time if clock == "cpu" else time.perf_counter
    grid = [(float(s), int(r)) for s in sparsities for r in ranks]
    best = {k: math.inf for k in grid}
    for p in range(passes):
        for s, r in grid:  # a fresh model per point: one model in memory at a time
            model, params = _host_model(preset, seq_len, s, r, seed)
            step = _host_step(model, params, batch, seq_len, seed)
            for _ in range(warmup):
                step()
            for _ in range(steps):
                t0 = timer()
                step()
                best[(s, r)] = min(best[(s, r)], timer() - t0)
            del model, params, step
            if progress:
                progress(f"pass {p + 1}/{passes}: sparsity {s:g}, rank {r}: fastest step so far "
                         f"{1e3 * best[(s, r)]:.2f} ms")
    peaks: dict = {k: None for k in grid}
    if memory:
        if not Path("/proc/self/status").is_file():
            warnings.warn("no /proc/self/status on this host: peak memory is not measured", SimfedWarning, stacklevel=2)
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            ctx = multiprocessing.get_context("spawn")
            for s, r in grid:
                with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
                    job = pool.submit(_memory_probe, preset, batch, seq_len, s, r, threads, seed)
                    peaks[(s, r)] = float(job.result())
                if progress:
                    progress(f"memory: sparsity {s:g}, rank {r}: peak RSS {peaks[(s, r)] / 1e6:.1f} MB")
    return [Measurement(preset=preset, batch=batch, seq_len=seq_len, sparsity=s, rank=r, step_s=best[(s, r)],
                        device_type=device_type, peak_bytes=peaks[(s, r)], targets=None, weights_dtype="float32",
                        lora_dtype="float32", importance=True, power_mode=None)
            for s, r in grid]


def host_description(threads: int, clock: str) -> dict:
    """What the host measurement ran on (for a profile's ``source``)."""
    import torch

    info: dict[str, Any] = {"kind": "host", "machine": platform.machine(), "processor": platform.processor() or None,
                            "python": platform.python_version(), "torch": torch.__version__, "threads": threads,
                            "clock": clock, "cpu_count": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as fh:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), None)
    except OSError:
        pass
    try:
        info["load_average"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return info


# --------------------------------------------------------------------------------------------- traces


def apply_profiles(population, profiles: Iterable[Profile], names: Sequence[str] | None = None):
    """``population`` with each profile's device type recalibrated: every compute series of that type is scaled
    by one factor so that the type's fastest compute level equals the profile's throughput (the series keep
    their shape: power modes stay where they were), and the RAM becomes the profile's ``usable_ram_bytes`` when
    it has one. ``names`` (e.g. the profiles' paths) label them in the provenance.

    Raises:
        CalibrationError: two profiles of one device type, a device type the population does not have, or a
            profile measured in a named power mode (a trace directory does not say which level is which mode:
            give such a profile to the generator, whose modes are known).
    """
    profiles = list(profiles)
    names = list(names) if names is not None else [p.device_type for p in profiles]
    by_type: dict[str, tuple[Profile, str]] = {}
    present = sorted({d.device_type for d in population.devices})
    for prof, name in zip(profiles, names):
        if prof.device_type in by_type:
            raise CalibrationError(f"{name}: a second profile of device type {prof.device_type!r}")
        if prof.device_type not in present:
            raise CalibrationError(f"{name}: device type {prof.device_type!r} is not in the trace "
                                   f"(its types: {', '.join(present)})")
        if prof.power_mode is not None:
            raise CalibrationError(f"{name}: measured in power mode {prof.power_mode!r}; a trace directory does not "
                                   "say which compute level is which mode: give it to the generator "
                                   "(fedspine-testbed's profiles option) instead")
        by_type[prof.device_type] = (prof, name)
    factors = {}
    for dtype, (prof, _) in by_type.items():
        top = max(_max_rate(d.compute_flops) for d in population.devices if d.device_type == dtype)
        if not top > 0:
            raise CalibrationError(f"device type {dtype!r}: its compute series are zero throughout; nothing to scale")
        factors[dtype] = prof.throughput_flops / top
    devices = []
    for d in population.devices:
        hit = by_type.get(d.device_type)
        if hit is None:
            devices.append(d)
            continue
        prof = hit[0]
        ram = float(prof.usable_ram_bytes) if prof.usable_ram_bytes is not None else d.ram_bytes
        devices.append(replace(d, compute_flops=_scaled(d.compute_flops, factors[d.device_type]), ram_bytes=ram))
    meta = dict(population.meta)
    meta["calibrated"] = {t: {"profile": name, "throughput_flops": prof.throughput_flops, "scale": factors[t],
                              "usable_ram_bytes": prof.usable_ram_bytes} for t, (prof, name) in by_type.items()}
    return replace(population, devices=tuple(devices), meta=meta)


def _max_rate(series) -> float:
    """The largest rate of a series, or of a library reference (``scale`` × its base's largest)."""
    if hasattr(series, "base"):  # a reference into a trace library (traces.SeriesRef)
        return float(series.scale) * float(np.max(series.base.values))
    return float(np.max(series.values))


def _scaled(series, factor: float):
    """``series`` with every rate multiplied by ``factor`` (a library reference keeps its base: its scale changes)."""
    from simfed.timing.traces import Series

    if hasattr(series, "base"):
        return replace(series, scale=float(series.scale) * factor)
    return Series.make(series.times_s, series.values * factor, series.period_s)
