"""The public Python API: run simfed with your own method, policy or aggregator, from your own code.

    import simfed
    from my_bandit import MyPolicy          # a simfed.decisions.policies.Policy subclass
    from my_merge import MyAggregator       # a simfed.accuracy.aggregators.Aggregator subclass

    result = simfed.run("configs/demo.toml", policy=MyPolicy, aggregator=MyAggregator,
                        overrides=["mode=timing", "rounds=5"])
    result.rounds.plot(x="end_s", y="accuracy")

``method``, ``policy`` and ``aggregator`` take a registered name, a ``module:Class`` path or a class; a class is
registered under its ``name`` for this process (so the run directory records the name, and a config file can use
it), the way a shipped one is registered by its registry line. A config file names the same classes by import path:
``method = "my_methods:MyMethod"``, ``policy.name = "my_bandit:MyPolicy"``, ``aggregator = "my_merge:MyAggregator"``.
docs/extending.md has a worked example.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

__all__ = ["run", "RunResult", "register_method", "register_policy", "register_aggregator"]


@dataclass
class RunResult:
    """A finished run: its directory, summary and tables (pandas)."""

    path: Path
    summary: dict
    rounds: pd.DataFrame
    device_rounds: pd.DataFrame
    events: pd.DataFrame


def _register(registry: dict, cls: type, base: type, what: str) -> str:
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(f"{what}: {cls!r} is not a subclass of {base.__qualname__}")
    name = getattr(cls, "name", "") or cls.__name__
    known = registry.get(name)
    if known is not None and known is not cls:
        raise ValueError(f"{what}: the name {name!r} is taken by {known.__module__}.{known.__qualname__}; "
                         f"give {cls.__qualname__} another `name`")
    registry[name] = cls
    return name


def register_method(cls: type) -> str:
    """Make a :class:`~simfed.decisions.methods.Method` subclass known by its ``name``; returns the name."""
    from simfed.decisions.methods import METHODS, Method, check_method

    check_method(cls)
    return _register(METHODS, cls, Method, "method")


def register_policy(cls: type) -> str:
    """Make a :class:`~simfed.decisions.policies.Policy` subclass known by its ``name``; returns the name."""
    from simfed.decisions.policies import POLICIES, Policy

    return _register(POLICIES, cls, Policy, "policy")


def register_aggregator(cls: type) -> str:
    """Make an :class:`~simfed.accuracy.aggregators.Aggregator` subclass known by its ``name``; returns the name."""
    from simfed.accuracy.aggregators import AGGREGATORS, Aggregator

    return _register(AGGREGATORS, cls, Aggregator, "aggregator")


def _name(spec: Any, register) -> str:
    return spec if isinstance(spec, str) else register(spec)


def run(config: "str | Path | Mapping | Any", *, method: Any = None, policy: Any = None, aggregator: Any = None,
        overrides: list[str] | None = None, out: str | Path | None = None, fresh: bool = True,
        progress: bool = False) -> RunResult:
    """Run one configuration and return its tables.

    ``config`` is a TOML file, a mapping of its keys, or a :class:`~simfed.config.RunConfig`; ``overrides`` are
    ``--set``-style ``"key=value"`` strings. ``method``/``policy``/``aggregator`` replace the config's ``method``,
    ``policy.name`` and ``aggregator`` (module docstring). ``out`` is the run directory (default: a new temporary
    directory, kept). ``fresh`` discards what ``out`` holds (else a complete run there is returned, an
    interrupted one resumed).

    Raises:
        simfed.errors.SimfedError: a config key, component or trace input that cannot be used (one line).
    """
    import tempfile

    from simfed import config as config_mod
    from simfed.experiments.outputs import DEVICE_ROUNDS, EVENTS, ROUNDS, RunDir
    from simfed.experiments.runner import run_config

    values: list[str] = list(overrides or [])
    if method is not None:
        values.append(f"method={_quote(_name(method, register_method))}")
    if policy is not None:
        values.append(f"policy.name={_quote(_name(policy, register_policy))}")
    if aggregator is not None:
        values.append(f"aggregator={_quote(_name(aggregator, register_aggregator))}")
    if isinstance(config, (str, Path)):
        cfg = config_mod.load(config, values)
    else:
        data = config_mod.to_dict(config) if isinstance(config, config_mod.RunConfig) else dict(config)
        cfg = config_mod.from_dict(config_mod.apply_overrides(data, values))
    path = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="simfed-run-"))
    summary = run_config(cfg, path, progress=progress, fresh=fresh)
    rd = RunDir(path)
    return RunResult(path=path, summary=summary, rounds=pd.read_parquet(rd.file(ROUNDS)),
                     device_rounds=pd.read_parquet(rd.file(DEVICE_ROUNDS)), events=pd.read_parquet(rd.file(EVENTS)))


def _quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
