"""Small verbs over Delta tables (delta-rs): read, overwrite, insert-new, commit metadata.

A table is named by its location (`storage.Location`, or a path or URI that becomes one):
delta-rs opens it with the location's storage options, workers write files through
`pyarrow.fs` at the same URI.

Every write is checked against the table's declared Arrow schema first, so a
bad batch fails before a commit and the table keeps its last good version.
A Delta commit is atomic: a write either lands whole or not at all.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, Field, Schema, write_deltalake
from deltalake.exceptions import TableNotFoundError
from deltalake.transaction import AddAction, create_table_with_add_actions

if TYPE_CHECKING:
    import ray.data

from jobs.plumbing.errors import InputError
from jobs.plumbing.schemas import STAGES
from jobs.plumbing.storage import Location, location

log = logging.getLogger(__name__)

# What names a table: its Location, or a path or URI (made a Location on the way in).
Where = Location | str | os.PathLike[str]

# A data file a worker wrote inside a table's directory, not yet part of the table: the row
# it hands back so the driver can commit it (`commit_parts`) without ever holding its rows.
PART = pa.schema(
    [
        pa.field("file", pa.string(), nullable=False),  # relative to the table directory
        pa.field("size", pa.int64(), nullable=False),
        pa.field("rows", pa.int64(), nullable=False),
        pa.field("modified_ms", pa.int64(), nullable=False),
        pa.field("stats", pa.string(), nullable=False),  # Delta file statistics (JSON)
    ]
)
# Delta keeps min/max of a string column as a prefix; short keys (kind, ids, fingerprints)
# are kept whole so readers can skip files, long texts are left out.
_STATS_MAX_CHARS = 64


class SchemaError(InputError):
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


def open_table(path: Where, version: int | None = None) -> DeltaTable | None:
    """The Delta table at `path` (optionally at `version`), or None if none exists yet."""
    loc = location(path)
    try:
        return DeltaTable(loc.uri, version=version, storage_options=loc.storage_options())
    except TableNotFoundError:
        return None


def version(path: Where) -> int | None:
    table = open_table(path)
    return None if table is None else table.version()


def read(path: Where, schema: pa.Schema, version: int | None = None) -> pa.Table:
    """The table's rows as Arrow in the declared schema; empty if the table does not exist."""
    table = open_table(path, version)
    if table is None:
        return schema.empty_table()
    return conform(pa.table(table.to_pyarrow_table()), schema, location(path).name)


def _with_filter_columns(
    schema: pa.Schema, wanted: pa.Schema, where: pc.Expression | None
) -> pa.Schema:
    """`wanted` plus the columns of `schema` that `where` names: a filter applied to each
    batch after reading needs them, the caller does not."""
    text = "" if where is None else str(where)
    named = [f.name for f in schema if f.name not in wanted.names and f.name in text]
    return pa.schema([*wanted, *(schema.field(n) for n in named)])


def _conform_filter(
    batch: pa.Table, read: pa.Schema, wanted: list[str], where: pc.Expression | None, name: str
) -> pa.Table:
    rows = conform(batch, read, name)
    if where is not None:
        rows = rows.filter(where)
    return rows.select(wanted)


def dataset(
    path: Where,
    schema: pa.Schema,
    version: int | None = None,
    columns: Sequence[str] | None = None,
    where: pc.Expression | None = None,
) -> ray.data.Dataset:
    """A Delta snapshot as a Ray Dataset that workers read file by file (streamed).

    `columns` of the declared `schema` (default all), rows matching `where`; empty with
    those columns if the table does not exist. Ray must be started (jobs/plumbing/ray_data.py).
    `where` is applied to each batch, not pushed into the scan (see `scan`).
    """
    import ray.data

    wanted = pa.schema([schema.field(c) for c in (columns or schema.names)])
    table = open_table(path, version)
    if table is None or not table.file_uris():
        return ray.data.from_arrow(wanted.empty_table())
    read = _with_filter_columns(schema, wanted, where)
    loc = location(path)
    ds = ray.data.read_delta(
        loc.uri,
        version=table.version(),
        columns=read.names,
        storage_options=loc.storage_options(),
    )
    return ds.map_batches(
        _conform_filter,
        fn_args=(read, wanted.names, where, location(path).name),
        batch_format="pyarrow",
        batch_size=None,
    )


