"""Which LLM engine serves a config: the built-ins by name, a plug-in by import path.

Each engine module is imported only when built, so a worker loads only the engine
(vLLM or transformers) it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from jobs.config import LLMConf
from jobs.llm.base import Engine
from jobs.models import ModelError, resolve_model
from jobs.plugins import load_class


def _vllm(conf: LLMConf, model_dir: Path, threads: int | None) -> Engine:
    from jobs.llm.vllm import VLLMEngine

    return VLLMEngine(conf, model_dir)  # vLLM sizes its own threads


def _transformers(conf: LLMConf, model_dir: Path, threads: int | None) -> Engine:
    from jobs.llm.hf import HFEngine

    return HFEngine(conf, model_dir, threads)


# Built-in engines by `llm.engine` name; the config validates against jobs.config.LLM_ENGINES,
# the same names (tests/test_standins.py checks they agree).
ENGINES: dict[str, Callable[[LLMConf, Path, int | None], Engine]] = {
    "vllm": _vllm,
    "transformers": _transformers,
}


def engine_model_dir(conf: LLMConf, cache_dir: Path) -> Path:
    """The `model_dir` to give build_engine: resolve_model's checkpoint directory; for a
    plug-in engine whose llm.model is not a local or bundled checkpoint (a remote endpoint's
    model name), that name as a path, which the plug-in reads as its model's name."""
    try:
        return resolve_model(conf.model, "llm", cache_dir)
    except ModelError:
        if conf.engine in ENGINES:
            raise
        return Path(conf.model)


def build_engine(conf: LLMConf, model_dir: Path, threads: int | None = None) -> Engine:
    """The engine `conf.engine` names, loaded from a local checkpoint directory.

    `threads` caps torch CPU threads for the transformers engine (one per actor CPU).
    A plug-in (`llm.engine: "package.module:Class"`, e.g. a client of an HTTP endpoint) is
    built as `Class(conf, model_dir, threads)`, in the process that generates (the Ray actor):
    `conf` is this LLMConf (model name, sampling, max_new_tokens, max_model_len), `model_dir`
    what `engine_model_dir` gave (a remote engine may ignore it), `threads` the
    CPUs the actor reserved or None. It must implement `Engine.generate`: one Generation per
    prompt, in order, with token counts (estimated if the engine reports none) and
    finish_reason "stop" or "length". Import errors raise PluginError naming the path.
    """
    factory = ENGINES.get(conf.engine) or load_class(conf.engine, "llm.engine")
    return factory(conf, model_dir, threads)
