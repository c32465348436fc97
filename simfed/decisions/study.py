"""Bandit-study mode: run any registered policies on synthetic reward environments over the (p, r) arm
space and report their regret, without the timing or accuracy layers.

Environments (each defines the mean reward μ_t(arm) ∈ [0, 1] of every arm at every step, from its seed):

* ``stationary``: every grid arm has a fixed mean drawn uniformly in [0.1, 0.9]; an off-grid arm has
  the mean of its nearest grid arm (in unit coordinates). The optimum is a grid arm.
* ``lipschitz``: μ(u) = max(0.05, 0.9 − L·‖u − u*‖₂) on the unit square, u* drawn in [0.15, 0.85]²:
  a continuous optimum that discrete grids can only approximate (the setting S-UCB is built for).
* ``abrupt``: piecewise-stationary Lipschitz bumps; the optimum jumps to a new random u* at
  ``n_changes`` evenly spaced change points (Garivier & Moulines' abruptly changing setting).
* ``adversarial``: an oblivious adversary: arms with u_p < ½ pay 1 and the others 0, swapped at the end
  of each block; block lengths double (2, 4, 8, …), so no fixed arm is good for long and the best
  fixed arm in hindsight is only slightly better than half. Rewards are these deterministic values
  (no noise). Policies that track the switches can have negative regret against the best fixed arm.

Observed rewards are μ_t(arm) plus noise shared by all policies at a step (common random numbers):
``gaussian`` (σ = 0.1, clipped to [0, 1]) or ``bernoulli`` (1 if U_t < μ_t(arm)).

Regret: ``regret`` is the pseudo-regret against the best *fixed* arm in hindsight,
Σ_t μ_t(a*) − μ_t(a_t) with a* = argmax_a Σ_t μ_t(a) over a fine candidate set (the grid plus 21 ratios
× every integer rank); ``dynamic_regret`` is against the best arm of each step. Runners yield one
flat record per decision (river's ``evaluate`` convention) and :func:`run_study` makes a DataFrame.
"""

from __future__ import annotations

import abc
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from simfed.decisions.arms import ArmSpace
from simfed.decisions.policies import POLICIES, make_policy
from simfed.decisions.policies.base import derived_seed
from simfed.records import Arm, Observation, Outcome

NOISES = ("gaussian", "bernoulli")
DEVICE = "device-0"


class Environment(abc.ABC):
    """A synthetic reward environment on an arm space, fully determined by its seed."""

    name: str = ""
    noisy: bool = True

    def __init__(self, arm_space: ArmSpace, steps: int, seed: int) -> None:
        if steps < 1:
            raise ValueError(f"{self.name}: steps must be >= 1, got {steps}")
        self.arm_space = arm_space
        self.steps = steps
        self.seed = seed
        self._rng = np.random.default_rng(derived_seed(seed, "env", self.name))

    @abc.abstractmethod
    def means(self, units: np.ndarray, step: int) -> np.ndarray:
        """Mean rewards at ``step`` of arms given by unit coordinates ``units`` (shape (K, 2))."""

    def mean(self, arm: Arm, step: int) -> float:
        return float(self.means(np.array([self.arm_space.to_unit(arm)]), step)[0])

    def candidates(self) -> list[Arm]:
        """The fixed arms the best arm in hindsight is chosen from."""
        fine = [Arm(p=float(p), r=r) for p in np.linspace(0.0, self.arm_space.p_max, 21)
                for r in range(self.arm_space.r_min, self.arm_space.r_max + 1)]
        return sorted(set(self.arm_space.grid()) | set(fine))


def _bump(units: np.ndarray, centre: np.ndarray, slope: float) -> np.ndarray:
    return np.maximum(0.05, 0.9 - slope * np.linalg.norm(units - centre[None, :], axis=1))


class Stationary(Environment):
    name = "stationary"

    def __init__(self, arm_space: ArmSpace, steps: int, seed: int) -> None:
        super().__init__(arm_space, steps, seed)
        grid = arm_space.grid()
        self._grid_units = np.array([arm_space.to_unit(a) for a in grid])
        self._grid_means = self._rng.uniform(0.1, 0.9, size=len(grid))

    def means(self, units: np.ndarray, step: int) -> np.ndarray:
        d = np.linalg.norm(units[:, None, :] - self._grid_units[None, :, :], axis=2)
        return self._grid_means[np.argmin(d, axis=1)]


