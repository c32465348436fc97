"""The ``simfed`` command. Each sub-command lives in its own module with a ``register(subparsers)``.

Adding a command is one module plus one line in ``_COMMANDS``.

Errors and warnings: an error the user caused (:class:`~simfed.errors.SimfedError`, see
:func:`is_user_error`) prints as one line,
``simfed <command>: error: <what, where>``, exit status 2; ``--debug`` (anywhere on the command
line) shows its traceback instead. Any other exception is a bug in simfed and keeps its traceback.
Every warning (:mod:`warnings`, or a log record of level WARNING and above) prints as one line,
``simfed <command>: warning: <message>``. A closed output pipe
(``simfed traces show DIR | head``) ends the command quietly with status 141 (128 + SIGPIPE, as
a shell reports a process killed by a closed pipe); Ctrl-C ends it with status 130.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
import warnings
from pathlib import Path

from simfed.errors import SimfedError

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
    "calibrate",
]

EXIT_USER_ERROR = 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE
EXIT_INTERRUPTED = 130  # 128 + SIGINT


class CliError(SimfedError):
    """A user error found by the command line itself: printed as one line, exit status 2."""


_PROJECT_DIRS = (Path(__file__).resolve().parents[1], Path(__file__).resolve().parents[2] / "analysis")


def _raised_by_project(exc: BaseException) -> bool:
    """True if the innermost frame of ``exc``'s traceback is simfed's or analysis' own code.

    A plain ValueError that simfed raises itself carries a message written for the user; one that
    escapes numpy, torch or pandas is an unexpected failure (a bug) and keeps its traceback.
    """
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    try:
        path = Path(tb.tb_frame.f_code.co_filename).resolve()
    except OSError:  # pragma: no cover
        return False
    return any(path.is_relative_to(d) for d in _PROJECT_DIRS)


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an error the user caused (one line) rather than a bug (a traceback).

    User errors: :class:`~simfed.errors.SimfedError` (every error class a user's input can provoke derives from
    it: ConfigError, TraceError, OptionError, RunError, EngineError, ...); file-system errors (a missing file,
    no permission, a full disk: :class:`OSError`); and a plain :class:`ValueError` raised by simfed's own code
    (argument checks of the library functions the commands call; one from numpy, torch or pandas is a bug).
    """
    if isinstance(exc, (SimfedError, OSError)):
        return True
    return type(exc) is ValueError and _raised_by_project(exc)


def one_line(text: object) -> str:
    """``text`` on one line (newlines and runs of blanks become one space)."""
    return " ".join(str(text).split())


def _add_debug(parser: argparse.ArgumentParser, top: bool = False) -> None:
    # on every (sub)parser, so --debug may come anywhere; only the top level sets the default
    parser.add_argument("--debug", action="store_true", default=False if top else argparse.SUPPRESS,
                        help="show the traceback of an error instead of one line")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _add_debug(sub)


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
    _add_debug(parser, top=True)
    return parser


class _LineFormatter(logging.Formatter):
    def __init__(self, prog: str) -> None:
        super().__init__()
        self.prog = prog

    def format(self, record: logging.LogRecord) -> str:
        return f"{self.prog}: {record.levelname.lower()}: {one_line(record.getMessage())}"


@contextlib.contextmanager
def _log_lines(prog: str):
    """Log records of WARNING and above print as ``simfed <command>: warning: ...`` while a command
    runs (unless the root logger is already configured, e.g. by an embedding program)."""
    root = logging.getLogger()
    if root.handlers:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(_LineFormatter(prog))
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


def _quiet_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so the interpreter's final flush stays silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # pragma: no cover - stdout without a descriptor
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"simfed {args.command}"

    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"{prog}: warning: {one_line(message)}", file=sys.stderr)

    with warnings.catch_warnings(), _log_lines(prog):
        warnings.showwarning = show_warning
        try:
            code = int(args.func(args) or 0)
            sys.stdout.flush()  # inside the try: a closed pipe shows up here, not at exit
            return code
        except BrokenPipeError:
            _quiet_stdout()
            return EXIT_BROKEN_PIPE
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except Exception as exc:
            if args.debug or not is_user_error(exc):
                raise
            print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
            return EXIT_USER_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
