"""Shared access points for generated populations: the generators' ``access_points`` option.

Devices are spread over the access points round-robin in generation order, so with devices generated type by
type each access point gets a slice of every type; every access point has the same capacities. A lab testbed
(FedSpine's Jetsons) puts its boards on a few Wi-Fi access points; phones sit behind many.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from simfed.timing.traces import AccessPoint, DeviceTrace


def on_access_points(devices: Sequence[DeviceTrace], n_aps: int, downlink_bytes_s: float,
                     uplink_bytes_s: float | None, duplex: str) -> tuple[tuple[DeviceTrace, ...], dict[str, AccessPoint]]:
    """``devices`` put round-robin on ``n_aps`` access points named ``ap00``, ``ap01``, ... (none: unchanged).

    ``uplink_bytes_s`` None means the downlink capacity (and is ignored by a half-duplex access point, whose one
    capacity both directions share).
    """
    if n_aps <= 0:
        return tuple(devices), {}
    width = max(2, len(str(n_aps - 1)))
    names = [f"ap{i:0{width}d}" for i in range(n_aps)]
    up = downlink_bytes_s if uplink_bytes_s is None else uplink_bytes_s
    aps = {name: AccessPoint(name, float(downlink_bytes_s), float(up), duplex) for name in names}
    return tuple(replace(d, ap=names[i % n_aps]) for i, d in enumerate(devices)), aps
