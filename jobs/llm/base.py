"""The engine interface the generate stage and factor discovery share.

Prompts are user-turn texts; the engine applies the model's chat template, so
the same prompts table works for transformers on a laptop and vLLM on GPUs.
A prompt longer than the context loses its oldest history items (see
jobs/llm/fit.py) instead of failing its batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from jobs.config import LLM_ENGINES, LLMConf
from jobs.plugins import load_class

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Generation:
    text: str
    # Prompt tokens after the chat template (no padding), and generated tokens incl. the stop token.
    input_tokens: int
    output_tokens: int
    # "stop": the model ended its answer; "length": cut at llm.max_new_tokens.
    finish_reason: FinishReason
    # Oldest history items left out so the prompt fit llm.max_model_len (0: the full prompt).
    history_dropped: int = 0


class Engine(Protocol):
    def generate(
        self, prompts: list[str], *, seed: int | None = None, temperature: float | None = None
    ) -> list[Generation]:
        """One Generation per prompt, in the order given.

        `seed` and `temperature` override llm.seed / llm.temperature for this call
        (retries of bad answers use them to get a different answer).
        """
        ...


def engine_model_dir(conf: LLMConf, cache_dir: Path) -> Path:
    """The `model_dir` to give build_engine: resolve_model's checkpoint directory; for a
    plug-in engine whose llm.model is not a local or bundled checkpoint (a remote endpoint's
    model name), that name as a path, which the plug-in reads as its model's name."""
    from jobs.llm.model import ModelError, resolve_model

    try:
        return resolve_model(conf.model, cache_dir)
    except ModelError:
        if conf.engine in LLM_ENGINES:
            raise
        return Path(conf.model)


def build_engine(conf: LLMConf, model_dir: Path, threads: int | None = None) -> Engine:
    """The engine `conf.engine` names, loaded from a local checkpoint directory.

    `threads` caps torch CPU threads for the transformers engine (one per actor CPU).
    A plug-in (`llm.engine: "package.module:Class"`, e.g. a client of an HTTP endpoint) is
    built as `Class(conf, model_dir, threads)`, in the process that generates (the Ray actor):
    `conf` is this LLMConf (model name, sampling, max_new_tokens, max_model_len), `model_dir`
    what `resolve_model(conf.model, ...)` gave (a remote engine may ignore it), `threads` the
    CPUs the actor reserved or None. It must implement `Engine.generate`: one Generation per
    prompt, in order, with token counts (estimated if the engine reports none) and
    finish_reason "stop" or "length". Import errors raise PluginError naming the path.
    """
    if conf.engine == "vllm":
        from jobs.llm.vllm import VLLMEngine

        return VLLMEngine(conf, model_dir)
    if conf.engine == "transformers":
        from jobs.llm.hf import HFEngine

        return HFEngine(conf, model_dir, threads)
    return load_class(conf.engine, "llm.engine")(conf, model_dir, threads)
