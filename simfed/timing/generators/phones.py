"""``phones``: a cross-device population of smartphones, built from public measurement summaries.

Every number is a summary computed once from a public data set (sources and licences in
``traces/SCHEMA.md``); the data themselves are not embedded:

- **compute**: each phone gets an AI-Benchmark score drawn from the 2019 ranking's distribution
  (333 phones, via FLASH's ``raw_ai_benchmark_list.json``; quantile table below). Score → FLOP/s
  is a log-log fit through FLASH's *measured on-device training times* of its three phones
  (Nexus S, Redmi Note 7 Pro, Pixel 4; LEAF FEMNIST CNN, per-batch ms), whose FLOPs per batch are
  computed from the CNN's shapes (batch 10, training ≈ 3 × forward). Constant over time.
- **RAM**: drawn jointly with the score through a Gaussian copula (rank correlation 0.877 in the
  same 333 phones); RAM table = the phones' RAM counts.
- **network**: a share of phones (``cellular_share``) is on cellular, the rest on Wi-Fi.
  Wi-Fi: per-device mean down/up from FLASH ``speed_distri.json`` quantiles, per-slot
  Normal(mean, cv·mean) (FLASH's sampling). Cellular: per-second downlink series with the
  marginal distribution of 5Gophers' single-connection runs and their lag-1 persistence
  (Gaussian-copula AR(1)); uplink = downlink × ``cellular_up_ratio`` (5Gophers has no uplink;
  0.16 is the up/down ratio of Mahimahi's AT&T LTE traces). Latency: Wi-Fi uniform 5–25 ms
  (assumption); cellular = half a 5Gophers RTT drawn from its quantiles.
- **availability**: diurnal sessions over a one-day period. Online share per phone ~ Beta with mean
  0.408 and 1 + Poisson(1/3) sessions per day, the rate of FedScale's behaviour-trace example entry
  (211,625 s online in 8 sessions over its 6-day cycle); 60 % of sessions start in the 21:00–03:00
  charging window (FLASH/FedScale count a phone available while charging), the rest uniformly.

Large populations stream: devices are drawn in chunks of :data:`CHUNK_DEVICES` (one chunk's draws
in the order a whole population of that size used to draw them, so populations up to one chunk
are exactly what they always were) and :func:`stream` hands them to
:class:`~simfed.timing.tracefile.TraceWriter` one chunk at a time. Above :data:`CHUNK_DEVICES`
devices (or with ``library_size > 0``) the network series come from a **trace library**: a few hundred
base series per network type and direction, drawn once, that every phone replays from its own
random start offset (:class:`~simfed.timing.traces.SeriesRef`) -- a cellular phone one of the
per-second 5Gophers-like series, a Wi-Fi phone a per-slot Normal(1, cv) fluctuation pattern scaled
by its own FLASH mean (Normal(mu, cv mu) = mu x Normal(1, cv), so each phone's marginal distribution is
unchanged; phones now share fluctuation patterns, at different offsets, as clients sharing a set of
Mahimahi traces do). A phone then holds one small reference per direction (~80 bytes each in memory,
four numbers per direction in the packed replay) instead of up to 600 breakpoints per direction.
"""

from __future__ import annotations

import functools
from typing import Iterator

import numpy as np

from simfed.timing.generators._network import on_access_points
from simfed.options import Annotated, Choices, OptionError, Range, check_arguments, signature_table
from simfed.timing.generators._sampling import (
    LEVELS_5PCT,
    ar1_uniforms,
    copula_uniforms,
    from_categories,
    from_quantiles,
    positive_normal,
)
from simfed.timing.generators.fedspine_testbed import (
    FLASH_DOWN_CV,
    FLASH_DOWN_KBPS_Q,
    FLASH_DOWN_UP_SPEARMAN,
    FLASH_UP_CV,
    FLASH_UP_KBPS_Q,
)
from simfed.timing.traces import Availability, DeviceTrace, Population, PopulationStream, Series, SeriesRef

NAME = "phones"
DAY_S = 86400.0
CHUNK_DEVICES = 10_000  # devices drawn (and written) at a time
LIBRARY_SIZE_ABOVE_ONE_CHUNK = 300  # library_size used by default for populations larger than one chunk