class Lipschitz(Environment):
    name = "lipschitz"

    def __init__(self, arm_space: ArmSpace, steps: int, seed: int, slope: float = 0.6) -> None:
        super().__init__(arm_space, steps, seed)
        self.slope = slope
        self.optimum = self._rng.uniform(0.15, 0.85, size=2)

    def means(self, units: np.ndarray, step: int) -> np.ndarray:
        return _bump(units, self.optimum, self.slope)


class Abrupt(Environment):
    name = "abrupt"

    def __init__(self, arm_space: ArmSpace, steps: int, seed: int, n_changes: int = 2, slope: float = 0.6) -> None:
        super().__init__(arm_space, steps, seed)
        if n_changes < 0:
            raise ValueError(f"abrupt: n_changes must be >= 0, got {n_changes}")
        self.slope = slope
        self.n_changes = n_changes
        self.optima = self._rng.uniform(0.1, 0.9, size=(n_changes + 1, 2))
        self.change_steps = [int(round(steps * (k + 1) / (n_changes + 1))) for k in range(n_changes)]

    def segment(self, step: int) -> int:
        return int(np.searchsorted(self.change_steps, step, side="right"))

    def means(self, units: np.ndarray, step: int) -> np.ndarray:
        return _bump(units, self.optima[self.segment(step)], self.slope)


class Adversarial(Environment):
    name = "adversarial"
    noisy = False

    def __init__(self, arm_space: ArmSpace, steps: int, seed: int, first_block: int = 2) -> None:
        super().__init__(arm_space, steps, seed)
        self._left_pays: list[bool] = []
        left = bool(self._rng.integers(2))
        block = max(1, int(first_block))
        while len(self._left_pays) < steps:
            self._left_pays.extend([left] * block)
            left = not left
            block *= 2
        self._left_pays = self._left_pays[:steps]

    def means(self, units: np.ndarray, step: int) -> np.ndarray:
        left = units[:, 0] < 0.5
        return np.where(left == self._left_pays[step], 1.0, 0.0)


ENVIRONMENTS: dict[str, type[Environment]] = {c.name: c for c in (Stationary, Lipschitz, Abrupt, Adversarial)}


def make_environment(name: str, arm_space: ArmSpace, steps: int, seed: int, **params: Any) -> Environment:
    cls = ENVIRONMENTS.get(name)
    if cls is None:
        raise ValueError(f"unknown bandit environment {name!r}; known: {sorted(ENVIRONMENTS)}")
    try:
        return cls(arm_space, steps, seed, **params)
    except TypeError as exc:
        raise ValueError(f"environment {name!r}: {exc}") from None


def _observation(step: int, arm: Arm) -> Observation:
    # What a server would observe in a bandit study: only the arm and that the device reported.
    return Observation(round=step, device_id=DEVICE, arm=arm, outcome=Outcome.OK, completion_s=1.0,
                       round_mean_completion_s=1.0, sparsity_before=0.0, sparsity_after=0.0, s_star=0.0)


