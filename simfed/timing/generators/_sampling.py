"""Small seeded sampling helpers shared by the trace generators.

Generators embed *summary tables* of public data (quantiles computed once from the raw files and
cited in ``traces/SCHEMA.md``), never the data themselves; these helpers turn such tables back
into samples: inverse-CDF interpolation, categorical tables, Gaussian copulas for correlated
quantities, AR(1) processes for temporally correlated series, and FLASH-style truncated normals.
Every function takes an explicit ``numpy.random.Generator``: no global random state.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr

from simfed.timing.traces import Availability

# the 21 probability levels (0, 5, ..., 100 %) at which the embedded quantile tables are given
LEVELS_5PCT = np.linspace(0.0, 1.0, 21)


def from_quantiles(u: np.ndarray, values, levels=LEVELS_5PCT, *, log: bool = False) -> np.ndarray:
    """Inverse CDF by linear interpolation in a quantile table (in log space if ``log``)."""
    v = np.asarray(values, dtype=float)
    if log:
        return np.exp(np.interp(u, levels, np.log(v)))
    return np.interp(u, levels, v)


def from_categories(u: np.ndarray, values, counts) -> np.ndarray:
    """Inverse CDF of a categorical table (``values`` with observed ``counts``)."""
    cdf = np.cumsum(np.asarray(counts, dtype=float))
    cdf /= cdf[-1]
    idx = np.searchsorted(cdf, u, side="right")
    return np.asarray(values, dtype=float)[np.minimum(idx, len(cdf) - 1)]


def copula_uniforms(rng: np.random.Generator, n: int, rho: float) -> tuple[np.ndarray, np.ndarray]:
    """Two uniform samples whose Gaussian copula has correlation ``rho``."""
    z1 = rng.standard_normal(n)
    z2 = rho * z1 + np.sqrt(1.0 - rho**2) * rng.standard_normal(n)
    return ndtr(z1), ndtr(z2)


def ar1_uniforms(rng: np.random.Generator, n_series: int, n_steps: int, phi: float) -> np.ndarray:
    """``(n_series, n_steps)`` uniforms from a stationary Gaussian AR(1) with lag-1 correlation ``phi``.

    Mapped through a marginal quantile table this gives a series with the table's distribution
    and the measured second-to-second persistence.
    """
    z = np.empty((n_series, n_steps))
    z[:, 0] = rng.standard_normal(n_series)
    innov = np.sqrt(1.0 - phi**2)
    eps = rng.standard_normal((n_series, n_steps))
    for k in range(1, n_steps):
        z[:, k] = phi * z[:, k - 1] + innov * eps[:, k]
    return ndtr(z)


def positive_normal(rng: np.random.Generator, mean: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Normal(mean, sigma) with non-positive draws redrawn, as FLASH samples transfer speeds."""
    mean, sigma = np.broadcast_arrays(np.asarray(mean, float), np.asarray(sigma, float))
    out = rng.normal(mean, sigma)
    bad = out <= 0
    for _ in range(100):
        if not bad.any():
            break
        out[bad] = rng.normal(mean[bad], sigma[bad])
        bad = out <= 0
    out[bad] = mean[bad]  # pathological sigma >> mean: fall back to the mean
    return out


def compress_steps(times_s: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop breakpoints whose value equals the previous one (same series, fewer rows)."""
    keep = np.ones(values.size, dtype=bool)
    keep[1:] = values[1:] != values[:-1]
    return times_s[keep], values[keep]


def split_counts(n_total: int, shares: dict[str, float]) -> dict[str, int]:
    """Split ``n_total`` into integer counts proportional to ``shares`` (largest remainder)."""
    names = list(shares)
    w = np.array([shares[k] for k in names], dtype=float)
    exact = n_total * w / w.sum()
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n_total - counts.sum()]:
        counts[i] += 1
    return dict(zip(names, counts.tolist()))


def alternating_sessions(
    rng: np.random.Generator, period_s: float, online_share: float, mean_online_s: float
) -> tuple[list[float], list[float]]:
    """On/off intervals over one period: exponential on and off durations with the given means.

    Used when a lab-testbed generator is asked for availability (devices leaving for maintenance
    or other jobs); at least one online interval is always returned.
    """
    mean_off_s = mean_online_s * (1.0 - online_share) / max(online_share, 1e-9)
    starts, ends = [], []
    t = rng.uniform(0.0, mean_off_s) if online_share < 1.0 else 0.0
    while t < period_s:
        on = rng.exponential(mean_online_s)
        end = min(t + on, period_s)
        if end > t:
            starts.append(t)
            ends.append(end)
        t = end + rng.exponential(mean_off_s) if online_share < 1.0 else period_s
    if not starts:
        starts, ends = [0.0], [min(mean_online_s, period_s)]
    return starts, ends


def lab_availability(rng: np.random.Generator, period_s: float, online_share: float, mean_online_s: float,
                     where: str) -> Availability:
    """A lab board's availability: always online when ``online_share`` is 1, else :func:`alternating_sessions`
    (``where`` names the device in an error)."""
    if online_share >= 1.0:
        return Availability.always()
    starts, ends = alternating_sessions(rng, period_s, online_share, mean_online_s)
    return Availability.make(starts, ends, period_s, where=where)