# AI-Benchmark AI_Score of 333 phones (2019 ranking, via FLASH raw_ai_benchmark_list.json), 0..100 % by 5 %.
AI_SCORE_Q = [212.0, 518.2, 690.8, 851.8, 1059.2, 1775.0, 2588.0, 3149.2, 3849.0, 4466.2, 5063.0,
              5929.4, 6367.2, 7660.0, 10835.2, 18306.0, 22910.8, 25871.8, 26844.4, 31621.2, 76206.0]  # fmt: skip
# RAM of the same phones: GB value -> number of phones; and the Gaussian-copula correlation of (score, RAM)
# (Spearman 0.877 -> 2 sin(pi * 0.877 / 6) = 0.886).
RAM_GB_COUNTS = {0.5: 10, 0.75: 4, 1.0: 40, 1.5: 7, 2.0: 18, 3.0: 13, 4.0: 96, 6.0: 78, 8.0: 57, 10.0: 1, 12.0: 9}
SCORE_RAM_COPULA_RHO = 0.886

# FLASH's measured training time per batch of the LEAF FEMNIST CNN (ms) and the phones' AI_Score.
FLASH_TRAIN_ANCHORS = [("Google Nexus S", 383.0, 1642.0), ("Xiaomi Redmi Note 7 Pro", 6702.0, 588.0), ("Google Pixel 4", 33289.0, 179.0)]
FEMNIST_BATCH = 10  # LEAF's default FEMNIST batch size (assumption: FLASH's measurement used it)

# 5Gophers 01-Throughput, single-TCP-connection runs (Sprint/T-Mobile/Verizon, 1 Hz), Mbit/s by 5 %.
CELL_MBPS_Q = [0.0, 7.63, 11.84, 18.54, 23.7, 31.44, 38.47, 46.8, 59.75, 85.38, 146.81,
               178.25, 188.74, 199.23, 209.74, 230.68, 293.61, 367.01, 429.91, 471.84, 545.27]  # fmt: skip
CELL_LAG1 = 0.957  # median lag-1 autocorrelation of log throughput within a run
# 5Gophers 02-Round-Trip-Times, RTT in ms by 5 %.
CELL_RTT_MS_Q = [24.2, 36.4, 40.0, 43.9, 49.1, 58.8, 69.0, 75.4, 79.2, 82.0, 84.6,
                 86.5, 89.1, 92.0, 95.6, 99.0, 103.8, 113.0, 140.2, 164.5, 180.0]  # fmt: skip


def femnist_cnn_train_flops_per_sample() -> float:
    """Training FLOPs of one sample through LEAF's FEMNIST CNN (28×28×1 input, 62 classes).

    conv 5×5×32 (same) → pool 2 → conv 5×5×64 (same) → pool 2 → dense 2048 → dense 62;
    2 FLOPs per multiply-add, training ≈ 3 × forward (forward + backward to inputs and weights).
    """
    macs = 28 * 28 * 32 * 5 * 5 * 1 + 14 * 14 * 64 * 5 * 5 * 32 + 7 * 7 * 64 * 2048 + 2048 * 62
    return 3.0 * 2.0 * macs


def score_to_flops_fit() -> tuple[float, float]:
    """Least-squares fit ``log(flops) = a + b log(score)`` through FLASH's three measured phones."""
    per_batch = femnist_cnn_train_flops_per_sample() * FEMNIST_BATCH
    s = np.log([a[1] for a in FLASH_TRAIN_ANCHORS])
    f = np.log([per_batch / (a[2] / 1000.0) for a in FLASH_TRAIN_ANCHORS])
    b, a = np.polyfit(s, f, 1)
    return float(a), float(b)


def diurnal_sessions(rng: np.random.Generator, share: float, n_sessions: int) -> tuple[list[float], list[float]]:
    """Online intervals of one day on a one-minute grid (sessions may wrap past midnight)."""
    minutes = 1440
    online = np.zeros(minutes, dtype=bool)
    lengths = np.maximum(1, np.round(rng.dirichlet(np.ones(n_sessions)) * share * minutes)).astype(int)
    night = rng.random(n_sessions) < 0.6
    starts = np.where(night, (21 * 60 + rng.integers(0, 6 * 60, n_sessions)) % minutes, rng.integers(0, minutes, n_sessions))
    for s, n in zip(starts, lengths):
        online[(s + np.arange(n)) % minutes] = True
    edges = np.diff(np.concatenate([[0], online.astype(np.int8), [0]]))
    on_starts = np.flatnonzero(edges == 1) * 60.0
    on_ends = np.flatnonzero(edges == -1) * 60.0
    return on_starts.tolist(), on_ends.tolist()


