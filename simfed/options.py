"""Declared option tables: the keyword options of generators, importers, policies and methods, each
with a type and a range, checked before any work is done.

An option is declared once, where it is used. Most are read from a signature whose annotations
carry the range (the ``annotated-types``/pydantic convention, without the dependency)::

    def generate(n_devices: int | None = None, seed: int = 0, *,
                 efficiency: Annotated[float, Range(gt=0, le=1)] = 0.3,
                 precision: Annotated[str, Choices("fp32", "fp16")] = "fp32") -> Population: ...

    GENERATOR_TABLE = signature_table(generate, "generator 'fedspine-testbed'")

A method recipe, which reads its parameters from a mapping, declares :class:`Option` objects
directly (:mod:`simfed.decisions.methods`). Either way the result is an :class:`OptionTable`:

- :meth:`OptionTable.check` validates a mapping of values (from TOML, ``--set`` or Python) and
  returns it normalised (an integer given for a number becomes a float, a path becomes a string);
- :meth:`OptionTable.parse` first reads ``--set KEY=TEXT`` texts as the declared type, so a string
  option keeps its text exactly (``device_id=007`` stays ``"007"``).

Every rejection is one :class:`~simfed.errors.OptionError` whose message starts with the option's
full name (``traces.generator_args.efficency``, ``--set efficency``) and says what is accepted:
for an unknown key the accepted names (and the closest one), for a bad value the type and range.

Types: ``bool``, ``int``, ``float`` (finite), ``str``, a path (``str | os.PathLike``; kept as
text) and a table (``dict[str, X]``: names mapped to values of one declared type).
``X | None`` also accepts None (the default "not given"); ``Literal[...]`` or :class:`Choices`
restricts to a set of values; a plain string in the ``Annotated`` metadata is a short label shown
next to the name in the accepted list (e.g. the symbol of the paper, ``"γ"``).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import numbers
import os
import tomllib
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from simfed.errors import OptionError

__all__ = ["Range", "Choices", "Option", "OptionTable", "signature_table", "check_arguments", "suggestion", "REQUIRED",
           "OptionError", "Annotated"]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()  # the default of an option that must be given


def _num(x: float) -> str:
    return f"{x:g}"


@dataclass(frozen=True)
class Range:
    """An interval: ``gt``/``ge`` bound it below (open/closed), ``lt``/``le`` above."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def __post_init__(self) -> None:
        if self.gt is not None and self.ge is not None or self.lt is not None and self.le is not None:
            raise TypeError("Range: give at most one lower (gt/ge) and one upper (lt/le) bound")

    def contains(self, value: float) -> bool:
        return not (
            (self.gt is not None and not value > self.gt)
            or (self.ge is not None and not value >= self.ge)
            or (self.lt is not None and not value < self.lt)
            or (self.le is not None and not value <= self.le)
        )

    def __str__(self) -> str:
        lo = ("(", self.gt) if self.gt is not None else ("[", self.ge) if self.ge is not None else None
        hi = (")", self.lt) if self.lt is not None else ("]", self.le) if self.le is not None else None
        if lo and hi:
            return f"in {lo[0]}{_num(lo[1])}, {_num(hi[1])}{hi[0]}"
        if lo:
            return f"{'>' if lo[0] == '(' else '>='} {_num(lo[1])}"
        if hi:
            return f"{'<' if hi[0] == ')' else '<='} {_num(hi[1])}"
        return "any value"


class Choices(tuple):
    """The values an option may take, e.g. ``Annotated[str, Choices("fp32", "fp16")]``."""

    def __new__(cls, *values: Any) -> "Choices":
        if len(values) == 1 and isinstance(values[0], (tuple, list)):
            values = tuple(values[0])
        return super().__new__(cls, values)


KINDS = ("bool", "int", "float", "str", "path", "table")
_WORDS = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string", "path": "a file path"}


