"""join_features (Spark): put KAR vectors onto a CTR training set, by user and item id.

Any samples table with a user and an item id column (our `samples` Delta table
by default, or any Delta table or Parquet path) gets four columns:
`user_kar` / `item_kar` (the reasoning / fact vector, list<float32>) and
`user_has_kar` / `item_has_kar`. An entity with no vector in that version gets
a zero vector and has_kar = false, so a trainer needs no null handling.
`kar_vectors_version` records which vectors version was joined.

    kar join --conf conf/local.yaml --out train.parquet [--version N | --as-of 2026-11-15]
    spark-submit --py-files dist/kar-job.zip jobs/cli.py join --conf ... --out ...

`--out` and `--samples` are paths or URIs (`s3://`, `gs://`, `abfss://`), opened with
`storage.options` like every table. Spark tasks write the result's files through
`pyarrow.fs`, so no Hadoop connector is needed; only a complete result replaces the old
one: Delta by one overwrite commit (anywhere), Parquet by a folder swap (local disk only:
an object store cannot swap a folder, so Parquet output there is refused up front).
"""

from __future__ import annotations

import argparse
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import to_arrow_schema

from jobs.plumbing import schemas, tables
from jobs.plumbing.config import Config
from jobs.plumbing.errors import MissingTableError
from jobs.plumbing.spark import read_delta, read_parquet, session, write_parts
from jobs.plumbing.storage import Location, StorageError
from jobs.readers import DataError
from jobs.rules.vectors import Snapshot, resolve

log = logging.getLogger(__name__)

OutputFormat = Literal["parquet", "delta"]


@dataclass(frozen=True)
class JoinResult:
    out: str
    format: str
    rows: int
    users_without_vector: int
    items_without_vector: int
    vectors_version: int
    seconds: float


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder or URI (Parquet or Delta)")
    parser.add_argument("--format", choices=["parquet", "delta"], default="parquet")
    parser.add_argument(
        "--samples",
        default=None,
        help="samples: a Delta table or Parquet path or URI (default: this run's samples table)",
    )
    parser.add_argument("--user-col", default="user_id", help="user id column of the samples")
    parser.add_argument("--item-col", default="item_id", help="item id column of the samples")


def read_samples(spark: SparkSession, conf: Config, uri: str | None) -> DataFrame:
    """The samples to join: our samples table, or any Delta table / Parquet path or URI."""
    if uri is None:
        path = conf.table_path("samples")
        if tables.open_table(path) is None:
            raise MissingTableError(
                f"no samples table at {path}; run kar prepare first or pass --samples"
            )
        return read_delta(spark, path, schemas.SAMPLES)
    where = conf.location(uri)
    table = tables.open_table(where)
    if table is not None:
        return read_delta(spark, where, pa.schema(table.schema().to_arrow()))
    if not where.exists():
        raise DataError(f"--samples {uri} does not exist")
    return read_parquet(spark, where)


def _vectors_of(spark: SparkSession, snapshot: Snapshot, kind: str) -> tuple[DataFrame, int]:
    """(entity_id, vector) of one kind in that version, and the vector size."""
    vec = read_delta(spark, snapshot.path, schemas.VECTORS, snapshot.rows_version).where(
        F.col("kind") == kind
    )
    dims = [r["dim"] for r in vec.select("dim").distinct().collect()]
    if len(dims) != 1:
        raise DataError(
            f"vectors version {snapshot.version} at {snapshot.path} has "
            f"{'no' if not dims else 'mixed-size'} {kind} vectors {sorted(dims)}; "
            "pick another version (kar vectors) or rerun kar adapt"
        )
    pairs = vec.select(F.col("entity_id").alias("_kar_id"), F.col("vector").alias("_kar_vec"))
    return pairs, dims[0]