def diurnal_sessions_batch(rng: np.random.Generator, shares: np.ndarray, n_sessions: np.ndarray,
                           batch: int = 2500) -> list[tuple[tuple[float, ...], tuple[float, ...]]]:
    """:func:`diurnal_sessions` for many phones at once: per phone, its (starts, ends) in seconds.

    The same model, drawn array-wise (a flat Dirichlet as normalised unit exponentials): session
    lengths split ``share`` of the day's 1,440 minutes, 60 % of sessions start in 21:00–03:00, the
    rest uniformly, sessions wrap past midnight and overlaps merge on the one-minute grid.
    """
    minutes = 1440
    m = shares.size
    total = int(n_sessions.sum())
    owner = np.repeat(np.arange(m), n_sessions)
    e = rng.standard_exponential(total)
    weight = e / np.bincount(owner, weights=e, minlength=m)[owner]
    lengths = np.maximum(1, np.round(weight * shares[owner] * minutes)).astype(np.int64)
    night = rng.random(total) < 0.6
    starts = np.where(night, (21 * 60 + rng.integers(0, 6 * 60, total)) % minutes, rng.integers(0, minutes, total))
    out: list = []
    first = np.concatenate([[0], np.cumsum(n_sessions)])
    for lo in range(0, m, batch):  # a (phones x 2 days) minute grid per batch: bounded memory
        hi = min(m, lo + batch)
        a, b = first[lo], first[hi]
        rows = owner[a:b] - lo
        width = 2 * minutes + 1  # session starts (+1) and ends (-1) on two days, then running sums
        flat = np.concatenate([rows * width + starts[a:b], rows * width + starts[a:b] + lengths[a:b]])
        sign = np.concatenate([np.ones(b - a), -np.ones(b - a)])
        cover = np.bincount(flat, weights=sign, minlength=(hi - lo) * width).reshape(hi - lo, width)
        cover = np.cumsum(cover[:, : 2 * minutes], axis=1)
        online = (cover[:, :minutes] + cover[:, minutes:]) > 0
        edges = np.diff(np.pad(online.astype(np.int8), ((0, 0), (1, 1))), axis=1)
        r_on, c_on = np.nonzero(edges == 1)
        r_off, c_off = np.nonzero(edges == -1)
        s_list, e_list = (c_on * 60.0).tolist(), (c_off * 60.0).tolist()
        bounds = np.concatenate([[0], np.cumsum(np.bincount(r_on, minlength=hi - lo))]).tolist()
        out.extend((tuple(s_list[bounds[k]:bounds[k + 1]]), tuple(e_list[bounds[k]:bounds[k + 1]]))
                   for k in range(hi - lo))
    return out


def _library(seed: int, size: int, n_slots: int, slot_s: float, duration_s: float, cellular_period_s: float,
             with_cellular: bool, with_wifi: bool) -> dict[str, dict[str, Series]]:
    """The base series: per direction ``wifi-NNN`` (Normal(1, cv) per slot) and ``cell-NNN`` (per-second, bytes/s).

    Drawn from ``numpy.random.default_rng([seed, 1])``, a stream apart from the phones' own draws.
    The uplink library's ``cell-NNN`` are the downlink's series (a phone's uplink scale is
    ``cellular_up_ratio``).
    """
    rng = np.random.default_rng([seed, 1])
    width = max(3, len(str(size - 1)))
    down: dict[str, Series] = {}
    up: dict[str, Series] = {}
    if with_wifi:
        times = np.arange(n_slots) * slot_s
        ones = np.ones(n_slots)
        for k in range(size):
            down[f"wifi-{k:0{width}d}"] = Series.make(times, positive_normal(rng, ones, FLASH_DOWN_CV), duration_s)
            up[f"wifi-{k:0{width}d}"] = Series.make(times, positive_normal(rng, ones, FLASH_UP_CV), duration_s)
    if with_cellular:
        n_steps = int(round(cellular_period_s))
        times = np.arange(n_steps, dtype=float)
        rates = from_quantiles(ar1_uniforms(rng, size, n_steps, CELL_LAG1), CELL_MBPS_Q) * 1e6 / 8
        for k in range(size):
            s = Series.make(times, rates[k], cellular_period_s)
            down[f"cell-{k:0{width}d}"] = up[f"cell-{k:0{width}d}"] = s
    return {"downlink": down, "uplink": up}


