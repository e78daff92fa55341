"""join_features (Spark): put KAR vectors onto a CTR training set, by user and item id.

Any samples table with a user and an item id column (our `samples` Delta table
by default, or any Delta table or Parquet path) gets four columns:
`user_kar` / `item_kar` (the reasoning / fact vector, list<float32>) and
`user_has_kar` / `item_has_kar`. An entity with no vector in that version gets
a zero vector and has_kar = false, so a trainer needs no null handling.
`kar_vectors_version` records which vectors version was joined.

    kar join --conf conf/local.yaml --out train.parquet [--version N | --as-of 2026-11-15]
    spark-submit --py-files dist/kar-job.zip jobs/cli.py join --conf ... --out ...

Spark writes the result into a staging folder beside `--out`; only a complete
result replaces the old one (Parquet: a folder swap; Delta: one overwrite commit).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

import pyarrow.dataset as ds
from deltalake import CommitProperties, write_deltalake
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.plumbing import schemas, tables
from jobs.plumbing.config import Config
from jobs.plumbing.errors import MissingTableError
from jobs.plumbing.spark import read_delta, session
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
    parser.add_argument("--out", type=Path, required=True, help="output folder (Parquet or Delta)")
    parser.add_argument("--format", choices=["parquet", "delta"], default="parquet")
    parser.add_argument(
        "--samples",
        type=Path,
        default=None,
        help="samples table: a Delta table or Parquet path (default: this run's samples table)",
    )
    parser.add_argument("--user-col", default="user_id", help="user id column of the samples")
    parser.add_argument("--item-col", default="item_id", help="item id column of the samples")


def read_samples(spark: SparkSession, conf: Config, path: Path | None) -> DataFrame:
    """The samples to join: our samples table, or any Delta table / Parquet path."""
    if path is None:
        path = conf.table_path("samples")
        if tables.open_table(path) is None:
            raise MissingTableError(
                f"no samples table at {path}; run kar prepare first or pass --samples"
            )
        return read_delta(spark, path, schemas.SAMPLES)
    if not path.exists():
        raise DataError(f"--samples {path} does not exist")
    table = tables.open_table(path) if (path / "_delta_log").is_dir() else None
    if table is not None:
        return spark.read.parquet(*table.file_uris())
    return spark.read.parquet(str(path))


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


def _replace_folder(staging: Path, out: Path) -> None:
    """Swap a finished staging folder in for `out`: readers see the old or the new, never half."""
    old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
    if out.exists():
        out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def write(df: DataFrame, out: Path, fmt: OutputFormat, snapshot: Snapshot) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.staging-{uuid.uuid4().hex[:8]}")
    try:
        df.write.parquet(str(staging))
        if fmt == "parquet":
            _replace_folder(staging, out)
            return
        # Spark cannot write Delta here (no connector jars); stream its Parquet into one commit.
        data = ds.dataset(str(staging), format="parquet")
        write_deltalake(
            str(out),
            data.scanner().to_reader(),
            mode="overwrite",
            schema_mode="overwrite",
            commit_properties=CommitProperties(
                custom_metadata={"kar_vectors_version": str(snapshot.version)}
            ),
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def run(
    conf: Config,
    out: Path,
    fmt: OutputFormat = "parquet",
    samples_path: Path | None = None,
    version: int | None = None,
    as_of: datetime | None = None,
    user_col: str = "user_id",
    item_col: str = "item_id",
    spark: SparkSession | None = None,
) -> JoinResult:
    started = time.monotonic()
    snapshot = resolve(conf.table_path("vectors"), version, as_of)
    log.info(
        "joining vectors version %d (committed %s) onto samples",
        snapshot.version,
        snapshot.committed_at.isoformat(),
    )
    spark = spark or session(conf.spark, app_name="kar-join-features")
    joined = join(spark, read_samples(spark, conf, samples_path), snapshot, user_col, item_col)
    write(joined, out, fmt, snapshot)
    written = spark.read.parquet(*_files(out, fmt))
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
    log.info("wrote %d joined rows to %s (%s)", counts["rows"], out, fmt)
    return JoinResult(
        out=str(out.resolve()),
        format=fmt,
        rows=counts["rows"],
        users_without_vector=counts["users"],
        items_without_vector=counts["items"],
        vectors_version=snapshot.version,
        seconds=time.monotonic() - started,
    )


def _files(out: Path, fmt: OutputFormat) -> list[str]:
    if fmt == "delta":
        table = tables.open_table(out)
        return table.file_uris() if table is not None else []
    return [str(out)]
