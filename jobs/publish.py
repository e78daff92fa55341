"""publish: serve the live vectors version through the Feast feature store.

Two steps. (1) The live version is appended to the feature tables
`features_user` / `features_item` (one row per entity and vectors version,
event_timestamp = the version's commit time), the offline store of the Feast
repo in `conf/feast/`. (2) With `--online`, the repo is applied and that version
is written into the online store (SQLite by default, Redis by config), where
ranking services read it with `get_online_features`. Feast has no per-key delete,
so an entity absent from the new version keeps its old online row; every row
carries `vectors_version`, which lets a service tell it is stale.

Scale: both steps stream the vectors version in batches of feature_store.batch_rows
(a pyarrow scan of the Delta snapshot); each batch becomes one Parquet file per
feature table and one `write_to_online_store` call, and is then dropped, so memory
does not grow with the entity count. The files are committed with one append per
feature table that records the vectors version in its commit metadata; a table
that already records it is skipped, so a rerun adds nothing (no MERGE, no read of
the feature tables' rows).

    kar publish --conf conf/local.yaml --online
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from jobs.plumbing import faults, schemas, tables
from jobs.plumbing.config import Config
from jobs.plumbing.feature_store import online_store
from jobs.plumbing.storage import Location
from jobs.rules.vectors import Snapshot, batches, resolve

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)

# (kind, feature table, its schema, id column, vector column)
FEATURE_TABLES = (
    ("user", "features_user", schemas.USER_FEATURES, "user_id", "reasoning"),
    ("item", "features_item", schemas.ITEM_FEATURES, "item_id", "fact"),
)


@dataclass(frozen=True)
class PublishResult:
    vectors_version: int
    users: int
    items: int
    feature_table_versions: dict[str, int]
    online_store: str | None
    seconds: float


def feature_rows(snapshot: Snapshot, batch: pa.Table) -> dict[str, pa.Table]:
    """Per feature table, the rows of one batch of `snapshot` (kind, entity_id, vector) in
    its declared schema."""
    n = batch.num_rows
    when = pa.array([snapshot.committed_at] * n, schemas.UTC_US)
    version = pa.array([snapshot.version] * n, pa.int64())
    out = {}
    for kind, name, schema, id_col, vec_col in FEATURE_TABLES:
        keep = pc.equal(batch.column("kind"), kind)
        part = pa.table(
            {
                id_col: batch.column("entity_id"),
                vec_col: batch.column("vector"),
                "vectors_version": version,
                "event_timestamp": when,
            }
        ).filter(keep)
        out[name] = tables.conform(part, schema, name)
    return out


def _holds(path: Location, version: int) -> bool:
    """Whether a commit of the feature table at `path` recorded vectors version `version`
    (from the log's commit metadata: no row is read)."""
    table = tables.open_table(path)
    return table is not None and any(
        c.get("vectors_version") == str(version) for c in table.history()
    )


def publish_batches(
    conf: Config, snapshot: Snapshot, online: FeatureStore | None = None
) -> tuple[dict[str, int], dict[str, int]]:
    """Stream `snapshot` in batches of feature_store.batch_rows: each batch's rows become
    one file per feature table that lacks this version, and (with `online`) are written to
    the online store. The files are committed per table in one append at the end, with
    the version in the commit metadata, so a rerun adds nothing and a killed run adds no
    row. Returns (rows per feature table, their Delta versions); no batch is kept.
    """
    todo = {
        name: not _holds(conf.table_path(name), snapshot.version) for _, name, *_ in FEATURE_TABLES
    }
    parts: dict[str, list[dict]] = {name: [] for name in todo}
    counts = dict.fromkeys(todo, 0)
    columns = ["kind", "entity_id", "vector"]
    for batch in batches(snapshot, columns, conf.feature_store.batch_rows):
        rows = feature_rows(snapshot, batch)
        for kind, name, schema, *_ in FEATURE_TABLES:
            counts[name] += rows[name].num_rows
            if not rows[name].num_rows:
                continue
            if todo[name]:
                parts[name].append(tables.write_part(conf.table_path(name), rows[name], schema))
            if online is not None:
                online.write_to_online_store(f"kar_{kind}", rows[name].to_pandas())
    versions = {}
    for _, name, schema, *_ in FEATURE_TABLES:
        path = conf.table_path(name)
        if todo[name]:
            metadata = {"vectors_version": str(snapshot.version)}
            tables.commit_parts(path, parts[name], schema, metadata=metadata)
        else:
            log.info("%s already holds vectors version %d", name, snapshot.version)
        versions[name] = tables.version(path)
    return counts, versions


def run(conf: Config, online: bool = False) -> PublishResult:
    started = time.monotonic()
    snapshot = resolve(conf.table_path("vectors"))
    # Offline first: a run killed before the online store has its feature tables written.
    counts, versions = publish_batches(conf, snapshot)
    log.info(
        "feature tables hold vectors version %d (%d users, %d items)",
        snapshot.version,
        counts["features_user"],
        counts["features_item"],
    )
    faults.point("publish:before-online")
    if online:
        store = online_store(conf)
        publish_batches(conf, snapshot, online=store)
        log.info(
            "feature store: vectors version %d online (%s)",
            snapshot.version,
            conf.feature_store.online_store,
        )
    return PublishResult(
        vectors_version=snapshot.version,
        users=counts["features_user"],
        items=counts["features_item"],
        feature_table_versions=versions,
        online_store=conf.feature_store.online_store if online else None,
        seconds=time.monotonic() - started,
    )