def stream(
    n_devices: Annotated[int | None, Range(ge=1)] = None,
    seed: Annotated[int, Range(ge=0)] = 0,
    duration_s: Annotated[float, Range(gt=0)] = 3600.0,
    *,
    slot_s: Annotated[float, Range(gt=0)] = 60.0,
    cellular_share: Annotated[float, Range(ge=0, le=1)] = 0.25,
    cellular_period_s: Annotated[float, Range(ge=1)] = 600.0,
    cellular_up_ratio: Annotated[float, Range(gt=0)] = 0.16,
    mean_online_share: Annotated[float, Range(gt=0, lt=1)] = 0.408,
    sessions_per_day: Annotated[float, Range(ge=1)] = 8 / 6,
    availability: bool = True,
    access_points: Annotated[int, Range(ge=0)] = 0,
    ap_downlink_bytes_s: Annotated[float, Range(gt=0)] = 50e6,
    ap_uplink_bytes_s: Annotated[float | None, Range(gt=0)] = None,
    ap_duplex: Annotated[str, Choices("half", "full")] = "half",
    library_size: Annotated[int | None, Range(ge=0)] = None,
) -> PopulationStream:
    """``n_devices`` phones (default 1,000) in chunks of :data:`CHUNK_DEVICES`. Wi-Fi series are ``duration_s`` long in ``slot_s`` slots.

    Every option's type and range is declared in the signature (:data:`OPTIONS`): the cellular
    series has one value per second over ``cellular_period_s`` (at least one second); a phone
    has at least one session a day (``sessions_per_day`` >= 1); ``duration_s`` holds at least one slot.
    ``library_size`` is the number of base series per network type and direction (0: every phone
    has its own series, as before; default: 0 up to :data:`CHUNK_DEVICES` phones,
    :data:`LIBRARY_SIZE_ABOVE_ONE_CHUNK` above).

    Raises:
        OptionError: an option of the wrong type or out of its range.
    """
    check_arguments(OPTIONS, locals(), f"{NAME}: ")
    n = 1000 if n_devices is None else int(n_devices)
    n_slots = int(round(duration_s / slot_s))
    if n_slots < 1:
        raise OptionError(f"{NAME}: duration_s: {duration_s:g} s is shorter than one slot of slot_s = {slot_s:g} s")
    lib_size = (0 if n <= CHUNK_DEVICES else LIBRARY_SIZE_ABOVE_ONE_CHUNK) if library_size is None else int(library_size)
    a, b = score_to_flops_fit()
    _, aps = on_access_points((), access_points, ap_downlink_bytes_s, ap_uplink_bytes_s, ap_duplex)
    ap_names = sorted(aps)  # ap00, ap01, ...: the round-robin order of on_access_points
    library = _library(seed, lib_size, n_slots, slot_s, duration_s, cellular_period_s,
                       cellular_share > 0, cellular_share < 1) if lib_size else {}
    params = dict(
        duration_s=duration_s, slot_s=slot_s, cellular_share=cellular_share, cellular_period_s=cellular_period_s,
        cellular_up_ratio=cellular_up_ratio, mean_online_share=mean_online_share, sessions_per_day=sessions_per_day,
        availability=availability, access_points=access_points, ap_downlink_bytes_s=ap_downlink_bytes_s,
        ap_uplink_bytes_s=ap_uplink_bytes_s, ap_duplex=ap_duplex)  # fmt: skip
    if lib_size:
        params["library_size"] = lib_size
    meta = {
        "generator": NAME,
        "seed": seed,
        "n_devices": n,
        "params": params,
        "score_to_flops": {"log_a": a, "b": b},
        "sources": "traces/SCHEMA.md#phones",
    }
    opts = dict(n_slots=n_slots, duration_s=duration_s, slot_s=slot_s, cellular_share=cellular_share,
                cellular_period_s=cellular_period_s, cellular_up_ratio=cellular_up_ratio,
                mean_online_share=mean_online_share, sessions_per_day=sessions_per_day, availability=availability,
                flops_fit=(a, b), ap_names=ap_names)

    def chunks() -> Iterator[tuple[DeviceTrace, ...]]:
        rng = np.random.default_rng(seed)
        for first in range(0, n, CHUNK_DEVICES):
            m = min(CHUNK_DEVICES, n - first)
            if lib_size:
                yield _library_chunk(rng, first, m, library, lib_size, **opts)
            else:
                yield _private_chunk(rng, first, m, **opts)

    return PopulationStream(chunks, n, meta, aps, library)


