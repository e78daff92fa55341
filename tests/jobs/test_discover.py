"""Factor discovery: the answer parser on fixed texts, and a real run of the bundled tiny LLM."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from factors.sets import FactorSetError, load
from jobs.discover import MAX_FACTORS, discover, parse_factors, singular

NUMBERED = """Here are the most important factors that influence a preference for podcasts:

1. **Host personality**: how engaging the host is
2. Topic - what the show covers
3) Episode length.
4. Audio quality
- topic
* Guest lineup
5. Whether the podcast keeps releasing new episodes on a regular schedule every week

These factors together shape what a listener enjoys."""


def test_parse_numbered_and_bulleted_answer() -> None:
    assert parse_factors(NUMBERED) == [
        "host personality",
        "topic",
        "episode length",
        "audio quality",
        "guest lineup",
    ]


def test_parse_one_line_answer_and_limit() -> None:
    assert parse_factors("Genre, host style; episode length and audio quality.") == [
        "genre",
        "host style",
        "episode length",
        "audio quality",
    ]
    words = "genre tone pace length host guests humor depth format topic sound price era cast"
    many = "\n".join(f"{i}. {w}" for i, w in enumerate(words.split(), 1))
    assert len(parse_factors(many)) == MAX_FACTORS
    assert parse_factors("I am not sure what you mean. Could you clarify?") == []


def test_singular_item_noun() -> None:
    assert [singular(d) for d in ("podcasts", "movies", "video games", "stories", "news")] == [
        "podcast",
        "movie",
        "video game",
        "story",
        "news",
    ]


@pytest.mark.engines  # starts the LLM
def test_discover_writes_a_loadable_unreviewed_factor_file(make_config, tmp_path: Path) -> None:
    conf = make_config("generate.torch_threads=2")
    # A short answer keeps the test fast; the tiny model's list is poor, so check structure only.
    out = discover(conf, "podcasts", tmp_path / "factors" / "podcasts.yaml", max_new_tokens=40)

    text = out.read_text()
    assert text.startswith("# Candidate scenario factors for podcasts")
    assert "set `reviewed: true`" in text
    fs = load("podcasts", file=out)
    assert fs.domain == "podcasts" and fs.item_noun == "podcast"
    assert fs.reviewed is False
    assert 1 <= len(fs.factors) <= MAX_FACTORS
    assert len(set(fs.factors)) == len(fs.factors)
    assert all(f and f == f.strip().lower() and len(f.split()) <= 5 for f in fs.factors)
    assert list(yaml.safe_load(text)) == [
        "domain",
        "item_noun",
        "history_verb",
        "reviewed",
        "factors",
    ]


def test_discover_rejects_empty_domain(make_config, tmp_path: Path) -> None:
    with pytest.raises(FactorSetError, match="--domain"):
        discover(make_config(), "  ", tmp_path / "x.yaml")
