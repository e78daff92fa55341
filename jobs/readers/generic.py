"""The generic format (`data.format: generic`): CSV (one record per line) or Parquet, with
`columns` mapping our names to the file's. CSV without a header names its columns `_c0`,
`_c1`, ... (Spark's convention).
"""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from jobs.plumbing.config import DataConf, FileConf
from jobs.readers.validate import (
    POSITION,
    DataError,
    Field,
    Inputs,
    Kind,
    Raw,
    Table,
    attributes,
    check,
    csv_file,
    genres,
    parquet_file,
)

# Our column names per table, the keys data.<table>.columns may map (users: any attribute).
KEYS = {
    "interactions": ("user_id", "item_id", "rating", "timestamp"),
    "items": ("item_id", "title", "genres"),
}


def _fields(what: str, fc: FileConf, scale: tuple[float, float]) -> dict[str, Field]:
    mapping = dict(fc.columns)
    if what == "users":
        attrs = {k: Field(v, Kind.OPTIONAL) for k, v in mapping.items() if k != "user_id"}
        return {"user_id": Field(mapping.get("user_id", "user_id"), Kind.ID)} | attrs
    unknown = sorted(set(mapping) - set(KEYS[what]))
    if unknown:
        raise DataError(
            f"data.{what}.columns: unknown key(s) {', '.join(unknown)}; the keys are our column "
            f"names: {', '.join(KEYS[what])}. Fix the config."
        )
    if what == "interactions":
        kinds = {"user_id": Kind.ID, "item_id": Kind.ID, "rating": Kind.NUMBER}
        kinds["timestamp"] = Kind.TIMESTAMP
        fields = {k: Field(mapping.get(k, k), kind) for k, kind in kinds.items()}
        fields["rating"] = Field(mapping.get("rating", "rating"), Kind.NUMBER, bounds=scale)
        return fields
    return {
        "item_id": Field(mapping.get("item_id", "item_id"), Kind.ID),
        "title": Field(mapping.get("title", "title"), Kind.TEXT),
        # Genres are optional unless the config maps them explicitly.
        "genres": Field(mapping.get("genres", "genres"), Kind.OPTIONAL, "genres" in mapping),
    }


def _table(spark: SparkSession, fc: FileConf, what: str, scale: tuple[float, float]) -> Table:
    hint = f"Map it in data.{what}.columns or fix the file's header."
    reader: Callable[[SparkSession, FileConf, str, str], Raw] = (
        parquet_file if fc.format == "parquet" else csv_file
    )
    raw = reader(spark, fc, what, hint)
    df = check(raw, _fields(what, fc, scale))
    if what == "items":
        df = df.withColumn("genres", genres(F.col("genres"), r"\|"))
    elif what == "users":
        attrs = {c: F.col(f"`{c}`") for c in df.columns if c not in (*POSITION, "user_id")}
        df = df.select(*POSITION, "user_id", attributes(attrs).alias("attributes"))
    return Table(raw, df)


def read(spark: SparkSession, conf: DataConf) -> Inputs:
    """The configured files, each mapped to our columns by data.<table>.columns."""
    if conf.interactions is None or conf.items is None:
        raise DataError("data.format 'generic' needs data.interactions and data.items.")
    scale = conf.rating_scale
    return (
        _table(spark, conf.interactions, "interactions", scale),
        _table(spark, conf.items, "items", scale),
        None if conf.users is None else _table(spark, conf.users, "users", scale),
    )
