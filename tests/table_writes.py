"""Delta tables as an earlier run would have left them, shared by the tests of the stages and
reports that read them (a test module imports helpers from here, never from another test module)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from table_rows import knowledge_row, knowledge_table, vectors_table

from jobs.plumbing import schemas, tables
from jobs.plumbing.config import Config


def write_live_vectors(
    conf: Config, values: Mapping[tuple[str, str], Sequence[float]], **columns: Any
) -> int:
    """A live vectors version as another run would have published it; returns its version.

    `columns` sets what the version holds alike for every row, as in `vectors_table`.
    """
    rows = vectors_table(values, **columns)
    return tables.overwrite(conf.table_path("vectors"), rows, schemas.VECTORS)


def write_answers(conf: Config, run_id: str, statuses: list[tuple[str, str]]) -> None:
    """Run `run_id`'s knowledge: one answer per (kind, status), entity ids 0, 1, ..."""
    rows = knowledge_table(
        knowledge_row(
            kind,
            str(i),
            fingerprint=f"fp{i}",
            text="answer",
            model_id="m",
            input_tokens=100 + i,
            output_tokens=50 + i,
            status=status,
            run_id=run_id,
            generated_at=datetime.now(UTC),
        )
        for i, (kind, status) in enumerate(statuses)
    )
    tables.overwrite(conf.table_path("knowledge"), rows, schemas.KNOWLEDGE)
