"""Factor sets: the scenario factors a domain's prompts ask the LLM to reason along."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml


class FactorSetError(ValueError):
    """A factor YAML is missing or malformed; the message names the file and the key."""


@dataclass(frozen=True)
class FactorSet:
    domain: str
    item_noun: str
    history_verb: str
    factors: tuple[str, ...]
    reviewed: bool = True

    @property
    def version(self) -> str:
        """Content hash: editing a factor changes it, so affected prompts are regenerated."""
        payload = json.dumps([self.domain, self.item_noun, self.history_verb, self.factors])
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def bundled_domains() -> list[str]:
    return sorted(
        p.name[:-5] for p in resources.files("factors").iterdir() if p.name.endswith(".yaml")
    )


def parse(data: object, source: str) -> FactorSet:
    if not isinstance(data, dict):
        raise FactorSetError(f"{source}: expected a mapping with domain, item_noun, factors")
    missing = [k for k in ("domain", "item_noun", "factors") if k not in data]
    if missing:
        raise FactorSetError(f"{source}: missing key(s) {missing}")
    factors = data["factors"]
    if not isinstance(factors, list) or not factors or not all(isinstance(f, str) for f in factors):
        raise FactorSetError(f"{source}: 'factors' must be a non-empty list of strings")
    return FactorSet(
        domain=str(data["domain"]),
        item_noun=str(data["item_noun"]),
        history_verb=str(data.get("history_verb", "interaction")),
        factors=tuple(f.strip() for f in factors),
        reviewed=bool(data.get("reviewed", False)),
    )


def load(domain: str, file: Path | None = None) -> FactorSet:
    """The reviewed set in `file`, else the bundled set for `domain`."""
    if file is not None:
        if not file.exists():
            raise FactorSetError(f"factor file {file} does not exist (factors.file in the config)")
        return parse(yaml.safe_load(file.read_text()), str(file))
    path = resources.files("factors") / f"{domain}.yaml"
    if not path.is_file():
        raise FactorSetError(
            f"no bundled factor set for domain {domain!r} (have {bundled_domains()}); "
            f"run `kar factors discover --domain {domain!r}` and set factors.file"
        )
    return parse(yaml.safe_load(path.read_text()), f"factors/{domain}.yaml")