@functools.wraps(stream)
def generate(*args, **kwargs) -> Population:
    return stream(*args, **kwargs).population()


generate.__doc__ = """The whole population at once (:func:`stream`'s chunks collected); same options.

Raises:
    OptionError: an option of the wrong type or out of its range.
"""
generate.__annotations__ = {**stream.__annotations__, "return": Population}


def _phone_draws(rng: np.random.Generator, m: int, cellular_share: float, mean_online_share: float,
                 sessions_per_day: float, flops_fit: tuple[float, float]) -> dict:
    """The per-phone quantities of one chunk, in the draw order of the original whole-population generator."""
    u_score, u_ram = copula_uniforms(rng, m, SCORE_RAM_COPULA_RHO)
    score = from_quantiles(u_score, AI_SCORE_Q, LEVELS_5PCT, log=True)
    ram_bytes = from_categories(u_ram, list(RAM_GB_COUNTS), list(RAM_GB_COUNTS.values())) * 1024**3
    a, b = flops_fit
    flops = np.exp(a + b * np.log(score))
    cellular = rng.random(m) < cellular_share
    u_down, u_up = copula_uniforms(rng, m, 2 * np.sin(np.pi * FLASH_DOWN_UP_SPEARMAN / 6))
    down_mean = from_quantiles(u_down, FLASH_DOWN_KBPS_Q, LEVELS_5PCT, log=True) * 1024.0
    up_mean = from_quantiles(u_up, FLASH_UP_KBPS_Q, LEVELS_5PCT, log=True) * 1024.0
    return dict(ram_bytes=ram_bytes, flops=flops, cellular=cellular, down_mean=down_mean, up_mean=up_mean)


def _later_draws(rng: np.random.Generator, m: int, mean_online_share: float, sessions_per_day: float) -> dict:
    rtt_ms = from_quantiles(rng.random(m), CELL_RTT_MS_Q)
    wifi_latency = rng.uniform(0.005, 0.025, m)
    share_conc = 5.0  # Beta concentration (assumption): individual shares spread around the mean
    shares = rng.beta(mean_online_share * share_conc, (1 - mean_online_share) * share_conc, m)
    n_sessions = 1 + rng.poisson(max(sessions_per_day - 1.0, 0.0), m)
    return dict(rtt_ms=rtt_ms, wifi_latency=wifi_latency, shares=shares, n_sessions=n_sessions)


