"""Delta verbs (real delta-rs tables in tmp) and the Spark bridge (real local Spark)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from table_rows import embedding_row, table_of

from jobs.plumbing import schemas, tables
from jobs.plumbing.spark import read_delta, write_parts


def embedding_rows(ids: list[str], fingerprint: str = "f") -> pa.Table:
    """Item embeddings of one answer `fingerprint`: the n-th id's vector is [1, n]."""
    return table_of(
        "embeddings",
        (
            embedding_row("item", i, fingerprint=fingerprint, dim=2, embedding=[1.0, float(n)])
            for n, i in enumerate(ids)
        ),
    )


KEYS = ["kind", "entity_id", "fingerprint", "encoder_model"]


def test_insert_new_is_idempotent_per_key(tmp_path):
    path = tmp_path / "embeddings"
    assert tables.version(path) is None
    assert tables.read(path, schemas.EMBEDDINGS).num_rows == 0
    v0 = tables.insert_new(path, embedding_rows(["a", "b"]), schemas.EMBEDDINGS, KEYS)
    v1 = tables.insert_new(path, embedding_rows(["b", "c"]), schemas.EMBEDDINGS, KEYS)
    assert (v0, v1) == (0, 1)
    got = tables.read(path, schemas.EMBEDDINGS)
    assert sorted(got.column("entity_id").to_pylist()) == ["a", "b", "c"]
    tables.insert_new(path, embedding_rows(["a"], fingerprint="g"), schemas.EMBEDDINGS, KEYS)
    assert tables.read(path, schemas.EMBEDDINGS).num_rows == 4  # new fingerprint, new row


def test_overwrite_keeps_history_and_commit_metadata(tmp_path):
    path = tmp_path / "embeddings"
    tables.overwrite(path, embedding_rows(["a"]), schemas.EMBEDDINGS, metadata={"digest": "1"})
    tables.overwrite(path, embedding_rows(["b", "c"]), schemas.EMBEDDINGS, metadata={"digest": "2"})
    assert tables.commit_metadata(path, "digest") == "2"
    assert tables.read(path, schemas.EMBEDDINGS, version=0).column("entity_id").to_pylist() == ["a"]
    assert tables.read(path, schemas.EMBEDDINGS).num_rows == 2


def test_bad_batch_fails_before_commit(tmp_path):
    path = tmp_path / "embeddings"
    tables.overwrite(path, embedding_rows(["a"]), schemas.EMBEDDINGS)
    bad = embedding_rows(["b"]).drop_columns(["dim"])
    with pytest.raises(tables.SchemaError, match=r"'embeddings': missing column\(s\) \['dim'\]"):
        tables.insert_new(path, bad, schemas.EMBEDDINGS, KEYS)
    nulls = embedding_rows(["b"]).set_column(1, "entity_id", pa.array([None], pa.string()))
    with pytest.raises(tables.SchemaError, match="'entity_id' has 1 null"):
        tables.overwrite(path, nulls, schemas.EMBEDDINGS)
    assert tables.version(path) == 0


def test_spark_reads_a_delta_snapshot_and_round_trips(spark, tmp_path):
    path = tmp_path / "embeddings"
    empty = read_delta(spark, path, schemas.EMBEDDINGS)
    assert empty.count() == 0 and empty.columns == schemas.EMBEDDINGS.names
    tables.overwrite(path, embedding_rows(["a", "b"]), schemas.EMBEDDINGS)
    tables.overwrite(path, embedding_rows(["c"]), schemas.EMBEDDINGS)
    assert read_delta(spark, path, schemas.EMBEDDINGS, version=0).count() == 2
    latest = read_delta(spark, path, schemas.EMBEDDINGS)
    copy = tmp_path / "copy"
    parts = write_parts(latest, copy, schemas.EMBEDDINGS)
    tables.commit_parts(copy, parts, schemas.EMBEDDINGS)
    assert pq.read_schema(copy / parts[0]["file"]).remove_metadata().equals(schemas.EMBEDDINGS)
    back = tables.read(copy, schemas.EMBEDDINGS)
    assert back.column("embedding").to_pylist() == [[1.0, 0.0]]


def test_worker_parts_commit_in_chunks_and_vacuum_removes_uncommitted(tmp_path: Path) -> None:
    schema = pa.schema([pa.field("k", pa.string(), nullable=False), pa.field("v", pa.int64())])
    path = tmp_path / "t"

    def part(keys: list[str]) -> dict:
        return tables.write_part(path, pa.table({"k": keys, "v": range(len(keys))}), schema)

    commits: list[int] = []
    committer = tables.PartCommitter(path, schema, every_rows=3, after=commits.append)
    committer.add(part(["a", "b"]))
    assert tables.open_table(path) is None  # 2 rows < 3: nothing committed yet
    committer.add(part(["c"]))
    committer.add(part(["d"]))
    committer.flush()
    assert commits == [0, 1]
    assert sorted(tables.read(path, schema).column("k").to_pylist()) == ["a", "b", "c", "d"]
    actions = pa.table(tables.open_table(path).get_add_actions(flatten=True)).to_pydict()
    assert sorted(actions["num_records"]) == [1, 1, 2]  # the stats written with each file
    assert sorted(actions["min.k"]) == ["a", "c", "d"]

    orphan = part(["lost"])  # written, never committed: a run killed before its commit
    assert (path / orphan["file"]).exists()
    assert "lost" not in tables.read(path, schema).column("k").to_pylist()
    tables.vacuum(path, retention_hours=0)
    assert not (path / orphan["file"]).exists()
    assert tables.read(path, schema).num_rows == 4

    tables.compact(path)
    assert sorted(tables.read(path, schema).column("k").to_pylist()) == ["a", "b", "c", "d"]
    tables.commit_parts(path, [part(["z"])], schema, mode="overwrite")
    assert tables.read(path, schema).column("k").to_pylist() == ["z"]
