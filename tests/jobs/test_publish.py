"""Feast round trip: `kar publish --online` materializes the live vectors version, and
`get_online_features` returns exactly the Delta table's vectors (real Feast, SQLite and a
real redis-server from Debian's package)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import redis
from deltalake import DeltaTable
from table_rows import vectors_table

from jobs import maintain, publish
from jobs.plumbing import feature_store, schemas, tables
from jobs.plumbing.config import Config
from jobs.rules import vectors

N_USERS, N_ITEMS, DIM = 40, 30, 32


def publish_vectors(conf: Config, seed: int, n_users: int = N_USERS) -> None:
    """One adapt-like publish: a full vectors version with random float32 vectors."""
    rng = np.random.default_rng(seed)
    kinds = ["user"] * n_users + ["item"] * N_ITEMS
    ids = [f"u{i}" for i in range(n_users)] + [f"i{i}" for i in range(N_ITEMS)]
    values = rng.normal(size=(len(ids), DIM)).astype(np.float32)
    rows = vectors_table(
        dict(zip(zip(kinds, ids, strict=True), values, strict=True)), f"run-{seed}"
    )
    tables.overwrite(conf.table_path("vectors"), rows, schemas.VECTORS)


def delta_vectors(conf: Config) -> dict[tuple[str, str], np.ndarray]:
    live = vectors.read(vectors.resolve(conf.table_path("vectors")))
    return {
        (r["kind"], r["entity_id"]): np.asarray(r["vector"], np.float32) for r in live.to_pylist()
    }


def assert_online_equals_delta(conf: Config) -> None:
    expected = delta_vectors(conf)
    store, _ = feature_store.feature_store(conf)
    version = vectors.resolve(conf.table_path("vectors")).version
    for kind, view, feature in (("user", "kar_user", "reasoning"), ("item", "kar_item", "fact")):
        ids = sorted(i for k, i in expected if k == kind)
        got = store.get_online_features(
            features=[f"{view}:{feature}", f"{view}:vectors_version"],
            entity_rows=[{f"{kind}_id": i} for i in ids],
        ).to_dict()
        assert got[f"{kind}_id"] == ids
        assert got["vectors_version"] == [version] * len(ids)
        for entity_id, value in zip(ids, got[feature], strict=True):
            np.testing.assert_array_equal(np.asarray(value, np.float32), expected[kind, entity_id])


def test_publish_online_sqlite_round_trip_and_new_version(make_config):
    conf = make_config()
    publish_vectors(conf, seed=1)
    first = publish.run(conf, online=True)
    assert (first.users, first.items, first.online_store) == (N_USERS, N_ITEMS, "sqlite")
    assert_online_equals_delta(conf)

    # Rerun of the same version: the feature tables gain nothing.
    before = {
        n: DeltaTable(str(conf.table_path(n))).to_pyarrow_table().num_rows
        for n in ("features_user", "features_item")
    }
    publish.run(conf, online=True)
    for name, rows in before.items():
        assert DeltaTable(str(conf.table_path(name))).to_pyarrow_table().num_rows == rows

    # A new weekly version (fewer users) replaces the online values; the offline
    # feature table keeps both versions for point-in-time training joins.
    publish_vectors(conf, seed=2, n_users=N_USERS - 5)
    second = publish.run(conf, online=True)
    assert second.vectors_version == first.vectors_version + 1
    assert_online_equals_delta(conf)
    users = DeltaTable(str(conf.table_path("features_user"))).to_pyarrow_table()
    assert pa.schema(users.schema).equals(schemas.USER_FEATURES)
    assert users.num_rows == N_USERS + N_USERS - 5
    # Feast cannot delete single entity keys: an entity missing from the new version keeps
    # its old online row, and its vectors_version tells a ranking service it is stale.
    store, _ = feature_store.feature_store(conf)
    dropped = store.get_online_features(
        features=["kar_user:vectors_version"], entity_rows=[{"user_id": f"u{N_USERS - 1}"}]
    ).to_dict()
    assert dropped["vectors_version"] == [first.vectors_version]


def test_publish_without_vectors_names_the_fix(make_config):
    with pytest.raises(vectors.VersionError, match="kar run"):
        publish.run(make_config(), online=True)


def test_publish_online_redis_round_trip(make_config, redis_server):
    conf = make_config("feature_store.online_store=redis", f"feature_store.redis={redis_server}")
    publish_vectors(conf, seed=3)
    assert publish.run(conf, online=True).online_store == "redis"
    host, port = redis_server.split(":")
    assert redis.Redis(host=host, port=int(port)).dbsize() == N_USERS + N_ITEMS
    assert not (Path(conf.run.output_dir) / "feast" / "online.db").exists()
    assert_online_equals_delta(conf)


def test_publish_in_small_batches_fills_the_online_store_completely(make_config):
    """Seven rows at a time: every batch is its own file and online write, and together they
    hold the whole version; one commit per feature table, and a rerun adds nothing."""
    conf = make_config("feature_store.batch_rows=7")
    publish_vectors(conf, seed=4)
    result = publish.run(conf, online=True)
    assert (result.users, result.items) == (N_USERS, N_ITEMS)
    assert_online_equals_delta(conf)
    users = DeltaTable(str(conf.table_path("features_user")))
    assert users.version() == 0 and len(users.file_uris()) >= N_USERS // 7
    assert users.to_pyarrow_table().num_rows == N_USERS
    assert users.history(1)[0]["vectors_version"] == str(result.vectors_version)

    again = publish.run(conf, online=True)
    assert again.feature_table_versions == result.feature_table_versions
    assert DeltaTable(str(conf.table_path("features_item"))).to_pyarrow_table().num_rows == N_ITEMS
    assert_online_equals_delta(conf)


def test_maintain_of_a_vectors_table_of_several_files_is_no_new_version(make_config):
    """Compaction and vacuum are commits of `vectors` but no publish: the live version, its
    rows (read past the vacuumed files) and the feature tables stay as they were."""
    conf = make_config("run.retain_hours=0")
    publish_vectors(conf, seed=5)
    path = conf.table_path("vectors")
    rows = tables.read(path, schemas.VECTORS)
    parts = [
        tables.write_part(path, rows.slice(start, 20), schemas.VECTORS)
        for start in range(0, rows.num_rows, 20)
    ]
    published = tables.commit_parts(path, parts, schemas.VECTORS, mode="overwrite")
    first = publish.run(conf)
    assert first.vectors_version == published
    before = {n: tables.count(conf.table_path(n)) for n in ("features_user", "features_item")}
    expected = delta_vectors(conf)

    result = maintain.run(conf)

    assert result.compacted["vectors"] == len(parts) and result.vacuumed["vectors"] >= len(parts)
    assert tables.version(path) > published  # maintenance committed to the table
    assert publish.run(conf).vectors_version == published
    assert {n: tables.count(conf.table_path(n)) for n in before} == before
    assert delta_vectors(conf).keys() == expected.keys()
