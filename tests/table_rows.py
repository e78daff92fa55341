"""Rows of the declared Delta tables for tests, so a schema change is mended in one place.

Every column gets a plausible value; a test overrides the ones its assertions are about.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from jobs import schemas

WHEN = datetime(2026, 11, 16, tzinfo=UTC)


def prompt_row(kind: str, entity_id: str, **columns: Any) -> dict[str, Any]:
    """One `prompts` row as prepare writes it (production window for users)."""
    return {
        "run_id": "prep-1",
        "kind": kind,
        "entity_id": entity_id,
        "prompt": "p",
        "context": "c",
        "fingerprint": f"fp-{entity_id}",
        "model_id": "bundled:smollm2-135m-instruct",
        "factor_version": "f",
        "template_version": "t",
        "window": "production" if kind == "user" else "item",
        "as_of": WHEN,
        "history_end": 0,
        "settings": "s",
        "created_at": WHEN,
    } | columns


def prompts_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=schemas.PROMPTS)


def knowledge_row(kind: str, entity_id: str, **columns: Any) -> dict[str, Any]:
    """One `knowledge` row: a usable `ok` answer unless `columns` say otherwise.

    `columns` may be a whole `prompts` row (the answer to that prompt); keys the
    schema lacks are dropped by `knowledge_table`.
    """
    return {
        "kind": kind,
        "entity_id": entity_id,
        "fingerprint": f"fp-{entity_id}",
        "prompt": "p",
        "context": "c",
        "text": "t",
        "model_id": "bundled:smollm2-135m-instruct",
        "factor_version": "f",
        "template_version": "t",
        "input_tokens": 10,
        "output_tokens": 20,
        "finish_reason": "stop",
        "status": "ok",
        "attempts": 1,
        "usable": True,
        "history_dropped": 0,
        "run_id": "r",
        "generated_at": WHEN,
        "window": "production" if kind == "user" else "item",
        "as_of": WHEN,
        "history_end": 0,
        "settings": "s",
    } | columns


def knowledge_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=schemas.KNOWLEDGE)


def vectors_table(
    entries: Mapping[tuple[str, str], Sequence[float]],
    version_id: str = "live",
    fingerprints: Mapping[tuple[str, str], str] | None = None,
    **columns: Any,
) -> pa.Table:
    """`vectors` rows as a run would publish them: one per (kind, entity_id) -> vector.

    `fingerprints` sets an entity's knowledge fingerprint (default `fp-<id>`);
    `columns` overrides what a version holds alike for every row (models, adaptor,
    input fingerprint, created_at).
    """
    alike = {
        "llm_model": "bundled:smollm2-135m-instruct",
        "encoder_model": "bundled:all-MiniLM-L6-v2",
        "adaptor": "test",
        "input_fingerprint": f"{version_id}-inputs",
        "created_at": WHEN,
    } | columns
    rows = [
        {
            "version_id": version_id,
            "kind": kind,
            "entity_id": eid,
            "dim": len(vec),
            "vector": [float(x) for x in vec],
            "fingerprint": (fingerprints or {}).get((kind, eid), f"fp-{eid}"),
            **alike,
        }
        for (kind, eid), vec in entries.items()
    ]
    return pa.Table.from_pylist(rows, schema=schemas.VECTORS)


def embedding_row(kind: str, entity_id: str, **columns: Any) -> dict[str, Any]:
    """One `embeddings` row: a 4-d text vector of the entity's `fp-<id>` answer."""
    return {
        "kind": kind,
        "entity_id": entity_id,
        "fingerprint": f"fp-{entity_id}",
        "encoder_model": "bundled:all-MiniLM-L6-v2",
        "dim": 4,
        "embedding": [0.1, 0.2, 0.3, 0.4],
        "encoded_at": WHEN,
    } | columns


def sample_row(user_id: str, item_id: str, **columns: Any) -> dict[str, Any]:
    """One `samples` row: a positive at position 5 after two history items."""
    return {
        "user_id": user_id,
        "item_id": item_id,
        "label": 1,
        "rating": 5.0,
        "timestamp": 1_000,
        "position": 5,
        "history_item_ids": ["h1", "h2"],
        "history_ratings": [4.0, 2.0],
        "split": "train",
    } | columns


def table_of(name: str, rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Rows of declared table `name` (schemas.TABLES) as Arrow."""
    return pa.Table.from_pylist(list(rows), schema=schemas.TABLES[name])
