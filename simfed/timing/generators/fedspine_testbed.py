"""``fedspine-testbed``: the 80-board Jetson platform of FedSpine (arXiv 2501.02438, §experiments).

The paper ran on 30 Jetson TX2, 40 Jetson Xavier NX and 10 Jetson AGX Xavier boards, with
dynamic heterogeneity from power-mode switches and Wi-Fi bandwidth that varies per device and
over time. The paper publishes neither traces nor throughputs, so this generator rebuilds the
platform from public hardware specifications (sources in ``traces/SCHEMA.md``):

- **compute**: GPU peak = CUDA cores × 2 FLOP per FMA × GPU clock cap of the current nvpmodel
  mode (× 2 for packed FP16 when ``precision="fp16"``), times an *effective-throughput factor*
  (the share of peak that small-batch LoRA training achieves; an assumption, default 0.3, to be
  calibrated against host measurements by the cost model);
- **power modes**: each board starts in a random documented nvpmodel mode of its type and switches
  to another at seeded random times (exponential holding time, default mean 5 min, on the slot grid);
- **Wi-Fi**: per-device mean down/up speeds drawn from the FLASH per-device speed distribution
  (``speed_distri.json``, 19 measured phones on Wi-Fi; quantile table embedded), with per-slot
  fluctuation Normal(mean, cv × mean) as FLASH samples it, cv = FLASH's median sigma/mean;
- **latency**: one-way LAN latency, uniform in [2, 10] ms (assumption: a lab Wi-Fi LAN);
- **RAM**: TX2 8 GB, Xavier NX 8 GB, AGX Xavier 32 GB (NVIDIA module specifications, GiB);
- **availability**: always online (a lab testbed) unless ``online_share < 1`` asks for on/off sessions.

Series are ``duration_s`` long (default one hour in 60-s slots) and the replay cycles them.
"""

from __future__ import annotations

import numpy as np

from simfed.timing.generators._network import on_access_points
from simfed.options import Annotated, Choices, OptionError, Range, check_arguments, signature_table
from simfed.timing.generators._sampling import (
    LEVELS_5PCT,
    alternating_sessions,
    copula_uniforms,
    from_quantiles,
    positive_normal,
    split_counts,
)
from simfed.timing.traces import Availability, DeviceTrace, Population, Series

NAME = "fedspine-testbed"
GIB = 1024**3

# Board specifications. GPU clocks are the nvpmodel mode caps in MHz.
# TX2: NVIDIA L4T power-management guide / jetsonhacks nvpmodel table (MAXN 1.30 GHz, MAXQ 0.85, MAXP 1.12).
# Xavier NX: 384 CUDA cores, max GPU clock 1100 MHz (module data sheet DA-09366-001); 10 W modes cap the
#   GPU at 800 MHz, 15 W / 20 W modes at 1100 MHz (L4T Xavier power-management guide).
# AGX Xavier: 512 CUDA cores; MAXN 1377 MHz, 10 W 520 MHz, 15 W 670 MHz, 30 W 900 MHz (L4T guide; the
#   board's devfreq table lists 522.75 / 675.75 / 905.25 / 1377 MHz steps).
BOARDS: dict[str, dict] = {
    "tx2": {
        "cuda_cores": 256,
        "ram_bytes": 8 * GIB,
        "modes": {"MAXN": 1300.0, "MAXQ": 850.0, "MAXP_CORE_ALL": 1120.0, "MAXP_CORE_ARM": 1120.0, "MAXP_CORE_DENVER": 1120.0},
    },
    "xavier-nx": {
        "cuda_cores": 384,
        "ram_bytes": 8 * GIB,
        "modes": {"MODE_10W_2CORE": 800.0, "MODE_10W_4CORE": 800.0, "MODE_15W_2CORE": 1100.0, "MODE_15W_4CORE": 1100.0, "MODE_15W_6CORE": 1100.0},
    },
    "agx-xavier": {
        "cuda_cores": 512,
        "ram_bytes": 32 * GIB,
        "modes": {"MAXN": 1377.0, "MODE_10W": 520.0, "MODE_15W": 670.0, "MODE_30W_ALL": 900.0},
    },
}
MIX = {"tx2": 30, "xavier-nx": 40, "agx-xavier": 10}  # the paper's 80-board platform

# FLASH speed_distri.json (PKU-Chengxu/FLASH @55cbede, 19 devices), per-device mean speeds in KB/s
# (FLASH divides bytes by 1024), at the 0, 5, ..., 100 % quantiles; median sigma/mean per direction.
FLASH_DOWN_KBPS_Q = [2370.2, 3096.1, 3273.5, 3420.2, 3584.0, 3718.3, 3889.0, 4101.0, 4223.6, 4287.0, 4317.6,
                     4633.3, 5033.7, 6233.1, 7011.7, 7242.7, 7359.3, 7909.6, 9091.0, 10655.0, 17332.7]  # fmt: skip
FLASH_UP_KBPS_Q = [431.0, 641.2, 2002.2, 2483.8, 2597.7, 2702.9, 2854.3, 2984.0, 3046.1, 3213.5, 3285.7,
                   3606.0, 3712.1, 3946.7, 4577.0, 5037.9, 5340.9, 5671.8, 5849.7, 6314.3, 6635.4]  # fmt: skip
FLASH_DOWN_CV = 0.368
FLASH_UP_CV = 0.395
FLASH_DOWN_UP_SPEARMAN = 0.737  # rank correlation of a device's down and up means


def peak_flops(device_type: str, gpu_mhz: float, precision: str = "fp32") -> float:
    """Peak GPU throughput: CUDA cores × 2 FLOP/FMA × clock (× 2 for packed FP16)."""
    per_clock = 2.0 * BOARDS[device_type]["cuda_cores"] * (2.0 if precision == "fp16" else 1.0)
    return per_clock * gpu_mhz * 1e6


