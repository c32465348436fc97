"""``fedspine-testbed`` (v2): the 80-board Jetson lab of FedSpine (arXiv 2501.02438, §experiments).

The paper ran on 30 Jetson TX2, 40 Jetson Xavier NX and 10 Jetson AGX Xavier boards, with dynamic
heterogeneity from power-mode switches and Wi-Fi. It publishes neither traces nor throughputs, so this
generator rebuilds the lab from the boards' specifications and one public measurement (every number and
its source: ``traces/SCHEMA.md``, section ``fedspine-testbed``):

- **compute**: each board type's effective training throughput at its maximum power mode is a share of its
  peak. ``precision="fp32"`` (the default): ``efficiency`` (0.5) × the FP32 CUDA-core peak (cores × 2 FLOP
  per FMA × GPU clock). 0.5 is what the one public measurement gives: FedAdapter's BERT-base fine-tuning on
  a TX2 (fp32, batch 4 × 256 tokens, 1.70 s per batch) reaches 0.32 TFLOP/s of its 0.67 TFLOP/s peak. FP32 is
  the default because it is the precision of that measurement, so only the TX2 : NX : AGX ratios rest on
  the specifications. ``precision="fp16"``: boards with tensor cores (NX, AGX) at ``tensor_core_efficiency``
  (0.25, an assumption) × their tensor-core peak (tensor cores × 64 FMA × 2 × clock); the TX2, which has none,
  at ``efficiency`` × its packed-half peak (2 × FP32). ``compute_spread`` raises each type's ratio to the
  TX2 to a power (0: every type as fast as a TX2; 1: the specifications; 2: the squares);
- **power modes**: a multiplier on the board's own speed, the GPU-clock ratio of the current nvpmodel mode
  to the maximum mode's. At seeded random times (on average every ``mode_hold_s``, default 30 min: rare) the
  board draws its mode afresh: its maximum mode with probability ``max_mode_share`` (0.5), else one of its
  other documented modes uniformly; the long-run share of each mode is exactly that distribution;
- **network**: each board's link rate is set once by its placement, log-uniform over
  [``link_min_bytes_s``, ``link_max_bytes_s``] (1–10 MB/s, the two fixed bandwidths FeS runs its Jetson
  experiments at), the same both ways, and persists for the whole run; on it, slow multiplicative jitter per
  slot and direction, log-normal with mean 1 and coefficient of variation ``link_jitter`` (0.1) following an
  AR(1) with slot-to-slot correlation ``link_jitter_corr`` (0.9 per 60-s slot). The boards share
  ``access_points`` half-duplex access points (4, round-robin, so each holds 20 boards of every type) of
  ``ap_downlink_bytes_s`` (25 MB/s) each: what varies most is who else transmits (docs/timing.md §4);
- **latency**: one-way, uniform in [2, 10] ms (an assumption for a lab Wi-Fi LAN);
- **RAM**: usable memory = the RAM Linux sees on the board (tegrastats' total: the module's RAM less the
  firmware and GPU carve-outs) less an operating-system reserve (``os_reserve_bytes``; default per type);
- **profiles**: ``profiles={tx2 = "tx2.json"}`` replaces a board type's spec-derived throughput (and, when
  the profile has one, its usable RAM) with a device profile from ``simfed calibrate`` (docs/timing.md §8);
- **availability**: always online (a lab) unless ``online_share < 1`` asks for on/off sessions.

Series are ``duration_s`` long (default one hour in 60-s slots) and the replay cycles them. The first version
of this population (phones' Wi-Fi, an unmeasured 0.3 efficiency) is ``fedspine-testbed-wifi``.
"""

from __future__ import annotations

import math
import os

import numpy as np

from simfed.options import Annotated, Choices, OptionError, Range, check_arguments, signature_table
from simfed.timing.generators._network import on_access_points
from simfed.timing.generators._sampling import compress_steps, lab_availability, split_counts
from simfed.timing.traces import DeviceTrace, Population, Series

NAME = "fedspine-testbed"
GIB = 1024**3
MIB = 1024**2

