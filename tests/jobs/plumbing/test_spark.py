"""The Spark session: shuffle partitions follow the cluster unless the config sets them;
Spark tasks read a Delta version's files themselves (object stores without a connector)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from jobs.plumbing import storage, tables
from jobs.plumbing.spark import SHUFFLE_PARTITIONS, _read_in_tasks, shuffle_partitions


def test_shuffle_partitions_are_three_per_task_slot_and_at_least_eight():
    assert [shuffle_partitions(n) for n in (1, 2, 3, 400)] == [8, 8, 9, 1200]


@pytest.mark.engines
def test_the_session_sizes_its_shuffles_by_its_task_slots(spark):
    slots = spark.sparkContext.defaultParallelism  # local[2]: 2
    assert spark.conf.get(SHUFFLE_PARTITIONS) == str(shuffle_partitions(slots))


@pytest.mark.engines
def test_tasks_read_a_table_version_through_pyarrow_in_its_declared_schema(spark, tmp_path):
    """The object-store read path (Spark tasks open the files, not Hadoop), on local files:
    the file list of the version asked for, columns conformed to the schema."""
    schema = pa.schema([pa.field("id", pa.string(), nullable=False), pa.field("n", pa.int64())])
    where = storage.location(tmp_path / "t")
    first = tables.write_part(where, pa.table({"n": [1, 2], "id": ["a", "b"]}), schema)
    tables.commit_parts(where, [first], schema)
    second = tables.write_part(where, pa.table({"id": ["c"], "n": [3]}), schema)
    tables.commit_parts(where, [second], schema)
    files = tables.open_table(where, version=0).file_uris()
    rows = _read_in_tasks(spark, where, files, schema).collect()
    assert sorted((r.id, r.n) for r in rows) == [("a", 1), ("b", 2)]  # version 0 only