@dataclass(frozen=True)
class Option:
    """One declared option: its name, type (one of :data:`KINDS`), default and constraints.

    ``provided`` names the place that sets this value instead of the table (e.g. ``"traces.seed"``):
    a user who sets it in the table is told to set it there. ``item`` is the declared value of a
    ``table`` option (its keys are strings).
    """

    name: str
    kind: str
    default: Any = REQUIRED
    nullable: bool = False
    range: Range | None = None
    choices: tuple = ()
    label: str = ""
    item: "Option | None" = None
    provided: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise TypeError(f"option {self.name!r}: kind {self.kind!r} is not one of {KINDS}")
        if self.kind == "table" and self.item is None:
            raise TypeError(f"option {self.name!r}: a table needs the declared type of its values (item=)")

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def describe(self) -> str:
        """What the option accepts, in words: ``a number in (0, 1]``, ``one of 'fp32', 'fp16'``."""
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.kind == "table":
            return f"a table of names to {self.item.describe() if self.item else 'values'}"
        words = _WORDS[self.kind]
        return f"{words} {self.range}" if self.range is not None else words

    def check(self, value: Any, key: str) -> Any:
        """``value`` if it is acceptable (normalised), else :class:`OptionError` naming ``key``."""
        if value is None and self.nullable:
            return None
        out = self._typed(value)
        if out is _BAD or (self.choices and out not in self.choices):
            raise OptionError(f"{key}: expected {self.describe()}, got {value!r}")
        if self.kind in ("int", "float") and self.range is not None and not self.range.contains(out):
            raise OptionError(f"{key}: expected {self.describe()}, got {value!r}")
        if self.kind == "table":
            assert self.item is not None
            return {k: self.item.check(v, f"{key}.{k}") for k, v in out.items()}
        return out

    def _typed(self, value: Any) -> Any:
        if self.kind == "bool":
            return value if isinstance(value, bool) else _BAD
        if self.kind == "int":
            return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else _BAD
        if self.kind == "float":
            if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value)):
                return float(value)
            return _BAD
        if self.kind == "str":
            return value if isinstance(value, str) else _BAD
        if self.kind == "path":
            return os.fspath(value) if isinstance(value, (str, os.PathLike)) and os.fspath(value) else _BAD
        if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):  # table
            return dict(value)
        return _BAD

    def parse(self, text: str, key: str) -> Any:
        """Read a ``--set`` text as this option's type, then :meth:`check` it."""
        value: Any = text
        if self.nullable and self.kind not in ("str", "path") and text.strip().lower() in ("none", "null"):
            return None
        if self.kind == "bool":
            low = text.strip().lower()
            value = {"true": True, "false": False}.get(low, text)
        elif self.kind == "int":
            try:
                value = int(text.strip())
            except ValueError:
                value = text
        elif self.kind == "float":
            try:
                value = float(text.strip())
            except ValueError:
                value = text
        elif self.kind == "table":
            try:
                value = tomllib.loads(f"v = {text}")["v"]
            except tomllib.TOMLDecodeError:
                value = text
        return self.check(value, key)


_BAD = object()

# Greek letters by name: a key spelt as the symbol of a paper (``gamma``) finds the option labelled γ
_GREEK = {"alpha": "α", "beta": "β", "gamma": "γ", "delta": "δ", "epsilon": "ε", "eta": "η", "lambda": "λ",
          "mu": "μ", "nu": "ν", "rho": "ρ", "sigma": "σ", "tau": "τ", "xi": "ξ"}