def scan(
    path: Where,
    schema: pa.Schema,
    version: int | None = None,
    columns: Sequence[str] | None = None,
    where: pc.Expression | None = None,
    batch_rows: int = 65_536,
) -> Iterator[pa.Table]:
    """`columns` of a Delta snapshot's rows matching `where`, batch by batch in this process
    (a pyarrow dataset scan); nothing if the table does not exist.

    One process, bounded memory: for readers that keep a bounded part of a table (a
    sample, the rows of some ids, counts) or hand each batch on (publish). Work that
    touches every row at scale goes through `dataset` instead. `where` is applied to each
    batch, not pushed into the scan: files a delta-rs MERGE wrote store strings as
    string_view, which pyarrow's statistics pruning cannot compare with a string literal.
    """
    wanted = pa.schema([schema.field(c) for c in (columns or schema.names)])
    table = open_table(path, version)
    if table is None:
        return
    read = _with_filter_columns(schema, wanted, where)
    # No read-ahead: by default pyarrow buffers 16 batches of 4 files, which alone outgrows
    # a bounded sample.
    scanner = table.to_pyarrow_dataset().scanner(
        columns=read.names, batch_size=batch_rows, batch_readahead=0, fragment_readahead=0
    )
    name = location(path).name
    for batch in scanner.to_batches():
        rows = _conform_filter(pa.Table.from_batches([batch]), read, wanted.names, where, name)
        if rows.num_rows:
            yield rows


def read_where(
    path: Where,
    schema: pa.Schema,
    where: pc.Expression,
    version: int | None = None,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """`scan`'s rows as one table (typed and empty when none match): for reads the filter
    bounds, such as the rows of a sample's entities."""
    batches = list(scan(path, schema, version, columns, where))
    if batches:
        return pa.concat_tables(batches)
    return pa.schema([schema.field(c) for c in (columns or schema.names)]).empty_table()


def count(path: Where, version: int | None = None) -> int:
    """Rows of the table from its log's file statistics (no data read); 0 if none."""
    table = open_table(path, version)
    if table is None:
        return 0
    actions = pa.table(table.get_add_actions(flatten=True))
    return pc.sum(actions.column("num_records")).as_py() or 0 if actions.num_rows else 0


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
    path: Where, data: pa.Table, schema: pa.Schema, metadata: Mapping[str, str] | None = None
) -> int:
    """Replace the table's contents in one commit; returns the new Delta version."""
    path = location(path)
    data = conform(data, schema, path.name)
    # schema_mode: a table written by an older release takes the declared schema.
    write_deltalake(
        path.uri,
        data,
        mode="overwrite",
        schema_mode="overwrite",
        commit_properties=_commit(metadata),
        storage_options=path.storage_options(),
    )
    new = version(path)
    log.info("wrote %d rows to %s (version %d)", data.num_rows, path, new)
    return new


def insert_new(
    path: Where,
    data: pa.Table,
    schema: pa.Schema,
    keys: Sequence[str],
    metadata: Mapping[str, str] | None = None,
) -> int:
    """Insert the rows whose `keys` are not in the table yet (a Delta MERGE); returns the version.

    Idempotent: replaying the same batch after a crash adds nothing, so no key
    ever has two rows.
    """
    path = location(path)
    data = conform(data, schema, path.name)
    table = open_table(path)
    if table is None:
        write_deltalake(
            path.uri,
            data,
            mode="error",
            commit_properties=_commit(metadata),
            storage_options=path.storage_options(),
        )
        return version(path)
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


