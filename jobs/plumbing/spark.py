"""Spark session and the Delta <-> Spark bridge.

Our machines cannot fetch the delta-spark jars from Maven, so Spark reads a
Delta snapshot through the exact Parquet file list delta-rs gives for a
version, and Spark tasks write Parquet files that delta-rs commits
(`write_parts`). On a cluster with the Delta connector the same tables are
ordinary Delta tables.
"""

from __future__ import annotations

import logging
import os
import posixpath
import sys
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pyspark import SparkConf as JavaSparkConf
from pyspark import SparkContext
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.pandas.types import from_arrow_schema

from jobs.plumbing import tables
from jobs.plumbing.config import SparkConf
from jobs.plumbing.storage import Location, location

log = logging.getLogger(__name__)


def submitted_settings() -> dict[str, str]:
    """The settings spark-submit was given (--master, --conf, --driver-memory ...); {} outside it.

    spark-submit starts the JVM before Python and hands its port over in
    PYSPARK_GATEWAY_PORT; its settings are then JVM system properties, which a
    SparkConf created on that gateway loads.
    """
    if "PYSPARK_GATEWAY_PORT" not in os.environ:
        return {}
    SparkContext._ensure_initialized()  # connects to spark-submit's JVM; starts nothing
    return dict(JavaSparkConf().getAll())


SHUFFLE_PARTITIONS = "spark.sql.shuffle.partitions"


def shuffle_partitions(parallelism: int) -> int:
    """Shuffle partitions for a cluster of `parallelism` task slots: three per slot (Spark's
    tuning guide suggests 2-3 tasks per core), at least 8. Spark's own default (200) made
    a prepare of 8 users about twice as slow on 2 cores (one run); a fixed 8 would give a
    10^8-user shuffle 10^7 rows per task."""
    return max(8, 3 * parallelism)


def _task_slots(spark: SparkSession) -> int:
    """The cluster's task slots: executors x cores when the submission fixes them, else the
    cores registered so far (with dynamic allocation, fewer than the cluster will have:
    such a cluster sets spark.sql.shuffle.partitions in `spark.conf`)."""
    settings = spark.sparkContext.getConf()  # a copy of the JVM's conf: taken once
    executors = settings.get("spark.executor.instances")
    cores = settings.get("spark.executor.cores")
    if executors and cores:
        return int(executors) * int(cores)
    return spark.sparkContext.defaultParallelism