# Board specifications. GPU clocks are the nvpmodel mode caps in MHz (sources: traces/SCHEMA.md).
# TX2: NVIDIA L4T power-management guide / jetsonhacks nvpmodel table (MAXN 1.30 GHz, MAXQ 0.85, MAXP 1.12).
# Xavier NX: 384 CUDA cores, 48 tensor cores, max GPU clock 1100 MHz (module data sheet DA-09366-001); 10 W
#   modes cap the GPU at 800 MHz, 15 W modes at 1100 MHz (L4T Xavier power-management guide).
# AGX Xavier: 512 CUDA cores, 64 tensor cores; MAXN 1377 MHz, 10 W 520 MHz, 15 W 670 MHz, 30 W 900 MHz (L4T
#   guide; the board's devfreq table lists 522.75 / 675.75 / 905.25 / 1377 MHz steps).
# ram_bytes: the module's nominal RAM (data sheets). visible_ram_bytes: the total tegrastats reports, i.e.
#   what Linux sees after the carve-outs: TX2 7850 MiB, Xavier NX 7772 MiB, AGX Xavier 31919 MiB.
BOARDS: dict[str, dict] = {
    "tx2": {
        "cuda_cores": 256,
        "tensor_cores": 0,
        "ram_bytes": 8 * GIB,
        "visible_ram_bytes": 7850 * MIB,
        "max_mode": "MAXN",
        "modes": {"MAXN": 1300.0, "MAXQ": 850.0, "MAXP_CORE_ALL": 1120.0, "MAXP_CORE_ARM": 1120.0, "MAXP_CORE_DENVER": 1120.0},
    },
    "xavier-nx": {
        "cuda_cores": 384,
        "tensor_cores": 48,
        "ram_bytes": 8 * GIB,
        "visible_ram_bytes": 7772 * MIB,
        "max_mode": "MODE_15W_6CORE",
        "modes": {"MODE_10W_2CORE": 800.0, "MODE_10W_4CORE": 800.0, "MODE_15W_2CORE": 1100.0, "MODE_15W_4CORE": 1100.0, "MODE_15W_6CORE": 1100.0},
    },
    "agx-xavier": {
        "cuda_cores": 512,
        "tensor_cores": 64,
        "ram_bytes": 32 * GIB,
        "visible_ram_bytes": 31919 * MIB,
        "max_mode": "MAXN",
        "modes": {"MAXN": 1377.0, "MODE_10W": 520.0, "MODE_15W": 670.0, "MODE_30W_ALL": 900.0},
    },
}
MIX = {"tx2": 30, "xavier-nx": 40, "agx-xavier": 10}  # the paper's 80-board platform

#: Operating-system reserve per board type: the RAM an idle board already uses. TX2: 1645 and 1685 MiB in two
#: published tegrastats readings of idle TX2s running L4T's Ubuntu (mean 1665 MiB). Xavier NX and AGX Xavier:
#: the same, an assumption (the same L4T Ubuntu userland; no reading of an idle board was used).
OS_RESERVE_BYTES: dict[str, float] = {"tx2": 1665.0 * MIB, "xavier-nx": 1665.0 * MIB, "agx-xavier": 1665.0 * MIB}

#: Share of the FP32 CUDA-core peak that training reaches: FedAdapter's TX2 measurement (:func:`fedadapter_tx2_share`
#: gives 0.49 for its all-layers point at the MAXN clock), rounded.
DEFAULT_EFFICIENCY = 0.5
#: Share of the tensor-core peak that FP16 training reaches: an assumption (half of the measured CUDA-core share,
#: as small LoRA batches and the elementwise work stay far from the tensor cores' peak), which gives the
#: TX2 : NX : AGX ≈ 1 : 2.5 : 4.2 at maximum modes that ``reference/testbed-sources.md`` estimates.
DEFAULT_TENSOR_CORE_EFFICIENCY = 0.25
TENSOR_CORE_FMA_PER_CLOCK = 64  # Volta: one 4x4x4 matrix FMA per tensor core per clock

# FedAdapter (UbiquitousLearning/FedAdapter, exps_data/draw.py @492f81f, latency_tx2_baseline): seconds per batch
# of BERT-base fine-tuning on a TX2, batch 4 x 256 tokens, fp32, with 0, 1, ..., 12 of the top encoder layers trained.
FEDADAPTER_TX2_S = (0.5325, 0.612, 0.696, 0.791, 0.883, 0.9713, 1.064, 1.156, 1.2465, 1.33, 1.419, 1.51, 1.7)
FEDADAPTER_BATCH, FEDADAPTER_SEQ = 4, 256

