"""Fit a prompt into the context window by dropping its oldest history items.

A KAR user prompt is the fixed instruction, a blank line, then the entity part
whose history reads `"Title", 4 stars; "Title", 5 stars; ...` oldest first
(factors/prompts.py writes it and owns its pattern). When prompt + answer would
not fit `llm.max_model_len`, the oldest items go first (the fewest that make it
fit, found by bisection, so a long history costs a handful of tokenizations).
The instruction is never cut. An entity part with nothing left to drop (e.g. a
huge item title) loses its beginning instead. Only an instruction that alone
does not fit is an error: that is a config problem, the same for every prompt.
"""

from __future__ import annotations

from collections.abc import Callable

from factors.prompts import HISTORY_ITEM

# Marks a prompt whose entity part had to be cut mid-text.
ELLIPSIS = "..."


def _first_fit(lo: int, hi: int, fits: Callable[[int], bool]) -> int | None:
    """Smallest k in [lo, hi] with fits(k), assuming fits is monotone; None if none."""
    if not fits(hi):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def fit_prompt(prompt: str, n_tokens: Callable[[str], int], budget: int) -> tuple[str, int]:
    """(prompt that fits `budget` tokens per `n_tokens`, history items dropped).

    Raises ValueError when even the bare instruction does not fit.
    """
    if n_tokens(prompt) <= budget:
        return prompt, 0
    head, sep, entity = prompt.rpartition("\n\n")
    items = list(HISTORY_ITEM.finditer(entity))

    def drop(k: int) -> str:
        if k == 0:
            return entity
        return entity[: items[0].start()] + entity[items[k - 1].end() :]

    k = _first_fit(1, len(items), lambda k: n_tokens(head + sep + drop(k)) <= budget)
    if k is not None:
        return head + sep + drop(k), k
    rest = drop(len(items))

    def cut(c: int) -> str:
        return head + sep + ELLIPSIS + rest[c:]

    c = _first_fit(0, len(rest), lambda c: n_tokens(cut(c)) <= budget)
    if c is None:
        raise ValueError(
            f"the prompt's instruction alone ({n_tokens(head + sep + ELLIPSIS)} tokens) does not "
            f"leave room for the answer within {budget} prompt tokens; raise llm.max_model_len "
            f"(within the model's context) or lower llm.max_new_tokens"
        )
    return cut(c), len(items)