def evolve(path: Where, schema: pa.Schema) -> None:
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
            f"table {location(path).name!r} at {path} lacks required column(s) {required}; "
            "it was written by an incompatible release: move it away and rerun"
        )
    table.alter.add_columns([Field.from_arrow(f) for f in missing])
    log.info("table %s: added column(s) %s", location(path).name, [f.name for f in missing])


# Commits that keep every row a stage decides on: the maintenance chores (compaction and
# vacuum rewrite or delete files, not rows) and erasures, which `kar forget` carries into
# every table itself. Stages look past them: "unchanged" is decided from the last *change*.
MAINTENANCE_OPERATIONS = frozenset({"OPTIMIZE", "VACUUM START", "VACUUM END"})
# Commit metadata that marks a commit made by one of the job's own chores, e.g. an erasure.
CHORE_KEY = "kar_chore"
ERASURE = {CHORE_KEY: "forget"}


def is_change(commit: Mapping[str, Any]) -> bool:
    """Whether a commit (a `DeltaTable.history()` entry) changes what the stages read:
    not a compaction or vacuum, not an erasure (`ERASURE` in its metadata)."""
    return commit.get("operation") not in MAINTENANCE_OPERATIONS and CHORE_KEY not in commit


def _newest_first(path: Where) -> Iterator[dict[str, Any]]:
    """The table's commits, newest first; nothing if no table. The log is read a few
    commits at a time, so a caller that stops early reads only the commits it saw, not the
    table's whole history."""
    table = open_table(path)
    if table is None:
        return
    seen, limit = 0, 16
    while True:
        commits = table.history(limit)
        yield from commits[seen:]
        if len(commits) < limit:
            return
        seen, limit = len(commits), limit * 4


def changes(path: Where) -> Iterator[dict[str, Any]]:
    """The table's change commits (`is_change`), newest first; nothing if no table."""
    return (c for c in _newest_first(path) if is_change(c))


def erased_since(path: Where, at: int) -> bool:
    """Whether an erasure (`ERASURE`) was committed to the table after version `at`."""
    for commit in _newest_first(path):
        if commit["version"] <= at:
            return False
        if commit.get(CHORE_KEY) == ERASURE[CHORE_KEY]:
            return True
    return False


def last_change(path: Where, at: int | None = None) -> dict[str, Any] | None:
    """The newest change commit at or before version `at` (default: the latest), or None."""
    return next((c for c in changes(path) if at is None or c["version"] <= at), None)


def content_version(path: Where, at: int | None = None) -> int | None:
    """The version of the last change at or before `at`: the table's content identity. Two
    versions with one content version hold the same rows (up to erasures), so a stage keys
    its "inputs unchanged" decision on it, never on the latest version number."""
    commit = last_change(path, at)
    return None if commit is None else int(commit["version"])


def current_of(path: Where, at: int) -> int:
    """The newest version that holds version `at`'s rows: `at` plus the maintenance and
    erasures committed after it, before the next change. Readers of a pinned version read
    this one: its files survive a vacuum of the older ones, and it holds no erased row."""
    following = None
    for commit in changes(path):
        if commit["version"] <= at:
            break
        following = int(commit["version"])
    if following is not None:
        return following - 1
    latest = version(path)
    return at if latest is None else latest


def commit_metadata(path: Where, key: str) -> str | None:
    """`key` from the custom metadata of the table's last change (`last_change`), if any."""
    commit = last_change(path)
    return None if commit is None else commit.get(key)


def record_stage(
    path: Where,
    run_id: str,
    stage: str,
    versions: Mapping[str, int],
    as_of: datetime | None = None,
    prompts_due: int | None = None,
) -> None:
    """Append that `run_id` completed `stage` (for data cut at `as_of`), publishing these
    table versions together."""
    row = {"run_id": run_id, "stage": stage, "versions": list(versions.items()), "as_of": as_of}
    row["prompts_due"] = prompts_due
    row["finished_at"] = datetime.now(UTC)
    path = location(path)
    evolve(path, STAGES)  # a `stages` table of an older release gains the new columns
    rows = pa.Table.from_pylist([row], schema=STAGES)
    write_deltalake(path.uri, rows, mode="append", storage_options=path.storage_options())