def generate(
    n_devices: Annotated[int | None, Range(ge=1)] = None,
    seed: Annotated[int, Range(ge=0)] = 0,
    duration_s: Annotated[float, Range(gt=0)] = 3600.0,
    *,
    slot_s: Annotated[float, Range(gt=0)] = 60.0,
    mode_hold_s: Annotated[float, Range(gt=0)] = 300.0,
    efficiency: Annotated[float, Range(gt=0, le=1)] = 0.3,
    precision: Annotated[str, Choices("fp32", "fp16")] = "fp32",
    bandwidth_scale: Annotated[float, Range(gt=0)] = 1.0,
    online_share: Annotated[float, Range(gt=0, le=1)] = 1.0,
    mean_online_s: Annotated[float, Range(gt=0)] = 1800.0,
    access_points: Annotated[int, Range(ge=0)] = 0,
    ap_downlink_bytes_s: Annotated[float, Range(gt=0)] = 50e6,
    ap_uplink_bytes_s: Annotated[float | None, Range(gt=0)] = None,
    ap_duplex: Annotated[str, Choices("half", "full")] = "half",
) -> Population:
    """Build the testbed. ``n_devices`` (default 80) keeps the paper's 3 : 4 : 1 TX2/NX/AGX mix.

    Every option's type and range is declared in the signature (:data:`OPTIONS`); ``duration_s``
    must also be a whole number of ``slot_s`` slots.

    Raises:
        OptionError: an option of the wrong type, out of its range, or a duration that is not a
            whole number of slots.
    """
    check_arguments(OPTIONS, locals(), f"{NAME}: ")
    n_slots = int(round(duration_s / slot_s))
    if n_slots < 1 or abs(n_slots * slot_s - duration_s) > 1e-9 * duration_s:
        raise OptionError(f"{NAME}: duration_s: {duration_s:g} s is not a whole number of slot_s = {slot_s:g} s slots")
    n_total = sum(MIX.values()) if n_devices is None else int(n_devices)
    counts = split_counts(n_total, MIX)
    rng = np.random.default_rng(seed)
    times = np.arange(n_slots) * slot_s
    switch_p = min(1.0, slot_s / mode_hold_s)

    # per-device Wi-Fi means, down and up rank-correlated like FLASH's devices
    u_down, u_up = copula_uniforms(rng, n_total, 2 * np.sin(np.pi * FLASH_DOWN_UP_SPEARMAN / 6))
    down_mean = from_quantiles(u_down, FLASH_DOWN_KBPS_Q, LEVELS_5PCT, log=True) * 1024.0 * bandwidth_scale
    up_mean = from_quantiles(u_up, FLASH_UP_KBPS_Q, LEVELS_5PCT, log=True) * 1024.0 * bandwidth_scale
    down = positive_normal(rng, np.repeat(down_mean[:, None], n_slots, 1), FLASH_DOWN_CV * down_mean[:, None])
    up = positive_normal(rng, np.repeat(up_mean[:, None], n_slots, 1), FLASH_UP_CV * up_mean[:, None])
    latency = rng.uniform(0.002, 0.010, n_total)

    devices = []
    i = 0
    for dtype, count in counts.items():
        spec = BOARDS[dtype]
        mode_names = list(spec["modes"])
        clocks = np.array([spec["modes"][m] for m in mode_names])
        for _ in range(count):
            # power-mode schedule on the slot grid: switch with probability slot/hold, to a different mode
            mode = np.empty(n_slots, dtype=int)
            mode[0] = rng.integers(len(mode_names))
            switches = rng.random(n_slots) < switch_p
            jumps = rng.integers(1, max(len(mode_names), 2), n_slots)
            for k in range(1, n_slots):
                mode[k] = (mode[k - 1] + jumps[k]) % len(mode_names) if switches[k] else mode[k - 1]
            flops = np.array([peak_flops(dtype, c, precision) for c in clocks])[mode] * efficiency
            keep = np.ones(n_slots, dtype=bool)
            keep[1:] = flops[1:] != flops[:-1]
            if online_share < 1.0:
                starts, ends = alternating_sessions(rng, duration_s, online_share, mean_online_s)
                availability = Availability.make(starts, ends, duration_s, where=f"{NAME} device {i}")
            else:
                availability = Availability.always()
            devices.append(
                DeviceTrace(
                    device_id=f"{dtype}-{i:03d}",
                    device_type=dtype,
                    compute_flops=Series.make(times[keep], flops[keep], duration_s),
                    down_bps=Series.make(times, down[i], duration_s),
                    up_bps=Series.make(times, up[i], duration_s),
                    latency_s=float(latency[i]),
                    ram_bytes=float(spec["ram_bytes"]),
                    availability=availability,
                )
            )
            i += 1
    meta = {
        "generator": NAME,
        "seed": seed,
        "n_devices": n_total,
        "params": {
            "duration_s": duration_s, "slot_s": slot_s, "mode_hold_s": mode_hold_s, "efficiency": efficiency,
            "precision": precision, "bandwidth_scale": bandwidth_scale, "online_share": online_share,
            "mean_online_s": mean_online_s, "access_points": access_points,
            "ap_downlink_bytes_s": ap_downlink_bytes_s, "ap_uplink_bytes_s": ap_uplink_bytes_s, "ap_duplex": ap_duplex,
        },  # fmt: skip
        "sources": "traces/SCHEMA.md#fedspine-testbed",
    }
    shared, aps = on_access_points(devices, access_points, ap_downlink_bytes_s, ap_uplink_bytes_s, ap_duplex)
    return Population(shared, meta, aps)


OPTIONS = signature_table(generate, f"generator {NAME!r}")
