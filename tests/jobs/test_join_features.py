"""Time travel over `vectors` and the Spark feature join, on real Delta tables and real Spark."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake
from suite_paths import ROOT
from table_rows import sample_row, table_of, vectors_table

from jobs import cli, join_features
from jobs.plumbing import schemas, storage, tables
from jobs.plumbing.config import Config
from jobs.rules import vectors
from jobs.rules.vectors import VersionError

V0 = {("user", "u1"): [1.0, 2.0], ("user", "u2"): [3.0, 4.0], ("item", "i1"): [5.0, 6.0]}
V1 = {("user", "u1"): [7.0, 8.0], ("item", "i1"): [9.0, 1.0], ("item", "i2"): [2.0, 3.0]}


def _fill(conf: Config) -> Config:
    tables.overwrite(conf.table_path("vectors"), vectors_table(V0, "run-a"), schemas.VECTORS)
    tables.overwrite(conf.table_path("vectors"), vectors_table(V1, "run-b"), schemas.VECTORS)
    pairs = [("u1", "i1"), ("u2", "i2"), ("u3", "i1")]
    samples = table_of("samples", (sample_row(u, i, label=1) for u, i in pairs))
    tables.overwrite(conf.table_path("samples"), samples, schemas.SAMPLES)
    return conf


@pytest.fixture
def conf(make_config):
    return _fill(make_config())


def test_parse_as_of_dates_are_utc_midnight():
    assert vectors.parse_as_of("2026-11-15") == datetime(2026, 11, 15, tzinfo=UTC)
    assert vectors.parse_as_of("2026-11-15T08:30") == datetime(2026, 11, 15, 8, 30, tzinfo=UTC)
    offset = vectors.parse_as_of("2026-11-15T08:30+02:00")
    assert offset == datetime(2026, 11, 15, 6, 30, tzinfo=UTC)
    with pytest.raises(VersionError, match="YYYY-MM-DD"):
        vectors.parse_as_of("15/11/2026")


def test_resolve_by_version_as_of_and_latest(conf):
    path = conf.table_path("vectors")
    first, second = vectors.resolve(path, version=0), vectors.resolve(path, version=1)
    assert vectors.resolve(path).version == 1
    assert vectors.resolve(path, as_of=first.committed_at).version == 0
    assert vectors.resolve(path, as_of=second.committed_at + timedelta(days=3)).version == 1
    with pytest.raises(VersionError, match="first version"):
        vectors.resolve(path, as_of=first.committed_at - timedelta(seconds=1))
    with pytest.raises(VersionError, match=r"no published version 7; .* versions are 0, 1 "):
        vectors.resolve(path, version=7)
    with pytest.raises(VersionError, match="no vectors table"):
        vectors.resolve(path.parent / "nothing")


def test_kar_vectors_shows_what_was_served(conf, capsys):
    conf_file = Path(conf.run.output_dir).parent / "conf.yaml"
    conf_file.write_text(json.dumps(conf.model_dump(mode="json")))
    cli.main(["vectors", "--conf", str(conf_file), "--version", "0", "--entity", "user:u2"])
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == 0 and shown["version_ids"] == ["run-a"]
    assert (shown["users"], shown["items"], shown["dims"]) == (2, 1, [2])
    assert shown["vectors"] == {"user:u2": [3.0, 4.0]}


def _by_pair(table: pa.Table) -> dict[tuple[str, str], dict]:
    return {(r["user_id"], r["item_id"]): r for r in table.to_pylist()}


def test_join_fills_missing_entities_with_zero_vectors(conf, spark, tmp_path):
    out = tmp_path / "train.parquet"
    result = join_features.run(conf, str(out), "parquet", version=0, spark=spark)
    assert (result.rows, result.vectors_version) == (3, 0)
    assert (result.users_without_vector, result.items_without_vector) == (1, 1)
    rows = _by_pair(pq.read_table(out))
    assert rows[("u1", "i1")]["user_kar"] == [1.0, 2.0] and rows[("u1", "i1")]["item_has_kar"]
    assert rows[("u2", "i2")]["item_kar"] == [0.0, 0.0] and not rows[("u2", "i2")]["item_has_kar"]
    assert rows[("u3", "i1")]["user_kar"] == [0.0, 0.0] and not rows[("u3", "i1")]["user_has_kar"]
    assert rows[("u3", "i1")]["item_kar"] == [5.0, 6.0]
    assert all(r["kar_vectors_version"] == 0 and r["label"] == 1 for r in rows.values())

    # Rerun into the same folder with the later version: replaced whole, no staging left over.
    join_features.run(conf, str(out), "parquet", version=1, spark=spark)
    rows = _by_pair(pq.read_table(out))
    assert rows[("u1", "i1")]["user_kar"] == [7.0, 8.0]
    assert not rows[("u2", "i2")]["user_has_kar"] and rows[("u2", "i2")]["item_kar"] == [2.0, 3.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "train.parquet"]


def test_join_writes_delta_and_takes_as_of(conf, spark, tmp_path):
    as_of = vectors.resolve(conf.table_path("vectors"), version=0).committed_at
    out = tmp_path / "train-delta"
    join_features.run(conf, str(out), "delta", as_of=as_of, spark=spark)
    table = DeltaTable(str(out))
    schema = pa.schema(table.schema().to_arrow())
    assert schema.field("user_kar").type.value_type == pa.float32()
    assert table.history(1)[0]["kar_vectors_version"] == "0"
    rows = _by_pair(table.to_pyarrow_table())
    assert rows[("u2", "i2")]["user_kar"] == [3.0, 4.0]


def test_join_names_a_missing_key_column(conf, spark, tmp_path):
    with pytest.raises(join_features.DataError, match="no column 'customer'"):
        join_features.run(conf, str(tmp_path / "x"), version=1, user_col="customer", spark=spark)
    assert not (tmp_path / "x").exists()


def test_kar_join_reads_and_writes_an_object_store(make_config, tmp_path, s3):
    """Vectors, samples and the result all on S3, through `kar join` (its own Spark, started
    with the store's environment as a user's would be): Spark tasks read and write the files
    through pyarrow.fs (no Hadoop connector), the Delta result replaces the old output in
    one commit, and a Parquet folder there (which cannot be swapped whole) is refused
    before any Spark work."""
    conf = _fill(make_config(f"run.output_dir={s3.uri('join')}"))
    samples = storage.location(s3.uri("samples")) / "part-0.parquet"
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"user_id": ["u1", "u9"], "item_id": ["i1", "i2"]}), sink)
    samples.write_bytes(sink.getvalue().to_pybytes())
    out = s3.uri("train")
    write_deltalake(out, pa.table({"stale": [1, 2, 3]}))  # last week's output, replaced whole
    conf_file = tmp_path / "conf.yaml"
    conf_file.write_text(json.dumps(conf.model_dump(mode="json")))

    args = ["join", "--conf", str(conf_file), "--out", out, "--format", "delta"]
    args += ["--samples", samples.parent.uri, "--version", "1"]
    done = subprocess.run(
        [sys.executable, "-m", "jobs.cli", *args], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert (result["rows"], result["users_without_vector"], result["out"]) == (2, 1, out)
    table = DeltaTable(out)
    assert table.history(1)[0]["kar_vectors_version"] == "1"
    assert "stale" not in pa.schema(table.schema().to_arrow()).names
    rows = _by_pair(table.to_pyarrow_table())
    assert rows[("u1", "i1")]["user_kar"] == [7.0, 8.0]
    assert rows[("u9", "i2")]["item_kar"] == [2.0, 3.0] and not rows[("u9", "i2")]["user_has_kar"]

    with pytest.raises(storage.StorageError, match=r"use --format delta"):
        join_features.run(conf, s3.uri("train-pq"), "parquet", spark=None)
