"""Classes named by import path: a user's own method, policy or aggregator, from their own file or package.

``module:Class`` names a class the way setuptools entry points do (``package.module:Class``). The module is
imported the ordinary way (it must be importable: installed, or on ``PYTHONPATH``, or in the current directory);
a path to a ``.py`` file (``path/to/file.py:Class``) is loaded from that file.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from simfed.errors import OptionError


def load_class(spec: str, base: type, what: str) -> type:
    """The class ``spec`` (``module:Class`` or ``file.py:Class``) names, checked to subclass ``base``.

    Raises:
        OptionError: a malformed spec, a module or file that does not import, a missing name, or a class that
            is not a subclass of ``base`` (the message names the spec and what is wrong).
    """
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise OptionError(f"{what} {spec!r}: expected module:Class (e.g. mypkg.policies:MyPolicy) or file.py:Class")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).resolve()
            name = f"simfed_user_{path.stem}_{abs(hash(str(path)))}"
            module = sys.modules.get(name)
            if module is None:
                loader_spec = importlib.util.spec_from_file_location(name, path)
                if loader_spec is None or loader_spec.loader is None or not path.is_file():
                    raise OptionError(f"{what} {spec!r}: no such file {path}")
                module = importlib.util.module_from_spec(loader_spec)
                sys.modules[name] = module
                loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except OptionError:
        raise
    except Exception as exc:  # the user's module failed to import: say which and why, in one line
        raise OptionError(f"{what} {spec!r}: cannot import {module_name!r} ({type(exc).__name__}: {exc})") from None
    cls = getattr(module, attr, None)
    if cls is None:
        raise OptionError(f"{what} {spec!r}: {module_name!r} has no {attr!r}")
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise OptionError(f"{what} {spec!r}: {attr!r} is not a subclass of {base.__module__}.{base.__qualname__}")
    return cls
