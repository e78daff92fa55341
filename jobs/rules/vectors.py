"""Time travel over the vectors table: which version a ranking model saw, and what was in it.

Each adapt run that publishes overwrites `vectors` in one Delta commit, so that
commit's version names one published set of reasoning/fact vectors and its commit
time is when ranking models could first read it. The table has other commits too:
`kar maintain`'s compactions and vacuums and `kar forget`'s erasures. They are not
publishes (`tables.is_change`): a vectors version is always a publish's, and its rows
are read at the newest Delta version before the next publish, so an erased entity
stays erased and a vacuum of compacted files breaks no read. `--as-of T` picks the
latest publish committed at or before T (a bare date means 00:00 UTC that day, as in
Delta's `TIMESTAMP AS OF`).

    kar vectors --conf conf/local.yaml                      # the live version
    kar vectors --as-of 2026-11-15 --entity user:196        # what was served then
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from jobs.plumbing import schemas, tables
from jobs.plumbing.errors import InputError
from jobs.plumbing.storage import Location


class VersionError(InputError):
    """A requested vectors version or as-of time does not exist; names what does."""


@dataclass(frozen=True)
class Snapshot:
    """One published vectors version: the publish's Delta version (what feature tables and
    reports call the vectors version), the Delta version its rows are read at, its commit
    time and commit metadata."""

    path: Location
    version: int
    rows_version: int
    committed_at: datetime
    metadata: dict[str, str]


def parse_as_of(text: str) -> datetime:
    """`2026-11-15` (00:00 UTC) or an ISO time (`2026-11-15T08:00`; UTC unless it has an offset)."""
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        moment = datetime.fromisoformat(text)
    except ValueError as e:
        raise VersionError(
            f"--as-of {text!r} is not a date or time; use YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS]"
        ) from e
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def add_selector_args(parser: argparse.ArgumentParser) -> None:
    """`--version N | --as-of T`, shared by `kar vectors` and `kar join`."""
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, default=None, help="Delta version of `vectors`")
    which.add_argument(
        "--as-of",
        type=parse_as_of,
        default=None,
        metavar="DATE|TIME",
        help="latest version committed at or before this (YYYY-MM-DD = 00:00 UTC)",
    )


def _publishes(path: Location) -> list[dict[str, Any]]:
    """The publishes of the vectors table, oldest first (the change commits: every other
    commit is maintenance or an erasure)."""
    publishes = list(tables.changes(path))
    if not publishes:
        raise VersionError(
            f"no vectors table at {path}; run the weekly job (kar run) or kar adapt first"
        )
    return publishes[::-1]


def _snapshot(path: Location, publishes: list[dict[str, Any]], index: int) -> Snapshot:
    commit = publishes[index]
    skip = {"timestamp", "operation", "operationParameters", "operationMetrics", "version"}
    meta = {
        k: str(v)
        for k, v in commit.items()
        if k not in skip and not k.startswith(("engine", "client", "read"))
    }
    return Snapshot(
        path=path,
        version=int(commit["version"]),
        rows_version=tables.current_of(path, int(commit["version"])),
        committed_at=datetime.fromtimestamp(commit["timestamp"] / 1000, UTC),
        metadata=meta,
    )


def latest(path: Location) -> Snapshot | None:
    """The live (last published) vectors version, or None before the first publish."""
    try:
        return resolve(path)
    except VersionError:
        return None


def resolve(path: Location, version: int | None = None, as_of: datetime | None = None) -> Snapshot:
    """The vectors version asked for: `version`, the one live at `as_of`, or the latest."""
    publishes = _publishes(path)
    if version is not None:
        match = [i for i, c in enumerate(publishes) if c["version"] == version]
        if not match:
            listed = ", ".join(str(c["version"]) for c in publishes[-10:])
            raise VersionError(
                f"vectors table {path} has no published version {version}; its latest "
                f"published versions are {listed} (kar vectors shows the live one)"
            )
        return _snapshot(path, publishes, match[0])
    if as_of is not None:
        cutoff = as_of.timestamp() * 1000
        before = [i for i, c in enumerate(publishes) if c["timestamp"] <= cutoff]
        if not before:
            first = _snapshot(path, publishes, 0)
            raise VersionError(
                f"no vectors were published at or before {as_of.isoformat()}: the first version "
                f"of {path} was committed at {first.committed_at.isoformat()}"
            )
        return _snapshot(path, publishes, before[-1])
    return _snapshot(path, publishes, len(publishes) - 1)


def previous(snapshot: Snapshot) -> Snapshot | None:
    """The version published before `snapshot` (last week's vectors), or None for the first."""
    publishes = _publishes(snapshot.path)
    earlier = [i for i, c in enumerate(publishes) if c["version"] < snapshot.version]
    return _snapshot(snapshot.path, publishes, earlier[-1]) if earlier else None


def read(snapshot: Snapshot) -> pa.Table:
    """The rows of that version, in the declared schema (whole: for small tables, tests)."""
    return tables.read(snapshot.path, schemas.VECTORS, snapshot.rows_version)


def batches(
    snapshot: Snapshot,
    columns: list[str] | None = None,
    batch_rows: int = 50_000,
    where: pc.Expression | None = None,
) -> Iterator[pa.Table]:
    """`columns` of that version's rows (matching `where`) in batches of at most
    `batch_rows`: a streamed read whose memory does not grow with the table."""
    yield from tables.scan(
        snapshot.path, schemas.VECTORS, snapshot.rows_version, columns, where, batch_rows
    )


def parse_entity(text: str) -> tuple[str, str]:
    kind, sep, entity_id = text.partition(":")
    if not sep or kind not in schemas.KINDS or not entity_id:
        raise VersionError(f"--entity {text!r} must look like user:ID or item:ID")
    return kind, entity_id


def describe(snapshot: Snapshot, entities: list[str] | None = None) -> dict[str, Any]:
    """What `kar vectors` prints: version, commit time, counts, models, asked-for vectors.

    Streamed batch by batch: counts and the (few) distinct ids and models are kept, and
    vectors only for the asked-for entities.
    """
    columns = ["version_id", "kind", "dim", "llm_model", "encoder_model"]
    seen: dict[str, set] = {c: set() for c in columns}
    kinds = {k: 0 for k in schemas.KINDS}
    for batch in batches(snapshot, columns):
        for column in columns:
            seen[column] |= set(pc.unique(batch.column(column)).to_pylist())
        counts = batch.group_by("kind").aggregate([("kind", "count")]).to_pylist()
        for row in counts:
            kinds[row["kind"]] = kinds.get(row["kind"], 0) + row["kind_count"]
    out: dict[str, Any] = {
        "path": str(snapshot.path),
        "version": snapshot.version,
        "committed_at": snapshot.committed_at.isoformat(),
        "version_ids": sorted(seen["version_id"]),
        "users": kinds["user"],
        "items": kinds["item"],
        "dims": sorted(seen["dim"]),
        "llm_models": sorted(seen["llm_model"]),
        "encoder_models": sorted(seen["encoder_model"]),
        "commit": snapshot.metadata,
    }
    if entities:
        wanted = {parse_entity(e) for e in entities}
        ids = pa.array(sorted({i for _, i in wanted}), pa.string())
        found = {
            f"{r['kind']}:{r['entity_id']}": r["vector"]
            for batch in batches(
                snapshot, ["kind", "entity_id", "vector"], where=pc.field("entity_id").isin(ids)
            )
            for r in batch.to_pylist()
            if (r["kind"], r["entity_id"]) in wanted
        }
        out["vectors"] = {f"{k}:{i}": found.get(f"{k}:{i}") for k, i in sorted(wanted)}
    return out
