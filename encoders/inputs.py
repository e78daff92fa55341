"""What the encoder reads for each entity, as KAR builds it.

A user's reasoning text is only meaningful next to what it reasons about, so
KAR encodes the history part of the prompt followed by the answer; an item's
factual answer stands on its own.
"""

from __future__ import annotations


def encoder_input(kind: str, context: str, text: str) -> str:
    """user: the prompt's history part + the LLM answer; item: the answer only."""
    if kind == "user":
        return f"{context}\n{text}"
    if kind == "item":
        return text
    raise ValueError(f"unknown entity kind {kind!r}; expected 'user' or 'item'")
