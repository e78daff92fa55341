"""Small verbs over Delta tables (delta-rs): read, overwrite, insert-new, commit metadata.

Every write is checked against the table's declared Arrow schema first, so a
bad batch fails before a commit and the table keeps its last good version.
A Delta commit is atomic: a write either lands whole or not at all.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Field, write_deltalake
from deltalake.exceptions import TableNotFoundError

from jobs.schemas import STAGES

log = logging.getLogger(__name__)


class SchemaError(ValueError):
    """Data does not match a table's declared schema; names the table and column."""


def conform(data: pa.Table, schema: pa.Schema, name: str) -> pa.Table:
    """Select, order and cast `data` to `schema`; fail on missing columns or nulls."""
    missing = [f.name for f in schema if f.name not in data.column_names]
    if missing:
        raise SchemaError(f"table {name!r}: missing column(s) {missing}")
    columns = []
    for field in schema:
        col = data.column(field.name)
        if not field.nullable and col.null_count:
            raise SchemaError(f"table {name!r}: column {field.name!r} has {col.null_count} null(s)")
        try:
            columns.append(col.cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise SchemaError(
                f"table {name!r}: column {field.name!r} of type {col.type} "
                f"cannot be stored as {field.type}: {e}"
            ) from e
    return pa.Table.from_arrays(columns, schema=schema)


def open_table(path: Path, version: int | None = None) -> DeltaTable | None:
    """The Delta table at `path` (optionally at `version`), or None if none exists yet."""
    try:
        return DeltaTable(str(path), version=version)
    except TableNotFoundError:
        return None


def version(path: Path) -> int | None:
    table = open_table(path)
    return None if table is None else table.version()


def read(path: Path, schema: pa.Schema, version: int | None = None) -> pa.Table:
    """The table's rows as Arrow in the declared schema; empty if the table does not exist."""
    table = open_table(path, version)
    if table is None:
        return schema.empty_table()
    return conform(pa.table(table.to_pyarrow_table()), schema, path.name)


def latest_rows(table: pa.Table, keys: list[str], order: list[str]) -> pa.Table:
    """Per `keys`, the one row that sorts last by `order` (latest time, then tie-breakers).

    Append-only tables (knowledge, embeddings) keep history; readers want the current row.
    """
    indexed = table.append_column("_row", pa.array(np.arange(table.num_rows)))
    # Nulls sort first: a row that lacks an ordering value (written before the column
    # existed) is older than any row that has it.
    ordered = indexed.sort_by([(c, "ascending", "at_start") for c in [*keys, *order]])
    last = ordered.group_by(keys, use_threads=False).aggregate([("_row", "last")])
    return table.take(last.column("_row_last"))


def _commit(metadata: Mapping[str, str] | None) -> CommitProperties | None:
    return CommitProperties(custom_metadata=dict(metadata)) if metadata else None


def overwrite(
    path: Path, data: pa.Table, schema: pa.Schema, metadata: Mapping[str, str] | None = None
) -> int:
    """Replace the table's contents in one commit; returns the new Delta version."""
    data = conform(data, schema, path.name)
    # schema_mode: a table written by an older release takes the declared schema.
    write_deltalake(
        str(path),
        data,
        mode="overwrite",
        schema_mode="overwrite",
        commit_properties=_commit(metadata),
    )
    new = DeltaTable(str(path)).version()
    log.info("wrote %d rows to %s (version %d)", data.num_rows, path, new)
    return new


def insert_new(
    path: Path,
    data: pa.Table,
    schema: pa.Schema,
    keys: Sequence[str],
    metadata: Mapping[str, str] | None = None,
) -> int:
    """Insert the rows whose `keys` are not in the table yet (a Delta MERGE); returns the version.

    Idempotent: replaying the same batch after a crash adds nothing, so no key
    ever has two rows.
    """
    data = conform(data, schema, path.name)
    table = open_table(path)
    if table is None:
        write_deltalake(str(path), data, mode="error", commit_properties=_commit(metadata))
        return DeltaTable(str(path)).version()
    predicate = " AND ".join(f"t.{k} = s.{k}" for k in keys)
    metrics = (
        table.merge(
            data,
            predicate=predicate,
            source_alias="s",
            target_alias="t",
            commit_properties=_commit(metadata),
        )
        .when_not_matched_insert_all()
        .execute()
    )
    log.debug("merge into %s: %s", path, metrics)
    return table.version()


def evolve(path: Path, schema: pa.Schema) -> None:
    """Add the declared nullable columns an existing table lacks (tables of older releases).

    Old rows read as null in them; a no-op for a missing or up-to-date table.
    """
    table = open_table(path)
    if table is None:
        return
    have = set(table.schema().to_arrow().names)
    missing = [f for f in schema if f.name not in have]
    if not missing:
        return
    required = [f.name for f in missing if not f.nullable]
    if required:
        raise SchemaError(
            f"table {path.name!r} at {path} lacks required column(s) {required}; "
            "it was written by an incompatible release: move it away and rerun"
        )
    table.alter.add_columns([Field.from_arrow(f) for f in missing])
    log.info("table %s: added column(s) %s", path.name, [f.name for f in missing])


def commit_metadata(path: Path, key: str) -> str | None:
    """`key` from the custom metadata of the table's latest commit, if any."""
    table = open_table(path)
    if table is None:
        return None
    latest = table.history(1)
    return latest[0].get(key) if latest else None


def record_stage(path: Path, run_id: str, stage: str, versions: Mapping[str, int]) -> None:
    """Append that `run_id` completed `stage`, publishing these table versions together."""
    row = {"run_id": run_id, "stage": stage, "versions": list(versions.items())}
    row["finished_at"] = datetime.now(UTC)
    write_deltalake(str(path), pa.Table.from_pylist([row], schema=STAGES), mode="append")


def pinned(path: Path, stage: str, table: str) -> int | None:
    """The version of `table` the last completed `stage` published (None: no record, e.g. a
    table of an older release; read the latest then)."""
    stages = open_table(path)
    if stages is None:
        return None
    rows = stages.to_pyarrow_table(filters=[("stage", "=", stage)])
    if rows.num_rows == 0:
        return None
    latest = rows.sort_by([("finished_at", "ascending")]).slice(rows.num_rows - 1)
    return dict(latest.column("versions")[0].as_py()).get(table)


def read_published(path: Path, schema: pa.Schema, stage: str) -> tuple[pa.Table, int | None]:
    """(rows, version) of `path`'s table as the last completed `stage` published it, from
    the `stages` table beside it; the latest version where no stage recorded it."""
    pinned_version = pinned(path.parent / "stages", stage, path.name)
    at = version(path) if pinned_version is None else pinned_version
    return read(path, schema, at), at