def last_record(path: Where, stage: str) -> dict[str, Any] | None:
    """The `stages` row (at `path`) of the last completed `stage`, as a dict with
    `versions` a dict; None: no record, e.g. tables of an older release. A bounded read:
    one row per completed stage, filtered by stage."""
    stages = open_table(path)
    if stages is None:
        return None
    rows = stages.to_pyarrow_table(filters=[("stage", "=", stage)])
    if rows.num_rows == 0:
        return None
    latest = rows.sort_by([("finished_at", "ascending")]).slice(rows.num_rows - 1)
    row = latest.to_pylist()[0]
    return {**row, "versions": dict(row["versions"])}


def pinned(path: Where, stage: str, table: str) -> int | None:
    """The version of `table` to read as the last completed `stage` published it: the one it
    recorded, carried past the maintenance and erasures since (`current_of`). The latest
    version where no stage recorded one (a table of an older release); None: no table."""
    table_path = location(path).parent / table
    at = (last_record(path, stage) or {"versions": {}})["versions"].get(table)
    return version(table_path) if at is None else current_of(table_path, at)


def read_published(path: Where, schema: pa.Schema, stage: str) -> tuple[pa.Table, int | None]:
    """(rows, version) of `path`'s table as the last completed `stage` published it, from
    the `stages` table beside it (`pinned`)."""
    at = pinned(location(path).parent / "stages", stage, location(path).name)
    return read(path, schema, at), at


def _stats(data: pa.Table) -> str:
    """Delta file statistics: row count, null counts, and min/max of short scalar columns."""
    nulls, lows, highs = {}, {}, {}
    for name in data.column_names:
        col = data.column(name)
        nulls[name] = col.null_count
        if pa.types.is_integer(col.type) or pa.types.is_boolean(col.type):
            bounds = pc.min_max(col).as_py()
        elif pa.types.is_string(col.type) and col.length() > col.null_count:
            longest = pc.max(pc.utf8_length(col)).as_py()
            bounds = pc.min_max(col).as_py() if longest <= _STATS_MAX_CHARS else None
        else:
            continue
        if bounds and bounds["min"] is not None:
            lows[name], highs[name] = bounds["min"], bounds["max"]
    return json.dumps(
        {"numRecords": data.num_rows, "minValues": lows, "maxValues": highs, "nullCount": nulls}
    )


def write_part(path: Where, data: pa.Table, schema: pa.Schema) -> dict[str, Any]:
    """Write `data` as one new Parquet file in the table directory; return its PART row.

    Run by workers (Ray actors, Spark tasks): the rows go from the worker to storage and
    only this small row goes to the driver. The file is invisible to readers until the
    driver commits it; one never committed (a killed run) is removed by `vacuum`.
    """
    path = location(path)
    data = conform(data, schema, path.name)
    fs, root = path.filesystem()
    fs.create_dir(root, recursive=True)  # a no-op on object stores (no directories)
    name = f"part-{uuid.uuid4().hex}.parquet"
    pq.write_table(data, f"{root}/{name}", filesystem=fs)
    info = fs.get_file_info(f"{root}/{name}")
    return {
        "file": name,
        "size": info.size,
        "rows": data.num_rows,
        "modified_ms": int(info.mtime.timestamp() * 1000),
        "stats": _stats(data),
    }


