"""``fedspine-testbed-wifi``: the 80 Jetson boards behind *phones'* Wi-Fi (the first ``fedspine-testbed``).

The population ``fedspine-testbed`` generated before its second version, kept unchanged (the same seed and
options give the same devices, byte for byte) so that the two can be compared:

- **compute**: GPU peak = CUDA cores × 2 FLOP per FMA × GPU clock cap of the current nvpmodel
  mode (× 2 for packed FP16 when ``precision="fp16"``), times an *effective-throughput factor*
  ``efficiency`` (default 0.3, an assumption that the second version replaces by a measurement);
- **power modes**: each board starts in a uniformly drawn documented nvpmodel mode of its type and
  switches to another at seeded random times (default mean holding time 5 min, on the slot grid);
- **Wi-Fi**: per-device mean down/up speeds drawn from the FLASH per-device speed distribution of
  19 *smartphones* measured in the wild (``speed_distri.json``; quantile table embedded in
  :mod:`simfed.timing.generators.fedspine_testbed`), and every slot draws Normal(mean, cv × mean)
  as FLASH samples a speed per transfer: no persistence from one 60-s slot to the next;
- **latency**: one-way, uniform in [2, 10] ms; **RAM**: the nominal 8 / 8 / 32 GiB;
- **availability**: always online unless ``online_share < 1``.

``fedspine-testbed`` (v2) replaces the unmeasured efficiency by one derived from a measurement, makes
power modes multipliers on each board's own speed that switch rarely, gives each board a link rate set
by its placement that persists across the run (with slow jitter) on shared access points, and subtracts
an operating-system reserve from the RAM. Sources of every number: ``traces/SCHEMA.md``.
"""

from __future__ import annotations

import numpy as np

from simfed.options import Annotated, Choices, OptionError, Range, check_arguments, signature_table
from simfed.timing.generators._network import on_access_points
from simfed.timing.generators._sampling import (
    LEVELS_5PCT,
    copula_uniforms,
    from_quantiles,
    lab_availability,
    positive_normal,
    split_counts,
)
from simfed.timing.generators.fedspine_testbed import (
    BOARDS,
    FLASH_DOWN_CV,
    FLASH_DOWN_KBPS_Q,
    FLASH_DOWN_UP_SPEARMAN,
    FLASH_UP_CV,
    FLASH_UP_KBPS_Q,
    MIX,
    peak_flops,
)
from simfed.timing.traces import DeviceTrace, Population, Series

NAME = "fedspine-testbed-wifi"


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
    """Build the phones'-Wi-Fi variant. ``n_devices`` (default 80) keeps the paper's 3 : 4 : 1 TX2/NX/AGX mix.

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
            availability = lab_availability(rng, duration_s, online_share, mean_online_s, f"{NAME} device {i}")
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
        "sources": "traces/SCHEMA.md#fedspine-testbed-wifi",
    }
    shared, aps = on_access_points(devices, access_points, ap_downlink_bytes_s, ap_uplink_bytes_s, ap_duplex)
    return Population(shared, meta, aps)


OPTIONS = signature_table(generate, f"generator {NAME!r}")
