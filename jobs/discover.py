"""Factor discovery: ask the configured LLM which factors drive preferences in a new domain.

KAR lists a scenario's factors by asking an LLM, then has a person review them.
This writes the LLM's candidates as a factor YAML marked `reviewed: false`;
a person edits it, sets `reviewed: true`, and points `factors.file` at it.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from pathlib import Path

import yaml

from factors.sets import FactorSetError, load
from jobs.plumbing.config import Config
from jobs.plumbing.models import load_engine

log = logging.getLogger(__name__)

MAX_FACTORS = 12
# A list of ~12 short factors needs its own token budget, not the profile answers' one.
NEW_TOKENS = 192
_MAX_WORDS = 5
# Plurals of nouns that end in "ie" (not "y"); --item-noun overrides any guess.
_IE_NOUNS = {"movies", "cookies", "zombies", "selfies", "rookies"}
_MAX_CHARS = 48

# "1.", "2)", "(3)", "-", "*", "•", "a)" at the start of a line.
_MARKER = re.compile(r"^\s*(?:\(?\d{1,2}[.):]|[-*•+]|[a-zA-Z]\))\s*")
_INTRO = re.compile(r"^(here|these|the (most )?important|some|factors?\b|sure|certainly)", re.I)


def discovery_prompt(domain: str) -> str:
    return (
        f"List the most important factors that influence a user's preference for {domain}. "
        f"Answer with a numbered list of up to {MAX_FACTORS} short factor names "
        f"(one to four words each), one per line, without explanations."
    )


def _clean(fragment: str) -> str | None:
    """A short lowercase factor name from one list entry, or None if it is prose."""
    text = _MARKER.sub("", fragment).replace("**", "").replace("__", "").strip()
    # "Genre: the kind of story" / "Genre - ..." -> "Genre"
    text = re.split(r":|\s[-–—]\s|\.\s", text, maxsplit=1)[0]
    text = re.sub(r"\s+", " ", text).strip(" .,;:'\"`*").lower()
    if not text or text.endswith("?") or _INTRO.match(text):
        return None
    if len(text) > _MAX_CHARS or len(text.split()) > _MAX_WORDS or not re.search(r"[a-z]", text):
        return None
    return text


def parse_factors(answer: str, limit: int = MAX_FACTORS) -> list[str]:
    """Clean, de-duplicated factor names from a free-text LLM answer (numbered, bulleted or CSV)."""
    lines = [line for line in answer.splitlines() if line.strip()]
    listed = [line for line in lines if _MARKER.match(line)]
    # Prose or one-line answers ("genre, mood, and length.") are split on commas instead.
    fragments = listed if len(listed) >= 2 else re.split(r"[,;\n]|\band\b", answer)
    factors: list[str] = []
    seen: set[str] = set()
    for fragment in fragments:
        factor = _clean(fragment)
        if factor and factor not in seen:
            seen.add(factor)
            factors.append(factor)
    return factors[:limit]


def singular(domain: str) -> str:
    """A reasonable item noun for a plural domain name: "podcasts" -> "podcast"."""
    head, _, last = domain.strip().lower().rpartition(" ")
    if last.endswith("ies") and len(last) > 4 and last not in _IE_NOUNS:
        last = last[:-3] + "y"
    elif last.endswith("s") and not last.endswith(("ss", "us", "news", "series")):
        last = last[:-1]
    return f"{head} {last}".strip()


def discover(
    conf: Config,
    domain: str,
    out: Path,
    item_noun: str | None = None,
    max_new_tokens: int = NEW_TOKENS,
) -> Path:
    """Ask the LLM for `domain`'s factors and write them to `out` as an unreviewed factor YAML."""
    domain = domain.strip()
    if not domain:
        raise FactorSetError('--domain must name the domain, e.g. "podcasts"')
    llm = conf.llm.model_copy(update={"max_new_tokens": max_new_tokens})
    engine = load_engine(llm, conf.run.cache_dir, conf.generate.torch_threads)
    [answer] = engine.generate([discovery_prompt(domain)])
    text = answer.text
    if answer.finish_reason == "length" and "\n" in text:
        text = text.rpartition("\n")[0]  # the last line was cut mid-factor
    factors = parse_factors(text)
    if not factors:
        raise FactorSetError(
            f"could not read any factors from {llm.model}'s answer for domain {domain!r}; "
            f"write the factor file by hand (see factors/movies.yaml). The answer was:\n"
            f"{answer.text}"
        )
    data = {
        "domain": domain,
        "item_noun": item_noun or singular(domain),
        "history_verb": "interaction",
        "reviewed": False,
        "factors": factors,
    }
    raw = "\n".join(f"#   {line}" for line in answer.text.splitlines())
    header = (
        f"# Candidate scenario factors for {domain}, proposed by {llm.model} on "
        f"{datetime.now(UTC):%Y-%m-%d}.\n"
        f"# A person must review them: edit the list, check item_noun and history_verb,\n"
        f"# then set `reviewed: true` and point factors.file at this file.\n"
        f"# The model's raw answer:\n{raw}\n"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    load(domain, file=out)  # the file must load as a factor set before anyone reviews it
    log.info("wrote %d candidate factors for %s to %s", len(factors), domain, out)
    return out
