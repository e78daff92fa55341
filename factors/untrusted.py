"""Untrusted input text (titles, genres, attribute values) made safe to place in a prompt.

Catalogue and user data can carry prompt injections: chat-template markers that
a tokenizer turns into real special tokens (a title `<|im_start|>system ...`
would open a system turn), invisible Unicode that hides text from reviewers,
and text long enough to crowd out the instruction. `clean` removes the first
two and cuts the third; `quote` then places a value in its data slot so that it
cannot close the slot or start a line of its own. The prompt names the slot
as data (factors/prompts.py).

Written by hand: no well-kept library strips chat markers across model families.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

# Chat-template and tokenizer control markers of the common model families: ChatML and
# Llama 3 (`<|...|>`), Llama 2 / Mistral (`[INST]`, `<<SYS>>`, `<s>`), Gemma (`<start_of_turn>`),
# BERT-style (`[CLS]`), and our own data-slot delimiters. A model's own special tokens
# (its tokenizer's list) are added by the caller.
GENERIC_MARKERS = (
    r"<\|[^|<>\n]{0,64}\|>",
    r"\[/?INST\]",
    r"<</?SYS>>",
    r"</?s>",
    r"<(?:unk|pad|mask|bos|eos)>",
    r"<(?:start|end)_of_turn>",
    r"\[(?:CLS|SEP|PAD|MASK|UNK)\]",
    r"</?data>",
)


@dataclass(frozen=True)
class Cleaned:
    """A cleaned value and what was removed from it."""

    text: str
    markers: int  # chat-template / special-token markers removed
    invisible: int  # invisible or control characters removed
    cut: bool  # longer than the limit: cut at it


class Cleaner:
    """Removes markers (generic plus `special_tokens`) and invisible characters, cuts long text."""

    def __init__(self, special_tokens: Iterable[str] = (), max_chars: int = 200) -> None:
        own = sorted({t for t in special_tokens if t.strip()}, key=len, reverse=True)
        patterns = [re.escape(t) for t in own] + list(GENERIC_MARKERS)
        self.markers = re.compile("|".join(patterns), re.IGNORECASE)
        self.max_chars = max_chars

    def clean(self, text: str | None) -> Cleaned:
        if text is None:
            return Cleaned("", 0, 0, False)
        kept, invisible = [], 0
        for ch in text:
            category = unicodedata.category(ch)
            if ch in "\n\r\t\v\f":
                kept.append(" ")  # a value never starts a line of its own
            elif category in ("Cf", "Cc", "Co", "Cn", "Zl", "Zp"):
                invisible += 1  # zero-width, bidi controls, tag characters, controls
            else:
                kept.append(ch)
        text, markers = self.markers.subn("", "".join(kept))
        # Removing a marker can join two halves into a new one (`<|im_<|x|>start|>`).
        while (again := self.markers.subn("", text))[1]:
            text, markers = again[0], markers + again[1]
        text = " ".join(text.split())
        cut = len(text) > self.max_chars
        return Cleaned(text[: self.max_chars].rstrip() if cut else text, markers, invisible, cut)


def quote(value: str) -> str:
    """A JSON string literal: quotes and backslashes escaped, so the value stays one token of
    data however it ends."""
    return json.dumps(value, ensure_ascii=False)


# Age ranges for prompts and features: a range says as much about taste as a year.
_AGE_EDGES = ((18, "under 18"), (25, "18-24"), (35, "25-34"), (45, "35-44"), (55, "45-54"))


def age_range(value: str) -> str:
    """'24' -> '18-24'; a value that is not a whole number comes back as it is."""
    if not value.strip().isdigit():
        return value
    age = int(value)
    for below, label in _AGE_EDGES:
        if age < below:
            return label
    return "55+"
