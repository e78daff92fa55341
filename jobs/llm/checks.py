"""Answer checks: label each generation ok / empty / echo / length / degenerate / refusal.

An answer that holds chat-template markers or repeats the prompt's instruction
(echo) followed injected text or the template rather than answering: it is never
used, whatever generate.retry_statuses says. Small models loop ("the movie is a
movie is a movie ...") or refuse, and a cut answer misses its end. Such answers
must not become an entity's knowledge: the generate stage retries them with a
new seed and, if they stay bad, keeps the entity's previous knowledge. Checks
are cheap string work on the driver side of each batch, so they cost nothing
next to generation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from factors.untrusted import Cleaner
from jobs.llm.base import Generation
from jobs.llm.config import CheckSettings, Status

# Statuses whose answers are never an entity's knowledge, even when not retried.
NEVER_USABLE: frozenset[str] = frozenset({"echo"})
_MARKERS = Cleaner().markers

# Words to look at for a refusal: the answer's opening, where models put it.
_OPENING_CHARS = 120
_WORD = re.compile(r"\w+(?:'\w+)?")


def _word_grams(text: str, n: int) -> list[tuple[str, ...]]:
    words = [w.lower() for w in _WORD.findall(text)]
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def _grams(text: str, n: int) -> set[tuple[str, ...]]:
    return set(_word_grams(text, n))


def repeat_share(text: str, n: int) -> float:
    """Share of the word n-grams in `text` that repeat an earlier one (0 = no repeats)."""
    grams = _word_grams(text, n)
    if not grams:
        return 0.0
    return 1 - len(set(grams)) / len(grams)


@dataclass(frozen=True)
class AnswerChecks:
    """The configured checks, compiled once per actor."""

    ngram: int
    repeat_limit: float
    refusals: tuple[re.Pattern[str], ...]
    echo_ngram: int = 12

    @classmethod
    def from_conf(cls, conf: CheckSettings) -> AnswerChecks:
        return cls(
            ngram=conf.degenerate_ngram,
            repeat_limit=conf.degenerate_repeat_share,
            refusals=tuple(re.compile(p, re.IGNORECASE) for p in conf.refusal_patterns),
            echo_ngram=conf.echo_ngram,
        )

    def echoes(self, text: str, prompt: str) -> bool:
        """Chat markers in the answer, or `echo_ngram` words in a row of the instruction."""
        if _MARKERS.search(text):
            return True
        instruction = prompt.rpartition("\n\n")[0]
        return bool(_grams(instruction, self.echo_ngram) & _grams(text, self.echo_ngram))

    def status(self, gen: Generation, prompt: str) -> Status:
        """The first that applies of empty, echo, refusal, degenerate, length; else ok.

        Degenerate goes before length: a loop usually runs until the token limit,
        and "it looped" is the more useful label.
        """
        text = gen.text.strip()
        if not _WORD.search(text):
            return "empty"
        if self.echoes(text, prompt):
            return "echo"
        opening = text[:_OPENING_CHARS]
        if any(p.search(opening) for p in self.refusals):
            return "refusal"
        if repeat_share(text, self.ngram) >= self.repeat_limit:
            return "degenerate"
        if gen.finish_reason == "length":
            return "length"
        return "ok"

    def statuses(self, gens: Sequence[Generation], prompts: Sequence[str]) -> list[Status]:
        return [self.status(g, p) for g, p in zip(gens, prompts, strict=True)]
