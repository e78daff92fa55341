"""Storage locations: URIs kept strings, relative paths made absolute once, bad schemes named."""

from __future__ import annotations

import pyarrow as pa
import pytest

from jobs.plumbing import storage, tables
from jobs.plumbing.config import ConfigError, load_config

SCHEMA = pa.schema([pa.field("id", pa.string(), nullable=False)])


def test_a_relative_path_becomes_absolute_and_uris_stay_strings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.location("out").uri == str(tmp_path / "out")
    s3 = storage.location("s3://bucket/kar/out") / "tables" / "knowledge"
    assert s3.uri == "s3://bucket/kar/out/tables/knowledge"
    assert (s3.name, s3.parent.uri, s3.is_local) == (
        "knowledge",
        "s3://bucket/kar/out/tables",
        False,
    )
    with pytest.raises(storage.StorageError, match="not on local disk"):
        s3.local_path()


@pytest.mark.parametrize(
    ("uri", "hint"),
    [("hdfs://nn/out", "unknown storage scheme 'hdfs'"), ("az://c/out", "abfss://")],
)
def test_an_unknown_scheme_names_the_uri_and_the_accepted_ones(uri, hint):
    with pytest.raises(storage.StorageError, match=hint) as err:
        storage.location(uri)
    assert uri in str(err.value) and "s3://" in str(err.value)


def test_an_object_store_output_dir_stays_a_uri_and_creates_nothing_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    conf = load_config(None, ["run.output_dir=s3://bucket/out", "storage.options.aws_region=eu"])
    assert conf.table_path("knowledge").uri == "s3://bucket/out/tables/knowledge"
    assert conf.table_path("knowledge").storage_options() == {"aws_region": "eu"}
    assert list(tmp_path.iterdir()) == []  # no local folder named after the URI


def test_a_credential_in_storage_options_is_refused_and_not_echoed():
    with pytest.raises(ConfigError, match="aws_secret_access_key.*environment") as err:
        load_config(None, ["storage.options.aws_secret_access_key=hunter2hunter2"])
    assert "hunter2" not in str(err.value)


def test_a_table_at_a_file_uri_is_written_by_parts_and_read_back(tmp_path):
    where = storage.location(f"file://{tmp_path}/t")
    part = tables.write_part(where, pa.table({"id": ["a", "b"]}), SCHEMA)
    assert part["rows"] == 2 and part["size"] == (tmp_path / "t" / part["file"]).stat().st_size
    tables.commit_parts(where, [part], SCHEMA)
    assert sorted(tables.read(where, SCHEMA).column("id").to_pylist()) == ["a", "b"]
    assert tables.version(tmp_path / "t") == 0  # the same table through its plain path


def test_an_input_uri_reaches_spark_untouched():
    conf = load_config(
        None,
        [
            "data.format=generic",
            "data.interactions={path: 's3a://lake/events/', format: parquet}",
            "data.items={path: items.csv}",
        ],
    )
    assert conf.data.interactions.path == "s3a://lake/events/"  # not s3a:/lake/events
    assert conf.data.items.path == "items.csv"


def test_feasts_files_need_a_local_dir_when_the_output_is_an_object_store(tmp_path):
    conf = load_config(None, ["run.output_dir=s3://bucket/out"])
    with pytest.raises(ConfigError, match="set feature_store.dir to a local directory"):
        conf.feast_dir()
    local = load_config(None, ["run.output_dir=s3://bucket/out", f"feature_store.dir={tmp_path}"])
    assert local.feast_dir() == tmp_path