# FLASH speed_distri.json (PKU-Chengxu/FLASH @55cbede, 19 phones), per-device mean speeds in KB/s (FLASH divides
# bytes by 1024), at the 0, 5, ..., 100 % quantiles; median sigma/mean per direction. Used by the phones'-Wi-Fi
# variant (fedspine-testbed-wifi) and the phones generator, not by this population.
FLASH_DOWN_KBPS_Q = [2370.2, 3096.1, 3273.5, 3420.2, 3584.0, 3718.3, 3889.0, 4101.0, 4223.6, 4287.0, 4317.6,
                     4633.3, 5033.7, 6233.1, 7011.7, 7242.7, 7359.3, 7909.6, 9091.0, 10655.0, 17332.7]  # fmt: skip
FLASH_UP_KBPS_Q = [431.0, 641.2, 2002.2, 2483.8, 2597.7, 2702.9, 2854.3, 2984.0, 3046.1, 3213.5, 3285.7,
                   3606.0, 3712.1, 3946.7, 4577.0, 5037.9, 5340.9, 5671.8, 5849.7, 6314.3, 6635.4]  # fmt: skip
FLASH_DOWN_CV = 0.368
FLASH_UP_CV = 0.395
FLASH_DOWN_UP_SPEARMAN = 0.737  # rank correlation of a device's down and up means


def peak_flops(device_type: str, gpu_mhz: float, precision: str = "fp32") -> float:
    """CUDA-core peak (FLOP/s): CUDA cores × 2 FLOP per FMA × clock (MHz), × 2 for packed FP16.

    Raises ``KeyError`` for a device type not in :data:`BOARDS`.
    """
    per_clock = 2.0 * BOARDS[device_type]["cuda_cores"] * (2.0 if precision == "fp16" else 1.0)
    return per_clock * gpu_mhz * 1e6


def tensor_core_peak_flops(device_type: str, gpu_mhz: float) -> float:
    """Tensor-core FP16 peak (FLOP/s): tensor cores × 64 FMA × 2 FLOP × clock (MHz); 0 for a board without them."""
    return 2.0 * TENSOR_CORE_FMA_PER_CLOCK * BOARDS[device_type]["tensor_cores"] * gpu_mhz * 1e6


def max_mode_throughput(device_type: str, precision: str = "fp32", efficiency: float = DEFAULT_EFFICIENCY,
                        tensor_core_efficiency: float = DEFAULT_TENSOR_CORE_EFFICIENCY) -> float:
    """Spec-derived effective training throughput (FLOP/s) of a board type at its maximum power mode.

    fp32: ``efficiency`` × the FP32 CUDA-core peak; fp16: ``tensor_core_efficiency`` × the tensor-core peak
    on boards that have tensor cores, else ``efficiency`` × the packed-half CUDA-core peak.
    """
    spec = BOARDS[device_type]
    mhz = spec["modes"][spec["max_mode"]]
    if precision == "fp16" and spec["tensor_cores"] > 0:
        return tensor_core_efficiency * tensor_core_peak_flops(device_type, mhz)
    return efficiency * peak_flops(device_type, mhz, precision)


def mode_multipliers(device_type: str) -> dict[str, float]:
    """Each nvpmodel mode's throughput relative to the board's maximum mode: the ratio of their GPU clock caps."""
    spec = BOARDS[device_type]
    top = spec["modes"][spec["max_mode"]]
    return {name: mhz / top for name, mhz in spec["modes"].items()}


def mode_weights(device_type: str, max_mode_share: float) -> dict[str, float]:
    """Long-run share of time in each mode: ``max_mode_share`` in the maximum mode, the rest uniform over the others."""
    spec = BOARDS[device_type]
    others = [m for m in spec["modes"] if m != spec["max_mode"]]
    rest = (1.0 - max_mode_share) / len(others)
    return {m: (max_mode_share if m == spec["max_mode"] else rest) for m in spec["modes"]}


def mean_mode_multiplier(device_type: str, max_mode_share: float) -> float:
    """Long-run mean of the power-mode multiplier of a board type (:func:`mode_weights` × :func:`mode_multipliers`)."""
    mult, w = mode_multipliers(device_type), mode_weights(device_type, max_mode_share)
    return float(sum(w[m] * mult[m] for m in mult))


