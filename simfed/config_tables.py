"""The free-form tables of a run config, checked against what reads them when the config is loaded.

:mod:`simfed.config` types every fixed key; four tables are open-ended because their keys belong to
another component. This module checks them against that component's declared options
(:mod:`simfed.options`) before any run work, so a misspelt key or a bad value is one line naming
the dotted key and what is accepted:

- ``traces.generator_args``: the options of ``traces.generator`` (its signature in
  :mod:`simfed.timing.generators`); ``seed`` comes from ``traces.seed``;
- ``policy.method_params``: the parameters of the methods (:attr:`Method.params
  <simfed.decisions.methods.base.Method.params>`); ``rank`` and ``s_star`` come from ``policy.rank`` and
  ``s_star``;
- ``policy.params``: the options of the methods' policies (:meth:`Method.policy_options
  <simfed.decisions.methods.base.Method.policy_options>`), e.g. S-UCB's ``discount`` (γ), ``nu`` (ν);
- ``policy.reward``: the fields of :class:`~simfed.decisions.reward.RewardWeights`.

One file may drive a sweep over several methods, so ``policy.method_params`` and ``policy.params``
are shared: a key is an error when *no* method reads it, and (in :func:`warn_unread`, called when a
file is loaded) a warning when none of the run's methods (``method`` and ``sweep.methods``) reads it.
"""

from __future__ import annotations

import warnings
from typing import Any

from simfed.errors import OptionError, SimfedWarning
from simfed.options import suggestion

RunConfig = Any  # a simfed.config.RunConfig (not imported: simfed.config imports this module)

__all__ = ["check_tables", "warn_unread"]


def _methods(cfg: "RunConfig | None" = None) -> dict:
    """The registered methods, plus the run's own methods named by import path (``module:Class``)."""
    from simfed.decisions.methods import METHODS, get_method

    out = dict(METHODS)
    if cfg is not None:
        named = [("method", cfg.method)] + [(f"sweep.methods[{i}]", m) for i, m in enumerate(cfg.sweep.methods)]
        for key, name in named:
            if name not in out:
                try:
                    out[name] = get_method(name)
                except OptionError as exc:
                    raise OptionError(f"{key}: {exc}") from None
    return out


def _check_generator(cfg: "RunConfig") -> None:
    from simfed.timing.generators import GENERATORS, generator_options

    t = cfg.traces
    if not t.generator:
        if t.generator_args:
            raise OptionError(f"traces.generator_args.{next(iter(t.generator_args))}: only used with traces.generator "
                              "(this run reads the trace directory traces.dir)")
        return
    if t.generator not in GENERATORS:
        raise OptionError(f"traces.generator: unknown generator {t.generator!r} (known: {', '.join(sorted(GENERATORS))})")
    table = generator_options(t.generator).providing(seed="traces.seed")
    table.check(t.generator_args, "traces.generator_args.")


def _check_shared(values: dict, prefix: str, tables: dict, run: list[str]) -> None:
    """Each key must be settable in the table of at least one method; its value must suit every one.

    ``tables`` maps every method to its table; ``run`` names the run's methods, whose accepted keys
    an unknown key's message lists.
    """
    for key, value in values.items():
        having = [t for t in tables.values() if key in t]
        settable = [t for t in having if not t.options[key].provided]
        if not having:
            own = [tables[m] for m in run]
            if len(own) == 1:
                raise own[0].unknown_key(key, prefix)
            options = {o.name: o for t in own for o in t if not o.provided}
            accepted = ", ".join(f"{n} ({o.label})" if o.label else n for n, o in options.items()) or "none"
            hint = suggestion(key, options.values())
            raise OptionError(f"{prefix}{key}: unknown option of methods {', '.join(run)} ({hint}accepted: {accepted})")
        if not settable:
            raise OptionError(f"{prefix}{key}: not set here; it comes from {having[0].options[key].provided}")
        for t in settable:
            t.options[key].check(value, f"{prefix}{key}")


def _policy_table(spec: str):
    """The options of the policy ``policy.name`` names (a registered name or module:Class)."""
    from simfed.decisions.policies import POLICIES, Policy
    from simfed.plugins import load_class

    if spec in POLICIES:
        return POLICIES[spec].options()
    if ":" in spec:
        return load_class(spec, Policy, "policy.name").options()
    raise OptionError(f"policy.name: unknown policy {spec!r} (known: {', '.join(POLICIES)}, or a module:Class of your own)")


def _check_reward(cfg: "RunConfig") -> None:
    from simfed.decisions.reward import RewardWeights
    from simfed.options import signature_table

    table = signature_table(RewardWeights, "the reward (simfed.decisions.reward.RewardWeights)")
    values = table.check(cfg.policy.reward, "policy.reward.")
    try:
        RewardWeights(**values)
    except ValueError as exc:
        raise OptionError(f"policy.reward: {exc}") from None


def check_tables(cfg: "RunConfig") -> None:
    """Check the method names and the four free-form tables of ``cfg`` (see the module docstring).

    Raises:
        OptionError: the first unknown method, key or bad value; the message starts with the dotted key.
    """
    methods = _methods(cfg)
    _check_generator(cfg)
    run = list(dict.fromkeys([cfg.method, *cfg.sweep.methods]))
    _check_shared(cfg.policy.method_params, "policy.method_params.",
                  {name: r.param_options() for name, r in methods.items()}, run)
    if cfg.policy.name:  # a replacement policy takes policy.params
        _policy_table(cfg.policy.name).check(cfg.policy.params, "policy.params.")
    else:
        _check_shared(cfg.policy.params, "policy.params.", {name: r.policy_options() for name, r in methods.items()}, run)
    _check_reward(cfg)
    _check_one_rank(cfg, [methods[m] for m in run])


def _check_one_rank(cfg: "RunConfig", methods: list) -> None:
    """A method that reads ``rank`` draws it from the arm space: it must lie in [r_min, r_max]."""
    p = cfg.policy
    users = [m.name for m in methods if "rank" in m.param_options()]
    if users and not (p.r_min <= p.rank <= p.r_max):
        raise OptionError(f"policy.rank: {p.rank} is outside [policy.r_min, policy.r_max] = [{p.r_min}, {p.r_max}], "
                          f"the ranks method {', '.join(repr(u) for u in users)} may use")


def warn_unread(cfg: "RunConfig", where: str = "") -> None:
    """Warn once per key of ``policy.method_params``/``policy.params`` that none of the run's methods reads.

    The run's methods are ``method`` and ``sweep.methods``: a key that only another method reads is
    legal (a shared sweep file) but has no effect on this run.
    """
    methods = _methods(cfg)
    run = [m for m in dict.fromkeys([cfg.method, *cfg.sweep.methods]) if m in methods]
    names = ", ".join(repr(m) for m in run)
    checks = [("policy.method_params.", cfg.policy.method_params, {k: c.param_options() for k, c in methods.items()})]
    if not cfg.policy.name:  # a replacement policy reads every key of policy.params (checked above)
        checks.append(("policy.params.", cfg.policy.params, {k: c.policy_options() for k, c in methods.items()}))
    for prefix, values, tables in checks:
        for key in values:
            if any(key in tables[m] for m in run):
                continue
            readers = ", ".join(name for name, t in tables.items() if key in t)
            warnings.warn(f"{where}{prefix}{key}: ignored: not read by method {names} (read by: {readers})",
                          SimfedWarning, stacklevel=3)
