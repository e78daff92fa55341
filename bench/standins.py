"""Instant stand-ins for the LLM and the encoder, plugged in by import path.

bench/scale.py measures the data plane (reads, joins, commits, driver and JVM
memory), not the models: the engines' own cost is bench/generation.py's. These
answer at once, deterministically (the same prompt or text always gives the
same answer or vector), so a run at a million users costs what the job around
the models costs.

    llm.engine: bench.standins:InstantLLM
    encoder.engine: bench.standins:InstantEncoder

They follow the plug-in contracts of jobs.llm.build_engine and
encoders.build_encoder, so they also show what a platform's own engine needs.
"""

from __future__ import annotations

import hashlib
import math
import random
from pathlib import Path

import numpy as np

from jobs.llm.base import Generation
from jobs.plumbing.config import EncoderConf, LLMConf

# The chat template adds about this many tokens around a user turn (SmolLM2's adds 9-12).
_TEMPLATE_TOKENS = 10
_CHARS_PER_TOKEN = 4
ENCODER_DIM = 384  # all-MiniLM-L6-v2's

_OPENERS = [
    "This profile leans toward",
    "The pattern here points to",
    "Taken together, the signals suggest",
    "Most of the evidence favors",
    "The strongest theme is",
    "Overall the record shows",
]
_TASTES = [
    "character-driven drama",
    "fast-paced adventure",
    "quiet observational comedy",
    "dark psychological suspense",
    "warm family stories",
    "ambitious science fiction",
    "gritty crime narratives",
    "romantic period pieces",
    "sharp political satire",
    "lush animated fantasy",
    "tense survival thrillers",
    "offbeat independent features",
]
_QUALITIES = [
    "strong ensemble performances",
    "memorable scores",
    "clever dialogue",
    "striking cinematography",
    "emotional payoffs",
    "brisk editing",
    "layered villains",
    "inventive world building",
    "moral ambiguity",
    "practical effects",
    "slow-burn tension",
    "playful humor",
]
_AUDIENCES = [
    "weekend viewers",
    "critics",
    "younger audiences",
    "genre fans",
    "late-night watchers",
    "families",
    "film students",
    "casual browsers",
]
_CLOSERS = [
    "Expect interest in recent releases with similar tone.",
    "Recommendations should mix familiar favorites with a few risks.",
    "Ratings tend to reward craft over spectacle.",
    "Lighter titles fill the gaps between heavier picks.",
    "Repeat viewing is likely for the best of these.",
    "Niche picks do well when the pacing holds up.",
]


def _rng(text: str) -> random.Random:
    return random.Random(hashlib.blake2b(text.encode(), digest_size=8).digest())


def instant_answer(prompt: str) -> str:
    """A plausible ~40-word answer chosen by a hash of `prompt` (same prompt, same answer)."""
    r = _rng(prompt)
    taste, second = r.sample(_TASTES, 2)
    q1, q2, q3 = r.sample(_QUALITIES, 3)
    return (
        f"{r.choice(_OPENERS)} {taste}, with a secondary pull toward {second}. "
        f"Valued traits include {q1}, {q2} and {q3}, the kind of mix {r.choice(_AUDIENCES)} "
        f"notice first. {r.choice(_CLOSERS)}"
    )


def _tokens(text: str) -> int:
    return math.ceil(len(text) / _CHARS_PER_TOKEN)


class InstantLLM:
    """An LLM engine that answers every prompt at once; token counts are estimates (4 chars a
    token), and no answer is ever cut, so every finish_reason is "stop"."""

    def __init__(self, conf: LLMConf, model_dir: Path, threads: int | None = None) -> None:
        self.conf = conf

    def generate(
        self, prompts: list[str], *, seed: int | None = None, temperature: float | None = None
    ) -> list[Generation]:
        out = []
        for prompt in prompts:
            text = instant_answer(prompt if seed is None else f"{seed}\n{prompt}")
            out.append(
                Generation(
                    text=text,
                    input_tokens=_tokens(prompt) + _TEMPLATE_TOKENS,
                    output_tokens=_tokens(text) + 1,  # + the stop token
                    finish_reason="stop",
                )
            )
        return out


class InstantEncoder:
    """An encoder that maps each text to a unit vector of ENCODER_DIM drawn from its hash."""

    def __init__(self, model: str, conf: EncoderConf, threads: int | None = None) -> None:
        self.dim = ENCODER_DIM

    def encode(self, texts: list[str]) -> np.ndarray:
        raw = b"".join(hashlib.shake_128(t.encode()).digest(self.dim) for t in texts)
        vectors = np.frombuffer(raw, dtype=np.int8).reshape(len(texts), self.dim)
        vectors = vectors.astype(np.float32) + 0.5  # int8 is centred on -0.5
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def count_truncated(self, texts: list[str]) -> int:
        return 0
