"""forget: delete one user or item from every table the job writes and from the online store.

An erasure request: every Delta table with rows of the entity loses them in one
delete commit per table (prompts, knowledge, embeddings, vectors, samples,
attributes, the feature tables and `kar evaluate`'s vectors), the feature
store's online row is deleted, and `kar evaluate`'s encoder cache (texts by
hash) is dropped. Older Delta versions still hold the rows until a VACUUM past
the retention period: the command prints it. The next run brings the entity
back only if the input still holds it, so delete it from the input too.

    kar forget --conf conf/local.yaml --user 196
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
from dataclasses import dataclass, field

from jobs.plumbing import tables
from jobs.plumbing.config import Config
from jobs.plumbing.feature_store import feature_store
from jobs.plumbing.storage import Location

log = logging.getLogger(__name__)

# Delta keeps removed files this long by default (delta.deletedFileRetentionDuration).
RETENTION_HOURS = 168
# kind -> table -> the column that holds the entity's id; `kind` is matched where it exists.
ENTITY_TABLES: dict[str, dict[str, str]] = {
    kind: {
        "prompts": "entity_id",
        "knowledge": "entity_id",
        "embeddings": "entity_id",
        "vectors": "entity_id",
        "attributes": "entity_id",
        "samples": f"{kind}_id",
        f"features_{kind}": f"{kind}_id",
    }
    for kind in ("user", "item")
}
ENTITY_TABLES["user"]["cohort"] = "user_id"  # a forgotten member frees its slot
_HAS_KIND = {"prompts", "knowledge", "embeddings", "vectors", "attributes"}


@dataclass
class ForgetResult:
    kind: str
    entity_id: str
    # table path -> rows deleted (tables that held none are left out)
    deleted: dict[str, int] = field(default_factory=dict)
    online_deleted: bool = False
    vacuum: list[str] = field(default_factory=list)


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _targets(conf: Config, kind: str) -> list[tuple[Location, str]]:
    """(table path, delete predicate column) of every table that can hold a `kind` row."""
    out = [(conf.table_path(name), col) for name, col in ENTITY_TABLES[kind].items()]
    out.append((conf.output("evaluate", "tables", "vectors"), "entity_id"))
    return out


def _delete_online(conf: Config, kind: str, entity_id: str) -> bool:
    """Delete the entity's online row; False when nothing was ever published online.

    Written by hand: Feast (0.67) has no per-entity delete, so this removes the row
    the way its SQLite and Redis stores key it (serialized entity key).
    """
    if not (conf.feast_dir() / "registry.db").is_file():
        return False
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    store, _ = feature_store(conf)
    cfg = store.config
    key = EntityKey(join_keys=[f"{kind}_id"], entity_values=[Value(string_val=entity_id)])
    version = cfg.entity_key_serialization_version
    if conf.feature_store.online_store == "redis":
        from feast.infra.online_stores.helpers import _redis_key

        client = store._get_provider().online_store._get_client(cfg.online_store)
        return bool(client.delete(_redis_key(cfg.project, key, version)))
    from feast.infra.online_stores.sqlite import SqliteOnlineStore, _table_id

    view = store.get_feature_view(f"kar_{kind}")
    table = _table_id(cfg.project, view, cfg.registry.enable_online_feature_view_versioning)
    with sqlite3.connect(SqliteOnlineStore._get_db_path(cfg)) as db:
        cur = db.execute(
            f'DELETE FROM "{table}" WHERE entity_key = ?',
            (serialize_entity_key(key, entity_key_serialization_version=version),),
        )
        return cur.rowcount > 0


def run(conf: Config, kind: str, entity_id: str) -> ForgetResult:
    result = ForgetResult(kind, entity_id)
    conf.feast_dir()  # where the online row would be: known before anything is deleted
    for path, column in _targets(conf, kind):
        predicate = f"{column} = {_literal(entity_id)}"
        if path.name in _HAS_KIND:
            predicate = f"kind = {_literal(kind)} AND {predicate}"
        n = tables.erase(path, predicate)
        if n:
            result.deleted[str(path)] = n
            result.vacuum.append(f"VACUUM delta.`{path}` RETAIN {RETENTION_HOURS} HOURS")
            log.info("forget %s %s: %d row(s) deleted from %s", kind, entity_id, n, path)
    cache = conf.evaluate_cache()
    if cache.is_dir():
        shutil.rmtree(cache)  # encoder inputs by hash: cannot be searched for one entity
    result.online_deleted = _delete_online(conf, kind, entity_id)
    if not result.deleted and not result.online_deleted:
        log.warning("forget %s %s: no table held it", kind, entity_id)
    return result


def report(result: ForgetResult) -> str:
    """What to tell the operator: what went, and the VACUUM that makes it physical."""
    lines = [
        f"{result.kind} {result.entity_id}: deleted "
        + (", ".join(f"{n} from {p}" for p, n in result.deleted.items()) or "nothing")
        + ("; online row deleted" if result.online_deleted else ""),
    ]
    if result.vacuum:
        lines += [
            f"Older Delta versions keep the rows until vacuumed; after {RETENTION_HOURS} hours "
            "(the retention period) run, e.g. in Spark SQL with the Delta connector:",
            *(f"  {v};" for v in result.vacuum),
            "or with deltalake: DeltaTable(path).vacuum(retention_hours="
            f"{RETENTION_HOURS}, dry_run=False) for each table above.",
        ]
    lines.append("Remove the entity from the input too, or the next run brings it back.")
    return "\n".join(lines)
