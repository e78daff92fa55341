"""Answer checks: label each generation ok / empty / length / degenerate / refusal.

Small models loop ("the movie is a movie is a movie ...") or refuse, and a cut
answer misses its end. Such answers must not become an entity's knowledge: the
generate stage retries them with a new seed and, if they stay bad, keeps the
entity's previous knowledge. Checks are cheap string work on the driver side
of each batch, so they cost nothing next to generation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from jobs.config import GenerateConf, Status
from jobs.llm.base import Generation

# Words to look at for a refusal: the answer's opening, where models put it.
_OPENING_CHARS = 120
_WORD = re.compile(r"\w+(?:'\w+)?")


def repeat_share(text: str, n: int) -> float:
    """Share of the word n-grams in `text` that repeat an earlier one (0 = no repeats)."""
    words = [w.lower() for w in _WORD.findall(text)]
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1 - len(set(grams)) / len(grams)


@dataclass(frozen=True)
class AnswerChecks:
    """The configured checks, compiled once per actor."""

    ngram: int
    repeat_limit: float
    refusals: tuple[re.Pattern[str], ...]

    @classmethod
    def from_conf(cls, conf: GenerateConf) -> AnswerChecks:
        return cls(
            ngram=conf.degenerate_ngram,
            repeat_limit=conf.degenerate_repeat_share,
            refusals=tuple(re.compile(p, re.IGNORECASE) for p in conf.refusal_patterns),
        )

    def status(self, gen: Generation) -> Status:
        """The first that applies of empty, refusal, degenerate, length; else ok.

        Degenerate goes before length: a loop usually runs until the token limit,
        and "it looped" is the more useful label.
        """
        text = gen.text.strip()
        if not _WORD.search(text):
            return "empty"
        opening = text[:_OPENING_CHARS]
        if any(p.search(opening) for p in self.refusals):
            return "refusal"
        if repeat_share(text, self.ngram) >= self.repeat_limit:
            return "degenerate"
        if gen.finish_reason == "length":
            return "length"
        return "ok"

    def statuses(self, gens: Sequence[Generation]) -> list[Status]:
        return [self.status(g) for g in gens]