def join(
    spark: SparkSession, samples: DataFrame, snapshot: Snapshot, user_col: str, item_col: str
) -> DataFrame:
    """samples + user_kar, item_kar, user_has_kar, item_has_kar, kar_vectors_version."""
    for col in (user_col, item_col):
        if col not in samples.columns:
            raise DataError(
                f"samples have no column {col!r} (columns: {samples.columns}); "
                "pass --user-col/--item-col"
            )
    out = samples
    for kind, col in (("user", user_col), ("item", item_col)):
        vec, dim = _vectors_of(spark, snapshot, kind)
        zero = F.array_repeat(F.lit(0.0).cast("float"), dim)
        # Ids are strings in every KAR table; cast the sample's key to match.
        out = (
            out.join(vec, F.col(col).cast("string") == F.col("_kar_id"), "left")
            .withColumn(f"{kind}_has_kar", F.col("_kar_id").isNotNull())
            .withColumn(f"{kind}_kar", F.coalesce(F.col("_kar_vec"), zero))
            .drop("_kar_id", "_kar_vec")
        )
    return out.withColumn("kar_vectors_version", F.lit(snapshot.version).cast("long"))


def _swap_in(staging: Location, out: Location) -> None:
    """Swap a finished staging folder in for `out` (local disk): readers see the old or the
    new, never half."""
    fs, new = staging.filesystem()
    _, target = out.filesystem()
    old = f"{target}.old-{uuid.uuid4().hex[:8]}" if out.exists() else None
    if old:
        fs.move(target, old)
    fs.move(new, target)
    if old:
        fs.delete_dir(old)


def write(df: DataFrame, out: Location, fmt: OutputFormat, snapshot: Snapshot) -> pa.Schema:
    """Write the joined rows from Spark tasks; the driver commits (Delta) or swaps (Parquet).
    Returns the written schema."""
    schema = to_arrow_schema(df.schema)
    if fmt == "delta":
        # One overwrite commit of files the tasks wrote: readers see the old or the new result;
        # files of a failed attempt were never committed and go at the table's next vacuum.
        parts = write_parts(df, out, schema)
        tables.commit_parts(
            out,
            parts,
            schema,
            mode="overwrite",
            metadata={"kar_vectors_version": str(snapshot.version)},
        )
        return schema
    staging = out.parent / f".{out.name}.staging-{uuid.uuid4().hex[:8]}"
    fs, path = staging.filesystem()
    try:
        fs.create_dir(path, recursive=True)  # an empty result is an empty folder
        write_parts(df, staging, schema)
        _swap_in(staging, out)
    finally:
        if staging.exists():
            fs.delete_dir(path)
    return schema


def _check_out(out: Location, fmt: OutputFormat) -> None:
    """Refuse an output that cannot be replaced whole, before any Spark work."""
    if fmt == "parquet" and not out.is_local:
        raise StorageError(
            f"--out {out}: a Parquet folder on an object store cannot be replaced whole "
            "(no atomic rename there); use --format delta, whose overwrite is one commit"
        )


def run(
    conf: Config,
    out: str,
    fmt: OutputFormat = "parquet",
    samples_uri: str | None = None,
    version: int | None = None,
    as_of: datetime | None = None,
    user_col: str = "user_id",
    item_col: str = "item_id",
    spark: SparkSession | None = None,
) -> JoinResult:
    started = time.monotonic()
    target = conf.location(out)
    _check_out(target, fmt)
    snapshot = resolve(conf.table_path("vectors"), version, as_of)
    log.info(
        "joining vectors version %d (committed %s) onto samples",
        snapshot.version,
        snapshot.committed_at.isoformat(),
    )
    spark = spark or session(conf.spark, app_name="kar-join-features")
    joined = join(spark, read_samples(spark, conf, samples_uri), snapshot, user_col, item_col)
    schema = write(joined, target, fmt, snapshot)
    reader = read_delta if fmt == "delta" else read_parquet
    written = reader(spark, target, schema)
    counts = written.agg(
        F.count("*").alias("rows"),
        F.countDistinct(F.when(~F.col("user_has_kar"), F.col(user_col))).alias("users"),
        F.countDistinct(F.when(~F.col("item_has_kar"), F.col(item_col))).alias("items"),
    ).first()
    if counts["users"] or counts["items"]:
        log.warning(
            "%d users and %d items of the samples have no vector in version %d (zero vectors, "
            "has_kar = false)",
            counts["users"],
            counts["items"],
            snapshot.version,
        )
    log.info("wrote %d joined rows to %s (%s)", counts["rows"], target, fmt)
    return JoinResult(
        out=target.uri,
        format=fmt,
        rows=counts["rows"],
        users_without_vector=counts["users"],
        items_without_vector=counts["items"],
        vectors_version=snapshot.version,
        seconds=time.monotonic() - started,
    )