def suggestion(key: str, options: Iterable[Option]) -> str:
    """``"did you mean 'x'? "`` for the option whose name is closest to ``key`` or whose label is the
    Greek letter ``key`` spells; ``""`` when none is close."""
    options = list(options)
    by_label = [o for o in options if o.label and o.label == _GREEK.get(key.lower())]
    if by_label:
        return f"did you mean {by_label[0].name!r} ({by_label[0].label})? "
    close = difflib.get_close_matches(key, [o.name for o in options], n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


class OptionTable:
    """The options one component accepts (``owner`` names it in messages, e.g. ``generator 'phones'``)."""

    def __init__(self, owner: str, options: Iterable[Option]) -> None:
        self.owner = owner
        self.options: dict[str, Option] = {}
        for opt in options:
            if opt.name in self.options:
                raise TypeError(f"{owner}: option {opt.name!r} declared twice")
            self.options[opt.name] = opt

    def __contains__(self, name: object) -> bool:
        return name in self.options

    def __iter__(self):
        return iter(self.options.values())

    def __len__(self) -> int:
        return len(self.options)

    def __repr__(self) -> str:
        return f"OptionTable({self.owner!r}, {list(self.options)})"

    @property
    def names(self) -> list[str]:
        """Every declared name, provided ones included."""
        return list(self.options)

    @property
    def settable(self) -> list[str]:
        """The names a user may set in this table (not provided from elsewhere)."""
        return [o.name for o in self if not o.provided]

    def defaults(self) -> dict[str, Any]:
        return {o.name: o.default for o in self if not o.required}

    def accepted(self) -> str:
        """The settable names, with their labels: ``discount (γ), nu (ν), play``; ``none`` if empty."""
        items = [f"{o.name} ({o.label})" if o.label else o.name for o in self if not o.provided]
        return ", ".join(items) if items else "none"

    def without(self, *names: str) -> "OptionTable":
        """This table less ``names`` (e.g. the arguments a recipe passes itself)."""
        return OptionTable(self.owner, [o for o in self if o.name not in names])

    def providing(self, **where: str) -> "OptionTable":
        """This table with the named options marked as set elsewhere (``seed="traces.seed"``)."""
        unknown = set(where) - set(self.options)
        if unknown:
            raise TypeError(f"{self.owner}: cannot mark unknown options {sorted(unknown)} as provided")
        return OptionTable(self.owner, [dataclasses.replace(o, provided=where.get(o.name, o.provided)) for o in self])

    def unknown_key(self, key: str, prefix: str = "") -> OptionError:
        """The error for a key this table does not declare (with the closest settable name, if any)."""
        hint = suggestion(key, [o for o in self if not o.provided])
        if not self.settable:
            return OptionError(f"{prefix}{key}: unknown option ({self.owner} takes no options here)")
        return OptionError(f"{prefix}{key}: unknown option of {self.owner} ({hint}accepted: {self.accepted()})")

    def check(self, values: Mapping[str, Any], prefix: str = "", *, allow_provided: bool = False,
              fill_defaults: bool = False) -> dict[str, Any]:
        """Validate ``values`` (name -> value); returns them normalised.

        ``prefix`` is prepended to every name in messages (``"traces.generator_args."``,
        ``"--set "``). A provided option is refused unless ``allow_provided`` (the caller that
        provides it). With ``fill_defaults`` the result also holds the default of every option not
        given, and a required option that is missing is an error.

        Raises:
            OptionError: the first unknown name, provided name or bad value, in the order given.
        """
        if not isinstance(values, Mapping):
            raise OptionError(f"{prefix.rstrip('. ') or self.owner}: expected a table of options, got {values!r}")
        out: dict[str, Any] = {}
        for key, value in values.items():
            opt = self.options.get(key) if isinstance(key, str) else None
            if opt is None:
                raise self.unknown_key(str(key), prefix)
            if opt.provided and not allow_provided:
                raise OptionError(f"{prefix}{key}: not set here; it comes from {opt.provided}")
            out[key] = opt.check(value, f"{prefix}{key}")
        if fill_defaults:
            for opt in self:
                if opt.name in out:
                    continue
                if opt.required:
                    raise OptionError(f"{prefix}{opt.name}: required by {self.owner} ({opt.describe()})")
                out[opt.name] = opt.default
        return out

    def parse(self, texts: Mapping[str, str], prefix: str = "--set ") -> dict[str, Any]:
        """``--set`` texts (name -> text) read as each option's declared type and checked."""
        out: dict[str, Any] = {}
        for key, text in texts.items():
            opt = self.options.get(key)
            if opt is None:
                raise self.unknown_key(key, prefix)
            if opt.provided:
                raise OptionError(f"{prefix}{key}: not set here; it comes from {opt.provided}")
            out[key] = opt.parse(text, f"{prefix}{key}")
        return out


# --------------------------------------------------------------------------------------------------
# options from a signature


def _unwrap_annotated(hint: Any) -> tuple[Any, list[Any]]:
    if typing.get_origin(hint) is Annotated:
        base, *meta = typing.get_args(hint)
        return base, list(meta)
    return hint, []


def _option_from_hint(name: str, hint: Any, default: Any, owner: str) -> Option:
    hint, meta = _unwrap_annotated(hint)
    nullable = False
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = typing.get_args(hint)
        rest = [a for a in args if a is not type(None)]
        nullable = len(rest) < len(args)
        if len(rest) == 1:
            hint, more = _unwrap_annotated(rest[0])
            meta += more
        elif str in rest and os.PathLike in [typing.get_origin(a) or a for a in rest] and len(rest) == 2:
            hint = os.PathLike
        else:
            raise TypeError(f"{owner}: option {name!r} has the union type {hint!r}, which no config can express")
    rng = next((m for m in meta if isinstance(m, Range)), None)
    choices: tuple = next((tuple(m) for m in meta if isinstance(m, Choices)), ())
    label = next((m for m in meta if isinstance(m, str)), "")
    item = None
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        hint = type(choices[0])
    origin = typing.get_origin(hint) or hint
    if hint is os.PathLike or origin is os.PathLike:
        kind = "path"
    elif hint in (bool, int, float, str):
        kind = hint.__name__
    elif origin in (dict, Mapping):
        args = typing.get_args(hint)
        if len(args) != 2 or args[0] is not str:
            raise TypeError(f"{owner}: option {name!r}: a table option needs the type dict[str, X], got {hint!r}")
        item = _option_from_hint(f"{name}[]", args[1], REQUIRED, owner)
        kind = "table"
    else:
        raise TypeError(f"{owner}: option {name!r} has the type {hint!r}, which no config can express; skip it")
    return Option(name, kind, default, nullable=nullable, range=rng, choices=choices, label=label, item=item)


def signature_table(fn: Callable[..., Any], owner: str, *, skip: Iterable[str] = ()) -> OptionTable:
    """The options of ``fn``'s keyword parameters, typed and ranged by their annotations.

    ``self``, ``*args``/``**kwargs``, positional-only parameters and the names in ``skip`` (values
    the code passes itself, such as a policy's ``arm_space`` or an importer's input ``path``) are
    left out; a parameter whose annotation no config can express must be skipped explicitly.

    Raises:
        TypeError: an annotation that is not a supported option type (a programming error).
    """
    skip = set(skip)
    sig = inspect.signature(fn)
    hints = typing.get_type_hints(fn, include_extras=True)
    options = []
    for name, p in sig.parameters.items():
        if name == "self" or name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            continue
        default = REQUIRED if p.default is inspect.Parameter.empty else p.default
        options.append(_option_from_hint(name, hints.get(name, Any), default, owner))
    return OptionTable(owner, options)


def check_arguments(table: OptionTable, arguments: Mapping[str, Any], prefix: str = "") -> None:
    """Check a call's arguments against its declared table (call with ``locals()`` first thing).

    Arguments that the table does not declare (skipped ones, such as an input path) are ignored;
    provided options are allowed (the caller is the component itself).

    Raises:
        OptionError: a declared argument of the wrong type or out of its range.
    """
    table.check({k: v for k, v in arguments.items() if k in table}, prefix, allow_provided=True)
