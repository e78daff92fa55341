"""KAR factorization prompts.

The fixed instruction comes first and the entity-specific part last, so every
prompt of a kind shares one long prefix (prefix caching in vLLM reuses it).
The entity part is also what the encoder sees for users: KAR encodes the
history part of the prompt together with the answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from factors.sets import FactorSet

# Bump when the wording below changes: it is part of every prompt's fingerprint.
TEMPLATE_VERSION = "kar-v1"


def _factor_list(fs: FactorSet) -> str:
    *head, last = fs.factors
    return f"{', '.join(head)}, and {last}" if head else last


def user_instruction(fs: FactorSet) -> str:
    return (
        f"Analyze the user's preferences on {fs.domain} (consider factors like "
        f"{_factor_list(fs)}). Provide clear explanations based on relevant details from "
        f"the user's {fs.item_noun} {fs.history_verb} history and other pertinent factors."
    )


def item_instruction(fs: FactorSet) -> str:
    return (
        f"Introduce the {fs.item_noun} below and describe its attributes precisely "
        f"(including but not limited to {_factor_list(fs)})."
    )


def describe_user(demographics: Mapping[str, str] | None) -> str:
    """'a 24-year-old M technician' style phrase from whatever attributes are allowed."""
    if not demographics:
        return "a user"
    parts = []
    if demographics.get("age"):
        parts.append(f"{demographics['age']}-year-old")
    for key in sorted(k for k in demographics if k != "age"):
        if demographics[key]:
            parts.append(str(demographics[key]))
    return "a " + " ".join(parts) + " user"


def user_context(
    fs: FactorSet, history: Sequence[tuple[str, float]], demographics: Mapping[str, str] | None
) -> str:
    """KAR's user part: who the user is and their time-ordered history, `"Title", N stars;`."""
    items = " ".join(f'"{title}", {rating:g} stars;' for title, rating in history)
    return (
        f"Given {describe_user(demographics)}, this user's {fs.item_noun} {fs.history_verb} "
        f"history over time is listed below.\n{items}"
    )


def item_context(fs: FactorSet, title: str) -> str:
    return f"{fs.item_noun.capitalize()}: {title}"


def user_prompt(fs: FactorSet, context: str) -> str:
    return f"{user_instruction(fs)}\n\n{context}"


def item_prompt(fs: FactorSet, context: str) -> str:
    return f"{item_instruction(fs)}\n\n{context}"
