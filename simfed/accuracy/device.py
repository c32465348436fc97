"""Where and in which precision the accuracy layer computes (``train.device``, ``train.dtype``).

- **Device** (:func:`resolve_device`): ``cpu``, ``cuda`` (GPU 0), ``cuda:N``, ``mps`` (Apple GPUs) or
  ``auto`` (the first of CUDA, MPS, CPU that torch sees). Training, evaluation, pruning and
  aggregation all run there; batches are drawn on the CPU with each device's own generator and then
  copied over, so *which* windows a simulated device trains on never depends on the hardware.
- **Precision** (:class:`Precision`): ``float32`` (everything fp32), or mixed precision with
  ``bfloat16`` / ``float16``: the frozen base weights are stored in that type and the forward runs
  under :func:`torch.autocast`, while the LoRA factors, their gradients, the AdamW moments, the
  importance scores and the loss stay float32 (the usual mixed-precision recipe, Micikevicius et al.,
  arXiv 1710.03740). ``float16`` adds a dynamic loss scaler (:class:`torch.amp.GradScaler`), since
  fp16 gradients underflow; bf16 has fp32's exponent range and needs none.
- **Determinism** (:func:`deterministic`): on CPU the same seed gives bit-identical results; on CUDA
  the trainer runs with ``torch.use_deterministic_algorithms(True, warn_only=True)`` and cuBLAS's
  fixed workspace (``CUBLAS_WORKSPACE_CONFIG=:4096:8``), so kernels with a deterministic variant use it
  and the others warn (docs/accuracy.md, "Devices, precision and determinism").
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import ContextManager, Iterator

import torch

from simfed.errors import SimfedError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class DeviceUnavailable(SimfedError, ValueError):
    """The requested device or precision does not exist on this machine (a user error: change train.device / train.dtype)."""


def check_device_name(name: str) -> None:
    """Syntax only (no hardware query): ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; ``ValueError`` otherwise."""
    if not isinstance(name, str) or not _DEVICE_RE.match(name):
        raise ValueError(f"unknown device {name!r}; use one of {', '.join(DEVICE_CHOICES)} (N: a GPU index)")


def check_dtype_name(name: str) -> None:
    """``float32``, ``bfloat16`` or ``float16``; ``ValueError`` otherwise."""
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def resolve_device(name: str) -> torch.device:
    """The torch device ``name`` means here.

    ``auto`` picks CUDA GPU 0 when torch sees one, else MPS, else the CPU. Raises
    :class:`DeviceUnavailable` naming what torch sees when an explicit ``cuda``, ``cuda:N`` or ``mps``
    is not available, and ``ValueError`` for a name that is none of these.
    """
    check_device_name(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", 0)
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not _mps_available():
            raise DeviceUnavailable("device 'mps': torch sees no Apple MPS device on this machine (use 'cpu' or 'auto')")
        return torch.device("mps")
    index = int(name.split(":")[1]) if ":" in name else 0
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise DeviceUnavailable(f"device {name!r}: torch {torch.__version__} ({build}) sees no CUDA GPU (use 'cpu' or 'auto')")
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceUnavailable(f"device {name!r}: torch sees {count} CUDA GPU(s), indices 0..{count - 1}")
    return torch.device("cuda", index)


def _dtype_supported(device: torch.device, dtype: torch.dtype) -> str | None:
    """``None`` when ``device`` can train in ``dtype`` under autocast, else why not."""
    if dtype == torch.float32:
        return None
    if not torch.amp.is_autocast_available(device.type):
        return f"torch has no autocast for {device.type}"
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        return f"GPU {torch.cuda.get_device_name(device)} has no bfloat16 support"
    if device.type == "mps":
        try:
            torch.ones(1, dtype=dtype, device=device)
        except (RuntimeError, TypeError) as exc:  # e.g. bf16 before macOS 14
            return f"mps cannot hold {dtype}: {exc}"
    return None


@dataclass(frozen=True)
class Precision:
    """A device and a compute dtype, with the autocast context and the loss scaler they need."""

    device: torch.device
    dtype: torch.dtype

    @property
    def mixed(self) -> bool:
        return self.dtype != torch.float32

    def autocast(self) -> ContextManager:
        """Around a forward pass: ``torch.autocast`` to :attr:`dtype`, a no-op for float32."""
        return torch.autocast(self.device.type, dtype=self.dtype) if self.mixed else nullcontext()

    def scaler(self) -> "torch.amp.GradScaler | None":
        """A fresh dynamic loss scaler for float16, ``None`` otherwise."""
        return torch.amp.GradScaler(self.device.type) if self.dtype == torch.float16 else None

    def describe(self) -> str:
        return f"{self.device} {str(self.dtype).removeprefix('torch.')}"


def resolve_precision(device: str, dtype: str) -> Precision:
    """:class:`Precision` for the names of ``train.device`` and ``train.dtype``.

    Raises :class:`DeviceUnavailable` when the device is absent or cannot compute in ``dtype``
    (e.g. bfloat16 on a GPU without it), ``ValueError`` for an unknown name.
    """
    dev = resolve_device(device)
    check_dtype_name(dtype)
    if dev.type == "cuda":  # read when cuBLAS makes its handle: set before the first matmul on the GPU
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    why = _dtype_supported(dev, DTYPES[dtype])
    if why is not None:
        raise DeviceUnavailable(f"dtype {dtype!r} on {dev}: {why} (use 'float32')")
    return Precision(dev, DTYPES[dtype])


@contextmanager
def deterministic(device: torch.device) -> Iterator[None]:
    """On CUDA: torch's deterministic algorithms (warn-only) for the duration; elsewhere nothing to do.

    CPU kernels are deterministic at a fixed thread count already. The previous global setting is
    restored on exit, so other code in the process is unaffected.
    """
    if device.type != "cuda":
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def cast_frozen(model: torch.nn.Module, precision: Precision) -> torch.nn.Module:
    """Move ``model`` to the device and store its parameters in the compute dtype, in place.

    Buffers (RoPE tables) stay float32 (cast at use), so positions keep full precision. Returns the
    same module object (checkpoints refer to it by identity).
    """
    model.to(precision.device)
    if precision.mixed:
        for p in model.parameters():
            p.data = p.data.to(precision.dtype)
    return model


__all__ = [
    "DEVICE_CHOICES",
    "DTYPES",
    "DeviceUnavailable",
    "Precision",
    "cast_frozen",
    "check_device_name",
    "check_dtype_name",
    "deterministic",
    "resolve_device",
    "resolve_precision",
]