def _private_chunk(rng, first: int, m: int, *, n_slots, duration_s, slot_s, cellular_share, cellular_period_s,
                   cellular_up_ratio, mean_online_share, sessions_per_day, availability, flops_fit, ap_names):
    """Phones ``first .. first + m - 1``, each with its own network series (the original generator, per chunk)."""
    p = _phone_draws(rng, m, cellular_share, mean_online_share, sessions_per_day, flops_fit)
    cellular, down_mean, up_mean = p["cellular"], p["down_mean"], p["up_mean"]
    wifi_times = np.arange(n_slots) * slot_s
    n_cell_steps = int(round(cellular_period_s))
    cell_times = np.arange(n_cell_steps, dtype=float)
    n_cell = int(cellular.sum())
    cell_down = from_quantiles(ar1_uniforms(rng, n_cell, n_cell_steps, CELL_LAG1), CELL_MBPS_Q) * 1e6 / 8 if n_cell else None
    q = _later_draws(rng, m, mean_online_share, sessions_per_day)
    n_aps = len(ap_names)
    devices = []
    c = 0
    for i in range(m):
        if cellular[i]:
            down = Series.make(cell_times, cell_down[c], cellular_period_s)
            up = Series.make(cell_times, cell_down[c] * cellular_up_ratio, cellular_period_s)
            latency = q["rtt_ms"][i] / 2000.0
            dtype = "phone-cellular"
            c += 1
        else:
            down = Series.make(wifi_times, positive_normal(rng, np.full(n_slots, down_mean[i]), FLASH_DOWN_CV * down_mean[i]), duration_s)
            up = Series.make(wifi_times, positive_normal(rng, np.full(n_slots, up_mean[i]), FLASH_UP_CV * up_mean[i]), duration_s)
            latency = float(q["wifi_latency"][i])
            dtype = "phone-wifi"
        if availability:
            starts, ends = diurnal_sessions(rng, float(q["shares"][i]), int(q["n_sessions"][i]))
            avail = Availability.make(starts, ends, DAY_S, where=f"{NAME} device {first + i}")
        else:
            avail = Availability.always()
        devices.append(
            DeviceTrace(
                device_id=f"phone-{first + i:05d}",
                device_type=dtype,
                compute_flops=Series.constant(float(p["flops"][i])),
                down_bps=down,
                up_bps=up,
                latency_s=float(latency),
                ram_bytes=float(p["ram_bytes"][i]),
                availability=avail,
                ap=ap_names[(first + i) % n_aps] if n_aps else "",
            )
        )
    return tuple(devices)


def _library_chunk(rng, first: int, m: int, library: dict, lib_size: int, *, n_slots, duration_s, slot_s,
                   cellular_share, cellular_period_s, cellular_up_ratio, mean_online_share, sessions_per_day,
                   availability, flops_fit, ap_names):
    """Phones ``first .. first + m - 1`` replaying library series from random offsets (drawn array-wise)."""
    p = _phone_draws(rng, m, cellular_share, mean_online_share, sessions_per_day, flops_fit)
    q = _later_draws(rng, m, mean_online_share, sessions_per_day)
    base = rng.integers(0, lib_size, m)
    wifi_offset = rng.integers(0, n_slots, m) * slot_s  # on the slot grid
    cell_offset = rng.integers(0, int(round(cellular_period_s)), m).astype(float)  # whole seconds
    sessions = diurnal_sessions_batch(rng, q["shares"], q["n_sessions"]) if availability else None
    width = max(3, len(str(lib_size - 1)))
    down_lib, up_lib = library["downlink"], library["uplink"]
    compute = Series.constants(p["flops"], where=f"{NAME} compute")
    always = Availability.always()
    n_aps = len(ap_names)
    cellular = p["cellular"].tolist()
    down_mean, up_mean = p["down_mean"].tolist(), p["up_mean"].tolist()
    latency = np.where(p["cellular"], q["rtt_ms"] / 2000.0, q["wifi_latency"]).tolist()
    ram = p["ram_bytes"].tolist()
    devices = []
    for i, k in enumerate(base.tolist()):
        if cellular[i]:
            sid = f"cell-{k:0{width}d}"
            off = float(cell_offset[i])
            down = SeriesRef(down_lib[sid], off, 1.0, sid)
            up = SeriesRef(up_lib[sid], off, cellular_up_ratio, sid)
            dtype = "phone-cellular"
        else:
            sid = f"wifi-{k:0{width}d}"
            off = float(wifi_offset[i])
            down = SeriesRef(down_lib[sid], off, down_mean[i], sid)
            up = SeriesRef(up_lib[sid], off, up_mean[i], sid)
            dtype = "phone-wifi"
        devices.append(
            DeviceTrace(
                device_id=f"phone-{first + i:05d}",
                device_type=dtype,
                compute_flops=compute[i],
                down_bps=down,
                up_bps=up,
                latency_s=latency[i],
                ram_bytes=ram[i],
                availability=Availability(*sessions[i], DAY_S) if sessions is not None else always,
                ap=ap_names[(first + i) % n_aps] if n_aps else "",
            )
        )
    return tuple(devices)


OPTIONS = signature_table(generate, f"generator {NAME!r}")
