"""The ``simfed`` command. Each sub-command lives in its own module with a ``register(subparsers)``.

Adding a command is one module plus one line in ``_COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# module name under simfed.cli -> registers one or more sub-commands
_COMMANDS = [
    "traces",
    "run",
    "pretrain",
    "data",
    "plot",
    "compare",
    "sweep",
    "demo",
    "bandit",
]


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="simfed", description=__import__("simfed").__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in _COMMANDS:
        try:
            module = importlib.import_module(f"simfed.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"simfed.cli.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CliError, ValueError, FileNotFoundError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"simfed {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
