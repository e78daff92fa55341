"""Plug-in classes named in the config as "package.module:Class".

Platform teams plug their own LLM engine (an HTTP endpoint, a batch service)
or encoder without forking the job: the config names the class, the job
imports it where the model runs (in the Ray actor). The form is checked at
config load so a typo fails before any stage starts; the import happens only
when the engine is built, so the driver need not have the plug-in's own
dependencies.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable

# "package.module:Class" (dotted module path, one class name; nested attributes allowed).
_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


class PluginError(ImportError):
    """A configured plug-in class cannot be imported; the message names the key and the path."""


def is_import_path(value: str) -> bool:
    return bool(_IMPORT_PATH.match(value))


def check_engine_name(value: str, builtins: tuple[str, ...]) -> str:
    """`value` if it is a built-in engine name or an import path; else a ValueError naming the
    expected forms (the config loader adds the key and the value)."""
    if value in builtins or is_import_path(value):
        return value
    forms = " or ".join(repr(b) for b in builtins)
    raise ValueError(f"expected {forms}, or a plug-in class's import path 'package.module:Class'")


def load_class(path: str, key: str) -> type:
    """The class `path` ("package.module:Class") names; a PluginError naming `key` if it fails."""
    module_name, _, attr = path.partition(":")
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError as e:
        raise PluginError(
            f"{key} {path!r}: cannot import module {module_name!r} ({e}); is its package "
            f"installed, or on PYTHONPATH of the driver and the Ray workers?"
        ) from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            raise PluginError(f"{key} {path!r}: module {module_name!r} has no {attr!r}") from e
    if not isinstance(obj, type):
        raise PluginError(f"{key} {path!r}: {attr!r} is a {type(obj).__name__}, not a class")
    return obj


def plugin_class(engine: str, builtins: Iterable[str], key: str) -> type | None:
    """None for a built-in engine name, else the plug-in class `engine` names (load_class)."""
    return None if engine in builtins else load_class(engine, key)
