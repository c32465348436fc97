"""Property tests over every documented key: a misspelling of any config key, generator argument,
importer option, policy option or method parameter is refused with one line naming the misspelt key;
a value outside any declared range is refused naming the key; every declared default is accepted."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from simfed import config as config_mod
from simfed.decisions.methods import METHODS, all_param_names, all_policy_param_names, build_method
from simfed.decisions.arms import ArmSpace
from simfed.decisions.policies import POLICIES, make_policy
from simfed.errors import OptionError
from simfed.options import Option, OptionTable, Range
from simfed.timing.generators import GENERATORS, generate, generator_options
from simfed.timing.importers import IMPORTERS, import_traces, importer_options

SETTINGS = settings(max_examples=150, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LETTERS = "abcdefghijklmnopqrstuvwxyz_0123456789"


def _config_keys(cls=config_mod.RunConfig, prefix: str = "") -> list[tuple[str, str, object]]:
    """(table prefix, leaf name, default) of every key of the run config."""
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if dataclasses.is_dataclass(default):
            out += _config_keys(type(default), f"{prefix}{f.name}.")
        else:
            out.append((prefix, f.name, default))
    return out


CONFIG_KEYS = _config_keys()
GENERATOR_KEYS = [(g, o.name, o.default) for g in GENERATORS for o in generator_options(g) if o.name != "seed"]
IMPORTER_KEYS = [(f, o.name) for f in IMPORTERS for o in importer_options(f)]
POLICY_KEYS = [(p, name) for p, cls in POLICIES.items() for name in cls.options().names]
METHOD_POLICY_KEYS = [(m, name) for m, r in METHODS.items() for name in r.policy_options().settable]
METHOD_PARAM_KEYS = [(m, name) for m, r in METHODS.items() for name in r.param_options().settable]


@st.composite
def misspelt(draw, word: str) -> str:
    """``word`` with one edit: a letter dropped, inserted, replaced, or two neighbours swapped."""
    op = draw(st.sampled_from(["drop", "insert", "replace", "swap"]))
    i = draw(st.integers(0, len(word) - 1))
    c = draw(st.sampled_from(LETTERS))
    if op == "drop":
        out = word[:i] + word[i + 1 :]
    elif op == "insert":
        out = word[:i] + c + word[i:]
    elif op == "replace":
        out = word[:i] + c + word[i + 1 :]
    else:
        j = min(i + 1, len(word) - 1)
        out = word[:i] + word[j] + word[i] + word[j + 1 :] if j > i else word + c
    assume(out and out != word)
    return out


def _one_line_naming(exc: BaseException, key: str) -> str:
    msg = str(exc)
    assert "\n" not in msg, msg
    assert key in msg, (key, msg)
    return msg


def test_every_documented_table_is_collected():
    # a guard against an empty parametrisation: the tables really are there
    assert len(CONFIG_KEYS) > 40 and len(GENERATOR_KEYS) >= 18 and len(IMPORTER_KEYS) >= 28
    assert {"discount", "nu", "rho", "xi", "slack"} <= {k for _, k in METHOD_POLICY_KEYS}
    assert {"rounds_to_target", "ranks_by_type", "self_prune_decay", "self_prune_weight", "n_p"} == {k for _, k in METHOD_PARAM_KEYS}


@SETTINGS
@given(data=st.data())
def test_misspelt_config_keys_are_refused(data):
    prefix, name, default = data.draw(st.sampled_from(CONFIG_KEYS))
    typo = data.draw(misspelt(name))
    known = {n for p, n, _ in CONFIG_KEYS if p == prefix} | {p.split(".")[0] for p, _, _ in CONFIG_KEYS if p and not prefix}
    assume(typo not in known)
    raw: dict = {}
    node = raw
    for part in [p for p in prefix.split(".") if p]:
        node = node.setdefault(part, {})
    node[typo] = default
    with pytest.raises(config_mod.ConfigError) as info:
        config_mod.from_dict(raw)
    msg = _one_line_naming(info.value, f"{prefix}{typo}")
    assert "unknown key" in msg and name in msg  # the known keys are listed


@SETTINGS
@given(data=st.data())
def test_misspelt_generator_args_are_refused(data):
    gen, name, default = data.draw(st.sampled_from(GENERATOR_KEYS))
    typo = data.draw(misspelt(name))
    assume(typo not in generator_options(gen))
    raw = {"traces": {"generator": gen, "generator_args": {typo: default}}}
    with pytest.raises(config_mod.ConfigError) as info:
        config_mod.from_dict(raw)
    msg = _one_line_naming(info.value, f"traces.generator_args.{typo}")
    assert f"generator {gen!r}" in msg and "accepted:" in msg
    with pytest.raises(OptionError) as info:
        generate(gen, n_devices=2, **{typo: default})
    _one_line_naming(info.value, typo)


@SETTINGS
@given(data=st.data())
def test_misspelt_importer_options_are_refused(data):
    fmt, name = data.draw(st.sampled_from(IMPORTER_KEYS))
    typo = data.draw(misspelt(name))
    assume(typo not in importer_options(fmt))
    with pytest.raises(OptionError) as info:
        importer_options(fmt).parse({typo: "1"})
    msg = _one_line_naming(info.value, f"--set {typo}")
    assert f"importer {fmt!r}" in msg and "accepted:" in msg
    with pytest.raises(OptionError) as info:  # refused before the (missing) file is read
        import_traces(fmt, "/nonexistent/file", **{typo: 1})
    _one_line_naming(info.value, typo)


@SETTINGS
@given(data=st.data())
def test_misspelt_policy_params_are_refused(data):
    method, name = data.draw(st.sampled_from(METHOD_POLICY_KEYS))
    typo = data.draw(misspelt(name))
    assume(typo not in all_policy_param_names())
    raw = {"method": method, "traces": {"generator": "fedspine-testbed"}, "policy": {"params": {typo: 1}}}
    with pytest.raises(config_mod.ConfigError) as info:
        config_mod.from_dict(raw)
    msg = _one_line_naming(info.value, f"policy.params.{typo}")
    assert "accepted:" in msg and name in msg


@SETTINGS
@given(data=st.data())
def test_misspelt_policy_constructor_options_are_refused(data):
    policy, name = data.draw(st.sampled_from(POLICY_KEYS))
    typo = data.draw(misspelt(name))
    assume(typo not in POLICIES[policy].options() and typo not in POLICIES[policy].code_args)
    with pytest.raises(OptionError) as info:
        make_policy(policy, **{typo: 1})
    msg = _one_line_naming(info.value, typo)
    assert f"policy {policy!r}" in msg


@SETTINGS
@given(data=st.data())
def test_misspelt_method_params_are_refused(data):
    method, name = data.draw(st.sampled_from(METHOD_PARAM_KEYS))
    typo = data.draw(misspelt(name))
    assume(typo not in all_param_names() and typo not in ("rank", "s_star"))
    raw = {"method": method, "traces": {"generator": "fedspine-testbed"}, "policy": {"method_params": {typo: 1}}}
    with pytest.raises(config_mod.ConfigError) as info:
        config_mod.from_dict(raw)
    msg = _one_line_naming(info.value, f"policy.method_params.{typo}")
    assert "accepted:" in msg and name in msg
    with pytest.raises(OptionError) as info:
        build_method(method, ArmSpace(), ["d"], {"d": "tx2"}, 0, {typo: 1, "s_star": 0.5})
    _one_line_naming(info.value, typo)


# ------------------------------------------------------------------------------------ values and defaults


def _tables() -> list[OptionTable]:
    tables = [generator_options(g) for g in GENERATORS] + [importer_options(f) for f in IMPORTERS]
    tables += [cls.options() for cls in POLICIES.values()] + [r.param_options() for r in METHODS.values()]
    return tables


def _outside(rng: Range) -> list[float]:
    """Values just outside each bound of ``rng``."""
    out = []
    if rng.gt is not None:
        out.append(rng.gt)
    if rng.ge is not None:
        out.append(rng.ge - 1)
    if rng.lt is not None:
        out.append(rng.lt)
    if rng.le is not None:
        out.append(rng.le + 1)
    return out


RANGED = [(t, o) for t in _tables() for o in t if o.range is not None]


@pytest.mark.parametrize("table, option", RANGED, ids=[f"{t.owner}:{o.name}" for t, o in RANGED])
def test_values_outside_a_declared_range_are_refused(table: OptionTable, option: Option):
    for value in _outside(option.range):
        value = int(value) if option.kind == "int" else float(value)
        with pytest.raises(OptionError) as info:
            table.check({option.name: value}, "x.", allow_provided=True)
        msg = _one_line_naming(info.value, f"x.{option.name}: expected")
        assert str(option.range) in msg


@pytest.mark.parametrize("table", _tables(), ids=lambda t: t.owner)
def test_declared_defaults_are_valid_and_types_are_checked(table: OptionTable):
    table.check(table.defaults(), allow_provided=True)
    for option in table:
        wrong = "text" if option.kind != "str" and option.kind != "path" else 3.5
        with pytest.raises(OptionError):
            table.check({option.name: wrong}, allow_provided=True)
        if option.kind == "float":
            with pytest.raises(OptionError):
                table.check({option.name: math.nan}, allow_provided=True)
        if option.kind in ("int", "float"):
            with pytest.raises(OptionError):
                table.check({option.name: True}, allow_provided=True)  # a bool is not a number here
