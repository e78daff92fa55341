"""publish: serve the live vectors version through the Feast feature store.

Two steps. (1) The live version is appended to the feature tables
`features_user` / `features_item` (one row per entity and vectors version,
event_timestamp = the version's commit time), the offline store of the Feast
repo in `conf/feast/`; a MERGE on (id, vectors_version) makes a rerun add
nothing. (2) With `--online`, the repo is applied and that version is
materialized into the online store (SQLite by default, Redis by config), where
ranking services read it with `get_online_features`. Feast has no per-key delete,
so an entity absent from the new version keeps its old online row; every row
carries `vectors_version`, which lets a service tell it is stale.

    kar publish --conf conf/local.yaml --online
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from jobs import faults, schemas, tables
from jobs.config import Config, ConfigError
from jobs.vectors import Snapshot, read, resolve

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)

# (kind, feature table, its schema, id column, vector column)
FEATURE_TABLES = (
    ("user", "features_user", schemas.USER_FEATURES, "user_id", "reasoning"),
    ("item", "features_item", schemas.ITEM_FEATURES, "item_id", "fact"),
)
DEFINITIONS_FILE = "kar_features.py"


@dataclass(frozen=True)
class PublishResult:
    vectors_version: int
    users: int
    items: int
    feature_table_versions: dict[str, int]
    online_store: str | None
    seconds: float


def feature_rows(snapshot: Snapshot) -> dict[str, pa.Table]:
    """Per feature table, that version's rows in its declared schema."""
    rows = read(snapshot)
    when = pa.array([snapshot.committed_at] * rows.num_rows, schemas.UTC_US)
    version = pa.array([snapshot.version] * rows.num_rows, pa.int64())
    out = {}
    for kind, name, schema, id_col, vec_col in FEATURE_TABLES:
        keep = pc.equal(rows.column("kind"), kind)
        part = pa.table(
            {
                id_col: rows.column("entity_id"),
                vec_col: rows.column("vector"),
                "vectors_version": version,
                "event_timestamp": when,
            }
        ).filter(keep)
        out[name] = tables.conform(part, schema, name)
    return out


def write_feature_tables(conf: Config, rows: dict[str, pa.Table], version: int) -> dict[str, int]:
    """Append one version's rows to the feature tables (idempotent); returns Delta versions."""
    return {
        name: tables.insert_new(
            conf.table_path(name),
            rows[name],
            schema,
            keys=[id_col, "vectors_version"],
            metadata={"vectors_version": str(version)},
        )
        for _, name, schema, id_col, _ in FEATURE_TABLES
    }


def _repo_file(conf: Config) -> Path:
    store = conf.feature_store.online_store
    name = "feature_store.yaml" if store == "sqlite" else f"feature_store.{store}.yaml"
    path = conf.feature_store.repo / name
    if not path.exists():
        raise ConfigError(
            f"feature_store.repo: {path} does not exist; point feature_store.repo at a Feast repo "
            "like conf/feast (with feature_store.yaml and kar_features.py)"
        )
    return path


def feature_store(conf: Config) -> tuple[FeatureStore, ModuleType]:
    """The configured Feast store and the repo's definitions module, paths set from `conf`."""
    from feast import FeatureStore

    yaml_file = _repo_file(conf)
    feast_dir = (conf.run.output_dir / "feast").resolve()
    feast_dir.mkdir(parents=True, exist_ok=True)
    # feature_store*.yaml and kar_features.py read these; see conf/feast/feature_store.yaml.
    os.environ["KAR_FEAST_DIR"] = str(feast_dir)
    os.environ["KAR_FEAST_TABLES"] = str((conf.run.output_dir / "tables").resolve())
    os.environ["KAR_REDIS"] = conf.feature_store.redis
    spec = importlib.util.spec_from_file_location(
        "kar_feast_definitions", conf.feature_store.repo / DEFINITIONS_FILE
    )
    if spec is None or spec.loader is None or not Path(spec.origin or "").exists():
        raise ConfigError(f"feature_store.repo: no {DEFINITIONS_FILE} in {conf.feature_store.repo}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    store = FeatureStore(repo_path=str(conf.feature_store.repo), fs_yaml_file=yaml_file)
    return store, module


def materialize(conf: Config, snapshot: Snapshot) -> None:
    """Apply the repo and load `snapshot` (the live version) into the online store."""
    store, definitions = feature_store(conf)
    store.apply(definitions.DEFINITIONS)
    # Every row of this version carries its commit time; later versions are newer still.
    start = snapshot.committed_at - timedelta(seconds=1)
    store.materialize(start_date=start, end_date=datetime.now(UTC) + timedelta(seconds=1))
    log.info(
        "feature store: vectors version %d online (%s)",
        snapshot.version,
        conf.feature_store.online_store,
    )


def run(conf: Config, online: bool = False) -> PublishResult:
    started = time.monotonic()
    snapshot = resolve(conf.table_path("vectors"))
    rows = feature_rows(snapshot)
    versions = write_feature_tables(conf, rows, snapshot.version)
    counts = {name: table.num_rows for name, table in rows.items()}
    log.info(
        "feature tables hold vectors version %d (%d users, %d items)",
        snapshot.version,
        counts["features_user"],
        counts["features_item"],
    )
    faults.point("publish:before-online")
    if online:
        materialize(conf, snapshot)
    return PublishResult(
        vectors_version=snapshot.version,
        users=counts["features_user"],
        items=counts["features_item"],
        feature_table_versions=versions,
        online_store=conf.feature_store.online_store if online else None,
        seconds=time.monotonic() - started,
    )


if __name__ == "__main__":
    from jobs import cli

    cli.main(["publish", *sys.argv[1:]])
