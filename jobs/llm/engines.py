"""Which LLM engine serves a config: the built-ins by name, a plug-in by its class.

Each engine module is imported only when built, so a worker loads only the engine
(vLLM or transformers) it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from jobs.llm.base import Engine
from jobs.llm.config import LLMSettings


def _vllm(conf: LLMSettings, model_dir: Path, threads: int | None) -> Engine:
    from jobs.llm.vllm import VLLMEngine

    return VLLMEngine(conf, model_dir)  # vLLM sizes its own threads


def _transformers(conf: LLMSettings, model_dir: Path, threads: int | None) -> Engine:
    from jobs.llm.hf import HFEngine

    return HFEngine(conf, model_dir, threads)


# Built-in engines by `llm.engine` name (the job's config accepts these and import paths).
ENGINES: dict[str, Callable[[LLMSettings, Path, int | None], Engine]] = {
    "vllm": _vllm,
    "transformers": _transformers,
}


def build_engine(
    conf: LLMSettings, model_dir: Path, threads: int | None = None, plugin: type | None = None
) -> Engine:
    """The engine `conf.engine` names, loaded from a local checkpoint directory.

    `threads` caps torch CPU threads for the transformers engine (one per actor CPU).
    A plug-in engine (`llm.engine: "package.module:Class"`, e.g. a client of an HTTP
    endpoint) comes as `plugin`, the class the caller imported, and is built as
    `Class(conf, model_dir, threads)` in the process that generates (the Ray actor):
    `conf` these settings (model name, sampling, max_new_tokens, max_model_len),
    `model_dir` the resolved checkpoint or, for a remote model, its name as a path,
    `threads` the CPUs the actor reserved or None. It must implement `Engine.generate`:
    one Generation per prompt, in order, with token counts (estimated if the engine
    reports none) and finish_reason "stop" or "length".
    """
    factory = plugin or ENGINES.get(conf.engine)
    if factory is None:
        raise ValueError(
            f"llm engine {conf.engine!r} is not built in ({sorted(ENGINES)}); pass the "
            "plug-in's class"
        )
    return factory(conf, model_dir, threads)
