"""The LLM library's settings: what an engine is built from and how its answers are checked.

Plain pydantic models that import neither torch nor the job; the job's config
(jobs/plumbing/config.py) composes them with its own keys and checks.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# What an answer check says of one answer (jobs/llm/checks.py).
Status = Literal["ok", "empty", "echo", "length", "degenerate", "refusal"]


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LLMSettings(_Settings):
    # "transformers", "vllm", or a plug-in class "package.module:Class" (e.g. an HTTP endpoint's
    # client): built as Class(conf, model_dir, threads), see jobs/llm/engines.py build_engine.
    engine: str = "transformers"
    # "bundled:smollm2-135m-instruct" or a local HF-format checkpoint directory.
    model: str = "bundled:smollm2-135m-instruct"
    max_new_tokens: int = Field(default=96, gt=0)
    temperature: float = Field(default=0.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int = 0
    batch_size: int = Field(default=16, gt=0)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # Context window (prompt + answer). A longer prompt loses its oldest history items.
    max_model_len: int = Field(default=2048, gt=0)
    tensor_parallel_size: int = Field(default=1, gt=0)
    # vLLM only. Skip CUDA graphs / torch.compile: starts in ~1/3 of the time on CPU hosts.
    enforce_eager: bool = False
    # vLLM only: fraction of GPU memory (on CPU hosts: of RAM) the engine may reserve.
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    # vLLM only: fixed KV-cache size in GiB instead of the fraction above (set it on CPU hosts).
    kv_cache_gib: float | None = Field(default=None, gt=0)


class CheckSettings(_Settings):
    """When an answer is degenerate, an echo of its instruction, or a refusal."""

    # Degenerate: this share of an answer's word n-grams are repeats.
    degenerate_ngram: int = Field(default=4, gt=1)
    degenerate_repeat_share: float = Field(default=0.5, gt=0, lt=1)
    # Echo: this many words in a row of the prompt's instruction appear in the answer.
    echo_ngram: int = Field(default=12, gt=2)
    # Refusal: one of these regexes (case-insensitive) matches the answer's first sentence.
    refusal_patterns: list[str] = Field(
        default_factory=lambda: [
            r"^(i'?m|i am) (sorry|unable|not able)",
            r"^i (cannot|can'?t|won'?t)",
            r"^as an ai\b",
            r"^sorry\b",
        ]
    )

    @field_validator("refusal_patterns")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        for p in patterns:
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(f"refusal pattern {p!r} is not a valid regex: {e}") from None
        return patterns
