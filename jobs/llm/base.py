"""The engine interface the generate stage and factor discovery share.

Prompts are user-turn texts; the engine applies the model's chat template, so
the same prompts table works for transformers on a laptop and vLLM on GPUs.
A prompt longer than the context loses its oldest history items (see
jobs/llm/fit.py) instead of failing its batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

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