def commit_parts(
    path: Where,
    parts: Iterable[Mapping[str, Any]],
    schema: pa.Schema,
    *,
    mode: Literal["append", "overwrite"] = "append",
    metadata: Mapping[str, str] | None = None,
    table: DeltaTable | None = None,
) -> int:
    """Add files that workers wrote (`write_part` rows) to the table in one commit.

    A commit carries file names, never rows (a MERGE reads the table). `table`: the
    table already open at its latest version (PartCommitter's), which the commit brings
    up to date by reading only the new log entry; opened here otherwise, which replays
    the log from its last checkpoint. "overwrite" replaces every file the table had.
    """
    actions = [
        AddAction(p["file"], p["size"], {}, p["modified_ms"], True, p["stats"]) for p in parts
    ]
    delta_schema = Schema.from_arrow(schema)
    table = table or open_table(path)
    if table is None:
        loc = location(path)
        create_table_with_add_actions(
            loc.uri,
            delta_schema,
            actions,
            mode="error",
            storage_options=loc.storage_options(),
            commit_properties=_commit(metadata),
        )
        new = version(loc)
    else:
        table.create_write_transaction(
            actions, mode=mode, schema=delta_schema, commit_properties=_commit(metadata)
        )
        table.update_incremental()
        new = table.version()
    log.info(
        "committed %d file(s), %d rows to %s (version %d)",
        len(actions),
        sum(p["rows"] for p in parts),
        path,
        new,
    )
    return new


class PartCommitter:
    """Commit worker-written files in chunks of about `every_rows` rows as they arrive.

    A crash loses at most the files not committed yet (the chunk in flight); `after`
    runs after each commit (fault points, progress).
    """

    def __init__(
        self,
        path: Where,
        schema: pa.Schema,
        every_rows: int,
        metadata: Mapping[str, str] | None = None,
        after: Callable[[int], None] | None = None,
    ) -> None:
        self.path, self.schema, self.every_rows = path, schema, every_rows
        self.metadata, self.after = metadata, after
        self.pending: list[Mapping[str, Any]] = []
        # Kept open across commits: reopening replays the log from its last checkpoint,
        # a cost that grows with the table's files (1M users: thousands of commits).
        self.table = open_table(path)
        self.version: int | None = None if self.table is None else self.table.version()
        self.rows = 0

    def add(self, part: Mapping[str, Any]) -> None:
        if part["rows"] == 0:
            # An empty file adds nothing; leave it for vacuum instead of committing it.
            return
        self.pending.append(part)
        if sum(p["rows"] for p in self.pending) >= self.every_rows:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        self.version = commit_parts(
            self.path, self.pending, self.schema, metadata=self.metadata, table=self.table
        )
        self.table = self.table or open_table(self.path)
        self.rows += sum(p["rows"] for p in self.pending)
        self.pending = []
        if self.after is not None:
            self.after(self.version)


def erase(path: Where, predicate: str) -> int:
    """Delete the rows matching `predicate` (SQL) in one commit marked `ERASURE`, so stages
    look past it (`is_change`); returns the rows deleted (0 if no table)."""
    table = open_table(path)
    if table is None:
        return 0
    metrics = table.delete(predicate, commit_properties=_commit(ERASURE))
    return int(metrics.get("num_deleted_rows", 0))


def compact(path: Where) -> dict[str, Any]:
    """Rewrite the table's small files into fewer large ones (delta-rs OPTIMIZE); readers
    see the same rows. Appends of many small parts make this the weekly run's chore."""
    table = open_table(path)
    if table is None:
        return {}
    metrics = table.optimize.compact()
    log.info("compacted %s: %s", path, metrics)
    return metrics


def vacuum(path: Where, retention_hours: int) -> list[str]:
    """Delete files no version newer than `retention_hours` uses, and files a killed run
    wrote but never committed; returns the deleted file names."""
    table = open_table(path)
    if table is None:
        return []
    # full=True also lists the directory: the lite mode only knows files the log removed,
    # not files a killed run wrote and never committed.
    deleted = table.vacuum(
        retention_hours=retention_hours, dry_run=False, enforce_retention_duration=False, full=True
    )
    log.info("vacuumed %s: %d file(s) deleted", path, len(deleted))
    return deleted