def usable_ram_bytes(device_type: str, os_reserve_bytes: float | None = None) -> float:
    """RAM a training process can use (bytes): the RAM Linux sees less the OS reserve (default per type)."""
    reserve = OS_RESERVE_BYTES[device_type] if os_reserve_bytes is None else float(os_reserve_bytes)
    return float(BOARDS[device_type]["visible_ram_bytes"]) - reserve


def bert_base_step_flops(trained_layers: int, batch: int = FEDADAPTER_BATCH, seq_len: int = FEDADAPTER_SEQ) -> float:
    """Matmul FLOPs of one BERT-base fine-tuning step with the top ``trained_layers`` of 12 encoder layers trained.

    Per layer: linears of 4 d² + 2 d F weights (d = 768, F = 3072) cost 2 N × weights forward (N = batch × seq_len
    tokens), attention 4 B T² d forward (Q Kᵀ and P V); a trained layer's backward costs twice its forward (input
    and weight gradients), a frozen layer below the trained ones none. The classification head (< 0.01 %) and the
    elementwise work are left out.
    """
    d, f, n_layers = 768, 3072, 12
    n_tok = batch * seq_len
    forward = 2.0 * n_tok * (4 * d * d + 2 * d * f) + 4.0 * batch * seq_len * seq_len * d
    return n_layers * forward + 2.0 * trained_layers * forward


def fedadapter_tx2_share(trained_layers: int = 12, gpu_mhz: float = 1300.0) -> float:
    """Achieved FLOP/s of FedAdapter's TX2 measurement over the TX2's FP32 peak at ``gpu_mhz`` (MAXN by default)."""
    achieved = bert_base_step_flops(trained_layers) / FEDADAPTER_TX2_S[trained_layers]
    return achieved / peak_flops("tx2", gpu_mhz)


def _type_throughputs(precision: str, efficiency: float, tensor_core_efficiency: float, compute_spread: float,
                      profiles: dict) -> dict[str, float]:
    """Max-mode throughput per board type: spec-derived or from a profile, then the spread applied to the ratios."""
    base = {}
    for dtype in MIX:
        prof = profiles.get(dtype)
        if prof is None:
            base[dtype] = max_mode_throughput(dtype, precision, efficiency, tensor_core_efficiency)
        else:  # a profile's throughput was measured in its power mode (default: the maximum)
            mode = prof.power_mode or BOARDS[dtype]["max_mode"]
            base[dtype] = prof.throughput_flops / mode_multipliers(dtype)[mode]
    ref = base["tx2"]
    return {t: ref * (v / ref) ** compute_spread for t, v in base.items()}


def _load_profiles(profiles: dict | None) -> dict:
    if not profiles:
        return {}
    from simfed.timing.calibrate import CalibrationError, load_profile

    out = {}
    for dtype, path in profiles.items():
        if dtype not in BOARDS:
            raise OptionError(f"{NAME}: profiles.{dtype}: not a board type of this population "
                              f"(one of {', '.join(BOARDS)})")
        try:
            prof = load_profile(path)
        except CalibrationError as exc:
            raise OptionError(f"{NAME}: profiles.{dtype}: {exc}") from None
        if prof.device_type != dtype:
            raise OptionError(f"{NAME}: profiles.{dtype}: {os.fspath(path)} is a profile of device type "
                              f"{prof.device_type!r}, not {dtype!r}")
        if prof.power_mode is not None and prof.power_mode not in BOARDS[dtype]["modes"]:
            raise OptionError(f"{NAME}: profiles.{dtype}: {os.fspath(path)}: power_mode {prof.power_mode!r} is not a "
                              f"mode of {dtype} (one of {', '.join(BOARDS[dtype]['modes'])})")
        out[dtype] = prof
    return out


