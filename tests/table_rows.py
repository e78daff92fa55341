"""Rows of the declared Delta tables for tests, so a schema change is mended in one place.

Every column gets a plausible value; a test overrides the ones its assertions are about.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from jobs.plumbing import schemas

WHEN = datetime(2026, 11, 16, tzinfo=UTC)


def prompt_row(kind: str = "user", entity_id: str = "u1", **columns: Any) -> dict[str, Any]:
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


def knowledge_row(kind: str = "user", entity_id: str = "u1", **columns: Any) -> dict[str, Any]:
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


def vector_row(
    kind: str = "user", entity_id: str = "u1", vector: Sequence[float] = (1.0, 0.0), **columns: Any
) -> dict[str, Any]:
    """One `vectors` row of version `live`, its dim the vector's length."""
    return {
        "version_id": "live",
        "kind": kind,
        "entity_id": entity_id,
        "dim": len(vector),
        "vector": [float(x) for x in vector],
        "fingerprint": f"fp-{entity_id}",
        "llm_model": "bundled:smollm2-135m-instruct",
        "encoder_model": "bundled:all-MiniLM-L6-v2",
        "adaptor": "test",
        "input_fingerprint": "live-inputs",
        "created_at": WHEN,
    } | columns


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
    rows = [
        vector_row(kind, eid, vec)
        | {
            "version_id": version_id,
            "fingerprint": (fingerprints or {}).get((kind, eid), f"fp-{eid}"),
            "input_fingerprint": f"{version_id}-inputs",
        }
        | columns
        for (kind, eid), vec in entries.items()
    ]
    return pa.Table.from_pylist(rows, schema=schemas.VECTORS)


def embedding_row(kind: str = "user", entity_id: str = "u1", **columns: Any) -> dict[str, Any]:
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


def sample_row(user_id: str = "u1", item_id: str = "i1", **columns: Any) -> dict[str, Any]:
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


def attribute_row(kind: str = "item", entity_id: str = "i1", **columns: Any) -> dict[str, Any]:
    """One `attributes` row: an item's genre or a user's age."""
    attribute, value = ("genre", "Drama") if kind == "item" else ("age", "25")
    return {"kind": kind, "entity_id": entity_id, "attribute": attribute, "value": value} | columns


def cohort_row(user_id: str = "u1", **columns: Any) -> dict[str, Any]:
    """One `cohort` row: a member chosen by run-1."""
    return {"user_id": user_id, "state": "member", "reason": None, "run_id": "run-1"} | columns


def run_row(run_id: str = "run-1", **columns: Any) -> dict[str, Any]:
    """One `runs` row: a `kar run` that answered 6 prompts with 7 requests, one retried."""
    return {
        "run_id": run_id,
        "command": "run",
        "started_at": WHEN - timedelta(minutes=5),
        "finished_at": WHEN,
        "engine": "transformers",
        "model_id": "bundled:smollm2-135m-instruct",
        "prompts": 6,
        "prompts_generated": 6,
        "requests": 7,
        "input_tokens": 1200,
        "output_tokens": 380,
        "output_tokens_per_s": 42.0,
        "stage_seconds": {"prepare": 12.0, "generate": 30.0, "encode": 4.0, "total": 50.0},
        "statuses": {"ok": 6},
        "unusable": 0,
        "history_truncated": 0,
        "cluster_tokens_per_gpu_s": 2500.0,
        "gpu_hours": 0.0001,
    } | columns


def stage_row(stage: str = "prepare", **columns: Any) -> dict[str, Any]:
    """One `stages` row: prepare published the first versions of its tables."""
    return {
        "run_id": "run-1",
        "stage": stage,
        "versions": {"prompts": 0, "samples": 0, "attributes": 0},
        "finished_at": WHEN,
        "as_of": WHEN,
        "prompts_due": 0,
    } | columns


# The row builder of every declared table; tests/test_table_rows.py checks that each table
# in schemas.TABLES has one and that its default row conforms to the declared schema.
ROW_BUILDERS: dict[str, Callable[..., dict[str, Any]]] = {
    "prompts": prompt_row,
    "knowledge": knowledge_row,
    "embeddings": embedding_row,
    "vectors": vector_row,
    "samples": sample_row,
    "attributes": attribute_row,
    "cohort": cohort_row,
    "runs": run_row,
    "stages": stage_row,
}


def table_of(name: str, rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Rows of declared table `name` (schemas.TABLES) as Arrow."""
    return pa.Table.from_pylist(list(rows), schema=schemas.TABLES[name])