def run_policy(policy_name: str, env: Environment, seed: int, noise: str = "gaussian", sigma: float = 0.1,
               policy_params: Mapping[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Run one policy on one environment for ``env.steps`` steps; yield one flat record per step."""
    if noise not in NOISES:
        raise ValueError(f"noise must be one of {NOISES}, got {noise!r}")
    policy = make_policy(policy_name, arm_space=env.arm_space, seed=seed, **dict(policy_params or {}))
    if policy.reads_traces:
        raise ValueError(f"policy {policy_name!r} reads device traces; it has no meaning in a bandit study")
    cands = env.candidates()
    cand_units = np.array([env.arm_space.to_unit(a) for a in cands])
    cand_means = np.stack([env.means(cand_units, t) for t in range(env.steps)])  # (T, K)
    best_idx = int(np.argmax(cand_means.sum(axis=0)))
    noise_rng = np.random.default_rng(derived_seed(seed, "noise", env.name))
    shocks = noise_rng.normal(0.0, sigma, env.steps) if noise == "gaussian" else noise_rng.uniform(size=env.steps)
    cum = dyn = 0.0
    total_reward = 0.0
    for t in range(env.steps):
        arm = policy.select(t, [DEVICE])[DEVICE]
        mu = env.mean(arm, t)
        if not env.noisy:
            x = mu
        elif noise == "gaussian":
            x = min(1.0, max(0.0, mu + shocks[t]))
        else:
            x = 1.0 if shocks[t] < mu else 0.0
        policy.update(t, [_observation(t, arm)], {DEVICE: x})
        best_mu = float(cand_means[t, best_idx])
        opt_mu = float(cand_means[t].max())
        cum += best_mu - mu
        dyn += opt_mu - mu
        total_reward += x
        yield {
            "env": env.name, "policy": policy_name, "seed": seed, "step": t, "p": arm.p, "r": arm.r,
            "reward": x, "mean_reward": mu, "best_fixed_mean": best_mu, "step_optimum_mean": opt_mu,
            "regret": cum, "dynamic_regret": dyn, "cumulative_reward": total_reward,
        }


def run_study(policies: Sequence[str], envs: Sequence[str], *, steps: int = 500, seeds: Sequence[int] = (0,),
              arm_space: ArmSpace | None = None, noise: str = "gaussian", sigma: float = 0.1,
              env_params: Mapping[str, Mapping[str, Any]] | None = None,
              policy_params: Mapping[str, Mapping[str, Any]] | None = None) -> pd.DataFrame:
    """Every policy × environment × seed; one row per decision (columns as :func:`run_policy`)."""
    space = arm_space if arm_space is not None else ArmSpace()
    for name in policies:
        if name not in POLICIES:
            raise ValueError(f"unknown policy {name!r}; known: {sorted(POLICIES)}")
    rows: list[dict[str, Any]] = []
    for env_name in envs:
        for seed in seeds:
            env = make_environment(env_name, space, steps, seed, **dict((env_params or {}).get(env_name, {})))
            for name in policies:
                rows.extend(run_policy(name, env, seed, noise, sigma, (policy_params or {}).get(name)))
    return pd.DataFrame(rows)


def summarise(records: pd.DataFrame) -> pd.DataFrame:
    """Final regret per environment × policy: mean and std over seeds, and the first/second-half split."""
    last = records.sort_values("step").groupby(["env", "policy", "seed"]).tail(1)
    half = records["step"].max() // 2 + 1
    first = records[records["step"] == half - 1][["env", "policy", "seed", "regret"]].rename(columns={"regret": "first_half"})
    merged = last.merge(first, on=["env", "policy", "seed"])
    merged["second_half"] = merged["regret"] - merged["first_half"]
    return (merged.groupby(["env", "policy"])
            .agg(regret_mean=("regret", "mean"), regret_std=("regret", "std"),
                 first_half=("first_half", "mean"), second_half=("second_half", "mean"),
                 dynamic_regret=("dynamic_regret", "mean"), seeds=("seed", "nunique"))
            .reset_index())


def write_table(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write CSV or parquet (by suffix) atomically: a temp file in the same folder, then ``os.replace``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ValueError(f"{path}: output must end in .csv or .parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        if suffix == ".csv":
            frame.to_csv(tmp, index=False)
        else:
            frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def plot_regret(records: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Cumulative regret over steps (mean over seeds, one panel per environment), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    envs = list(dict.fromkeys(records["env"]))
    fig, axes = plt.subplots(1, len(envs), figsize=(4.5 * len(envs), 3.6), squeeze=False)
    for ax, env_name in zip(axes[0], envs):
        sub = records[records["env"] == env_name]
        for name, grp in sub.groupby("policy", sort=False):
            curve = grp.groupby("step")["regret"].mean()
            ax.plot(curve.index, curve.values, label=name)
        ax.set_title(env_name)
        ax.set_xlabel("step")
        ax.set_ylabel("cumulative regret")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path

