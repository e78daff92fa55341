"""Spark session and the Delta <-> Spark bridge.

Our machines cannot fetch the delta-spark jars from Maven, so Spark reads a
Delta snapshot through the exact Parquet file list delta-rs gives for a
version, and writes go through delta-rs. On a cluster with the Delta
connector the same tables are ordinary Delta tables.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.pandas.types import from_arrow_schema

from jobs import tables
from jobs.config import SparkConf

log = logging.getLogger(__name__)


def session(conf: SparkConf, app_name: str = "kar") -> SparkSession:
    """A Spark session (local mode by default) whose Python workers use this interpreter."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.appName(app_name)
        .master(conf.master)
        .config("spark.driver.memory", conf.driver_memory)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "8")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
    )
    for key, value in conf.conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def read_delta(
    spark: SparkSession, path: Path, schema: pa.Schema, version: int | None = None
) -> DataFrame:
    """A Delta table snapshot as a Spark DataFrame (empty with `schema` if it does not exist)."""
    spark_schema = from_arrow_schema(schema)
    table = tables.open_table(path, version)
    files = table.file_uris() if table is not None else []
    if not files:
        return spark.createDataFrame([], spark_schema)
    return spark.read.schema(spark_schema).parquet(*files)


def to_arrow(df: DataFrame, schema: pa.Schema, name: str) -> pa.Table:
    """Collect a DataFrame as Arrow in the table's declared schema (for a delta-rs write)."""
    return tables.conform(df.toArrow(), schema, name)