def session(conf: SparkConf, app_name: str = "kar") -> SparkSession:
    """A Spark session (local mode by default) whose Python workers use this interpreter.

    Under spark-submit, whatever it was given wins over the config (`spark.master`
    and `spark.driver.memory` included), so one config serves laptop runs and
    cluster submissions; the config fills in only what spark-submit left unset.
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    settings = {
        "spark.master": conf.master,
        "spark.driver.memory": conf.driver_memory,
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.enabled": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        **conf.conf,
    }
    submitted = submitted_settings()
    builder = SparkSession.builder.appName(app_name)
    for key, value in settings.items():
        if key not in submitted:
            builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    if SHUFFLE_PARTITIONS not in settings and SHUFFLE_PARTITIONS not in submitted:
        partitions = shuffle_partitions(_task_slots(spark))
        spark.conf.set(SHUFFLE_PARTITIONS, str(partitions))
    kept = sorted(k for k in settings if k in submitted)
    log.info(
        "spark session: master %s, %s shuffle partitions%s",
        spark.sparkContext.master,
        spark.conf.get("spark.sql.shuffle.partitions"),
        f" (from spark-submit: {', '.join(kept)})" if kept else "",
    )
    return spark


def read_delta(
    spark: SparkSession, path: Location, schema: pa.Schema, version: int | None = None
) -> DataFrame:
    """A Delta table snapshot as a Spark DataFrame (empty with `schema` if it does not exist)."""
    spark_schema = from_arrow_schema(schema)
    table = tables.open_table(path, version)
    files = table.file_uris() if table is not None else []
    if not files:
        return spark.createDataFrame([], spark_schema)
    where = location(path)
    if where.is_local:
        return spark.read.schema(spark_schema).parquet(*files)
    return _read_in_tasks(spark, where, files, schema)


def read_parquet(
    spark: SparkSession, where: Location, schema: pa.Schema | None = None
) -> DataFrame:
    """A Parquet file or folder at `where` as a DataFrame (in `schema`, else the files' own):
    Spark's reader on local disk, Spark tasks through `pyarrow.fs` on an object store. The
    driver lists the files and reads one footer for the schema (bounded: no rows)."""
    if where.is_local:
        reader = spark.read.schema(from_arrow_schema(schema)) if schema else spark.read
        return reader.parquet(where.uri)
    fs, path = where.filesystem()
    data = ds.dataset(path, filesystem=fs, format="parquet", schema=schema)
    # Each file's URI is the location's plus its path below it (a single file: the location).
    files = [
        posixpath.join(where.uri, rest) if (rest := f[len(path) :].lstrip("/")) else where.uri
        for f in data.files
    ]
    return _read_in_tasks(spark, where, files, schema or data.schema)


def _read_in_tasks(
    spark: SparkSession, where: Location, files: list[str], schema: pa.Schema
) -> DataFrame:
    """The files of an object-store table read by Spark tasks through `pyarrow.fs`.

    Spark's own reader goes through Hadoop's file systems, and a cluster may have no
    connector for the store (no Maven here for hadoop-aws); the tasks read the files the
    way Ray's workers do. The driver holds the file list only (what delta-rs gives it).
    """
    slices = max(1, min(len(files), _task_slots(spark)))
    listing = spark.sparkContext.parallelize([(f,) for f in files], slices)

    def read(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for uri in batch.column("file").to_pylist():
                fs, file = Location(uri, where.options).filesystem()
                for chunk in pq.ParquetFile(file, filesystem=fs).iter_batches():
                    rows = tables.conform(pa.Table.from_batches([chunk]), schema, where.name)
                    yield from rows.to_batches()

    return spark.createDataFrame(listing, "file string").mapInArrow(read, from_arrow_schema(schema))


# A Spark task writes a file once it buffered this much Arrow data (or its partition ended).
PART_BYTES = 128 << 20


def write_parts(
    df: DataFrame, path: Location, schema: pa.Schema, max_bytes: int = PART_BYTES
) -> list[dict[str, Any]]:
    """Write `df` as Parquet files in the table directory from Spark tasks; their PART rows.

    Each task conforms its Arrow batches to the declared `schema` (`tables.write_part`
    casts and checks nulls) and writes one file per partition, or per `max_bytes` of
    Arrow data, so no row reaches the driver: it collects one small row per file and
    commits them (`tables.commit_parts`). Empty partitions write nothing. Tasks write
    through `pyarrow.fs` at the table's URI (an object store, or local disk in local mode);
    files of failed or speculative task attempts are never committed and go at the next
    `tables.vacuum`.
    """
    target = location(path)  # made absolute here, in the driver, not in each task

    def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        buffered: list[pa.RecordBatch] = []
        size = 0
        for batch in batches:
            if batch.num_rows:
                buffered.append(batch)
                size += batch.nbytes
            if size >= max_bytes:
                yield _write_part(target, buffered, schema)
                buffered, size = [], 0
        if buffered:
            yield _write_part(target, buffered, schema)

    rows = df.mapInArrow(write, from_arrow_schema(tables.PART)).collect()
    return [row.asDict() for row in rows]


def _write_part(
    target: Location, batches: list[pa.RecordBatch], schema: pa.Schema
) -> pa.RecordBatch:
    part = tables.write_part(target, pa.Table.from_batches(batches), schema)
    return pa.RecordBatch.from_pylist([part], schema=tables.PART)