def _jitter(rng: np.random.Generator, n: int, n_slots: int, cv: float, corr: float) -> np.ndarray:
    """``(n, n_slots)`` log-normal factors of mean 1 and coefficient of variation ``cv``, AR(1) in the log with
    lag-1 correlation ``corr`` (stationary from the first slot)."""
    sigma = math.sqrt(math.log1p(cv * cv))
    z = np.empty((n, n_slots))
    z[:, 0] = rng.standard_normal(n)
    eps = rng.standard_normal((n, n_slots))
    innov = math.sqrt(max(0.0, 1.0 - corr * corr))
    for k in range(1, n_slots):
        z[:, k] = corr * z[:, k - 1] + innov * eps[:, k]
    return np.exp(sigma * z - 0.5 * sigma * sigma)


def generate(
    n_devices: Annotated[int | None, Range(ge=1)] = None,
    seed: Annotated[int, Range(ge=0)] = 0,
    duration_s: Annotated[float, Range(gt=0)] = 3600.0,
    *,
    slot_s: Annotated[float, Range(gt=0)] = 60.0,
    precision: Annotated[str, Choices("fp32", "fp16")] = "fp32",
    efficiency: Annotated[float, Range(gt=0, le=1)] = DEFAULT_EFFICIENCY,
    tensor_core_efficiency: Annotated[float, Range(gt=0, le=1)] = DEFAULT_TENSOR_CORE_EFFICIENCY,
    compute_spread: Annotated[float, Range(ge=0)] = 1.0,
    max_mode_share: Annotated[float, Range(ge=0, le=1)] = 0.5,
    mode_hold_s: Annotated[float, Range(gt=0)] = 1800.0,
    link_min_bytes_s: Annotated[float, Range(gt=0)] = 1e6,
    link_max_bytes_s: Annotated[float, Range(gt=0)] = 10e6,
    link_jitter: Annotated[float, Range(ge=0)] = 0.1,
    link_jitter_corr: Annotated[float, Range(ge=0, le=1)] = 0.9,
    os_reserve_bytes: Annotated[float | None, Range(ge=0)] = None,
    profiles: dict[str, str | os.PathLike] | None = None,
    online_share: Annotated[float, Range(gt=0, le=1)] = 1.0,
    mean_online_s: Annotated[float, Range(gt=0)] = 1800.0,
    access_points: Annotated[int, Range(ge=0)] = 4,
    ap_downlink_bytes_s: Annotated[float, Range(gt=0)] = 25e6,
    ap_uplink_bytes_s: Annotated[float | None, Range(gt=0)] = None,
    ap_duplex: Annotated[str, Choices("half", "full")] = "half",
) -> Population:
    """Build the lab. ``n_devices`` (default 80) keeps the paper's 3 : 4 : 1 TX2/NX/AGX mix.

    Every option's type and range is declared in the signature (:data:`OPTIONS`); their meaning and
    sources are in the module docstring and ``traces/SCHEMA.md``. A study varies the compute spread with
    ``compute_spread`` (and ``precision``, ``max_mode_share``), the network's persistence with
    ``link_jitter`` and ``link_jitter_corr``, and the contention with ``access_points`` and
    ``ap_downlink_bytes_s``. ``profiles`` maps a board type to a device-profile file (a path, relative to
    the current directory) whose throughput and usable RAM replace the spec-derived ones.

    Raises:
        OptionError: an option of the wrong type or out of its range, a duration that is not a whole
            number of slots, ``link_min_bytes_s > link_max_bytes_s``, a board left without usable RAM by
            ``os_reserve_bytes``, a profile file that is missing or malformed
            (:func:`simfed.timing.calibrate.load_profile`), or one that is not for the board type it is given for.
    """
    check_arguments(OPTIONS, locals(), f"{NAME}: ")
    n_slots = int(round(duration_s / slot_s))
    if n_slots < 1 or abs(n_slots * slot_s - duration_s) > 1e-9 * duration_s:
        raise OptionError(f"{NAME}: duration_s: {duration_s:g} s is not a whole number of slot_s = {slot_s:g} s slots")
    if link_min_bytes_s > link_max_bytes_s:
        raise OptionError(f"{NAME}: link_min_bytes_s ({link_min_bytes_s:g}) must not exceed "
                          f"link_max_bytes_s ({link_max_bytes_s:g})")
    loaded = _load_profiles(profiles)
    ram = {}
    for dtype in BOARDS:
        prof = loaded.get(dtype)
        if prof is not None and prof.usable_ram_bytes is not None:
            ram[dtype] = prof.usable_ram_bytes
        else:
            ram[dtype] = usable_ram_bytes(dtype, os_reserve_bytes)
        if ram[dtype] <= 0:
            raise OptionError(f"{NAME}: os_reserve_bytes: {os_reserve_bytes:g} leaves a {dtype} no usable RAM "
                              f"(it sees {BOARDS[dtype]['visible_ram_bytes']:g} bytes)")
    top = _type_throughputs(precision, efficiency, tensor_core_efficiency, compute_spread, loaded)

    n_total = sum(MIX.values()) if n_devices is None else int(n_devices)
    counts = split_counts(n_total, MIX)
    rng = np.random.default_rng(seed)
    times = np.arange(n_slots) * slot_s
    switch_p = min(1.0, slot_s / mode_hold_s)

    # network: a persistent link rate per board (placement), then slow jitter per direction
    link = np.exp(rng.uniform(math.log(link_min_bytes_s), math.log(link_max_bytes_s), n_total))
    latency = rng.uniform(0.002, 0.010, n_total)
    down = link[:, None] * _jitter(rng, n_total, n_slots, link_jitter, link_jitter_corr)
    up = link[:, None] * _jitter(rng, n_total, n_slots, link_jitter, link_jitter_corr)

    devices = []
    i = 0
    for dtype, count in counts.items():
        mult = mode_multipliers(dtype)
        weights = mode_weights(dtype, max_mode_share)
        names = list(BOARDS[dtype]["modes"])
        levels = top[dtype] * np.array([mult[m] for m in names])
        p = np.array([weights[m] for m in names])
        # each board: a stationary first mode, then at each slot a fresh draw with probability slot/hold
        first = rng.choice(len(names), size=count, p=p)
        switches = rng.random((count, n_slots)) < switch_p
        draws = rng.choice(len(names), size=(count, n_slots), p=p)
        for j in range(count):
            mode = np.empty(n_slots, dtype=int)
            mode[0] = first[j]
            for k in range(1, n_slots):
                mode[k] = draws[j, k] if switches[j, k] else mode[k - 1]
            t_c, v_c = compress_steps(times, levels[mode])
            t_d, v_d = compress_steps(times, down[i])
            t_u, v_u = compress_steps(times, up[i])
            availability = lab_availability(rng, duration_s, online_share, mean_online_s, f"{NAME} device {i}")
            devices.append(
                DeviceTrace(
                    device_id=f"{dtype}-{i:03d}",
                    device_type=dtype,
                    compute_flops=Series.make(t_c, v_c, duration_s),
                    down_bps=Series.make(t_d, v_d, duration_s),
                    up_bps=Series.make(t_u, v_u, duration_s),
                    latency_s=float(latency[i]),
                    ram_bytes=float(ram[dtype]),
                    availability=availability,
                )
            )
            i += 1
    meta = {
        "generator": NAME,
        "version": 2,
        "seed": seed,
        "n_devices": n_total,
        "params": {
            "duration_s": duration_s, "slot_s": slot_s, "precision": precision, "efficiency": efficiency,
            "tensor_core_efficiency": tensor_core_efficiency, "compute_spread": compute_spread,
            "max_mode_share": max_mode_share, "mode_hold_s": mode_hold_s, "link_min_bytes_s": link_min_bytes_s,
            "link_max_bytes_s": link_max_bytes_s, "link_jitter": link_jitter, "link_jitter_corr": link_jitter_corr,
            "os_reserve_bytes": os_reserve_bytes,
            "profiles": {k: os.fspath(v) for k, v in profiles.items()} if profiles else None,
            "online_share": online_share, "mean_online_s": mean_online_s, "access_points": access_points,
            "ap_downlink_bytes_s": ap_downlink_bytes_s, "ap_uplink_bytes_s": ap_uplink_bytes_s, "ap_duplex": ap_duplex,
        },  # fmt: skip
        "max_mode_flops": {t: top[t] for t in counts},
        "usable_ram_bytes": {t: ram[t] for t in counts},
        "sources": "traces/SCHEMA.md#fedspine-testbed",
    }
    shared, aps = on_access_points(devices, access_points, ap_downlink_bytes_s, ap_uplink_bytes_s, ap_duplex)
    return Population(shared, meta, aps)


OPTIONS = signature_table(generate, f"generator {NAME!r}")
