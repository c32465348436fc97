"""The errors and warnings a *user* can cause, as opposed to bugs.

Every exception that a user's input can provoke (a config key, a trace file, an option, a run
directory, a trace population whose rounds can never close) derives from :class:`SimfedError`.
The ``simfed`` command prints such an error as one line, ``simfed <command>: error: <message>``,
and exits with status 2; any other exception is a bug in simfed and keeps its traceback. The
message of a :class:`SimfedError` must say *what* is wrong and *where* (file, dotted key, device,
option) on a single line.

Warnings about input that is legal but probably not what the user meant (a device whose
bandwidth is zero over its whole period, entries an importer dropped) are
:class:`SimfedWarning`\\ s, issued with :func:`warnings.warn`; the command prints each as one line,
``simfed <command>: warning: <message>``.
"""

from __future__ import annotations

__all__ = ["SimfedError", "ConfigError", "OptionError", "SimfedWarning"]


class SimfedError(Exception):
    """Base class of every error a user can cause; its message is one line naming what and where."""


class ConfigError(SimfedError, ValueError):
    """A run configuration is invalid; the message names the file and the dotted key (``simfed.config``)."""


class OptionError(SimfedError, ValueError):
    """A key or value of an option table (generator, importer, policy or method options) is not accepted.

    The message starts with the option's full name (e.g. ``traces.generator_args.efficiency`` or
    ``--set efficiency``) and says what is accepted.
    """


class SimfedWarning(UserWarning):
    """Input that is legal but probably wrong; printed by the CLI as one ``warning:`` line."""
