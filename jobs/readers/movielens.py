"""MovieLens inputs, read from the directory at data.path (`data.format`):

- movielens-100k: RecBole atomic files (`ml-100k.inter/.item/.user`, tab-separated, typed
  header such as `user_id:token`), as fetched by `python -m jobs.plumbing.datasets`.
- movielens-1m: the raw ML-1M `ratings.dat`, `movies.dat`, `users.dat` (`::`-separated,
  latin-1 encoded); age and occupation codes are decoded to words for the prompts.
"""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from jobs.plumbing.config import DataConf
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
    exists,
    genres,
    lookup,
    split_text_file,
)

ML100K_FILES = {"interactions": "ml-100k.inter", "items": "ml-100k.item", "users": "ml-100k.user"}
ML1M_FILES = {"interactions": "ratings.dat", "items": "movies.dat", "users": "users.dat"}
ML1M_COLUMNS = {
    "interactions": ["UserID", "MovieID", "Rating", "Timestamp"],
    "items": ["MovieID", "Title", "Genres"],
    "users": ["UserID", "Gender", "Age", "Occupation", "Zip-code"],
}
# ML-1M README: users.dat stores age groups and occupations as codes.
ML1M_AGES = {
    "1": "under-18",
    "18": "18-24",
    "25": "25-34",
    "35": "35-44",
    "45": "45-49",
    "50": "50-55",
    "56": "56+",
}
ML1M_OCCUPATIONS = dict(
    enumerate(
        [
            "other",
            "academic/educator",
            "artist",
            "clerical/admin",
            "college/grad student",
            "customer service",
            "doctor/health care",
            "executive/managerial",
            "farmer",
            "homemaker",
            "K-12 student",
            "lawyer",
            "programmer",
            "retired",
            "sales/marketing",
            "scientist",
            "self-employed",
            "technician/engineer",
            "tradesman/craftsman",
            "unemployed",
            "writer",
        ]
    )
)
GENDERS = {"M": "male", "F": "female"}


def read_100k(spark: SparkSession, conf: DataConf) -> Inputs:
    """RecBole's ML-100K atomic files: typed header, tab-separated; users file optional."""
    root, scale = _directory(conf.path, conf.format), conf.rating_scale
    fix = (
        f"Run `python -m jobs.plumbing.datasets {root}` to fetch MovieLens 100K, or fix data.path."
    )
    hint = "The file is not a RecBole atomic file of MovieLens 100K; fetch it again."
    paths = {what: root / name for what, name in ML100K_FILES.items()}

    def load(what: str) -> Raw:
        path = exists(paths[what], what, fix)
        return split_text_file(spark, path, what, "\t", "utf-8", None, hint)

    inter_raw = load("interactions")
    inter = check(
        inter_raw,
        {
            "user_id": Field("user_id", Kind.ID),
            "item_id": Field("item_id", Kind.ID),
            "rating": Field("rating", Kind.NUMBER, bounds=scale),
            "timestamp": Field("timestamp", Kind.TIMESTAMP),
        },
    )
    items_raw = load("items")
    items = check(
        items_raw,
        {
            "item_id": Field("item_id", Kind.ID),
            "title": Field("movie_title", Kind.TEXT),
            "year": Field("release_year", Kind.OPTIONAL, required=False),
            "genres": Field("class", Kind.OPTIONAL, required=False),
        },
    )
    # RecBole splits "Toy Story (1995)" into title and year; prompts want the original title.
    with_year = F.concat(F.col("title"), F.lit(" ("), F.col("year"), F.lit(")"))
    items = items.select(
        *POSITION,
        "item_id",
        F.when(F.col("year").rlike(r"^\d{4}$"), with_year).otherwise(F.col("title")).alias("title"),
        genres(F.col("genres"), " ").alias("genres"),
    )
    if not paths["users"].exists():
        return Table(inter_raw, inter), Table(items_raw, items), None
    users_raw = load("users")
    names = [c for c in users_raw.columns if c not in ("user_id", "zip_code")]
    users = check(
        users_raw,
        {"user_id": Field("user_id", Kind.ID)}
        | {c: Field(c, Kind.OPTIONAL, required=False) for c in names},
    )
    attrs = {c: F.col(c) for c in names}
    if "gender" in attrs:
        attrs["gender"] = lookup(GENDERS, F.col("gender"))
    users = users.select(*POSITION, "user_id", attributes(attrs).alias("attributes"))
    return Table(inter_raw, inter), Table(items_raw, items), Table(users_raw, users)


def read_1m(spark: SparkSession, conf: DataConf) -> Inputs:
    """The raw ML-1M `.dat` files: no header, `::`-separated, latin-1; users file optional."""
    root, scale = _directory(conf.path, conf.format), conf.rating_scale
    fix = "Place the ML-1M files (ratings.dat, movies.dat, users.dat) there, or fix data.path."
    hint = "The file is not in MovieLens 1M `::` format."
    paths = {what: root / name for what, name in ML1M_FILES.items()}

    def load(what: str) -> Raw:
        path = exists(paths[what], what, fix)
        cols = ML1M_COLUMNS[what]
        return split_text_file(spark, path, what, "::", "ISO-8859-1", cols, hint)

    inter_raw = load("interactions")
    inter = check(
        inter_raw,
        {
            "user_id": Field("UserID", Kind.ID),
            "item_id": Field("MovieID", Kind.ID),
            "rating": Field("Rating", Kind.NUMBER, bounds=scale),
            "timestamp": Field("Timestamp", Kind.TIMESTAMP),
        },
    )
    items_raw = load("items")
    items = check(
        items_raw,
        {
            "item_id": Field("MovieID", Kind.ID),
            "title": Field("Title", Kind.TEXT),
            "genres": Field("Genres", Kind.OPTIONAL),
        },
    )
    items = items.withColumn("genres", genres(F.col("genres"), r"\|"))
    if not paths["users"].exists():
        return Table(inter_raw, inter), Table(items_raw, items), None
    users_raw = load("users")
    users = check(
        users_raw,
        {
            "user_id": Field("UserID", Kind.ID),
            "gender": Field("Gender", Kind.OPTIONAL),
            "age": Field("Age", Kind.OPTIONAL),
            "occupation": Field("Occupation", Kind.OPTIONAL),
        },
    )
    attrs = {
        "gender": lookup(GENDERS, F.col("gender")),
        "age": lookup(ML1M_AGES, F.col("age")),
        "occupation": lookup(ML1M_OCCUPATIONS, F.col("occupation")),
    }
    users = users.select(*POSITION, "user_id", attributes(attrs).alias("attributes"))
    return Table(inter_raw, inter), Table(items_raw, items), Table(users_raw, users)


def _directory(path: Path | None, fmt: str) -> Path:
    """data.path, checked to be a directory with files in it (found there by name)."""
    fetch = (
        " Run `python -m jobs.plumbing.datasets data/ml-100k` to fetch it."
        if fmt == "movielens-100k"
        else ""
    )
    if path is None or not path.is_dir():
        raise DataError(
            f"data.path {path} is not a directory; data.format {fmt!r} reads its files from one."
            + fetch
        )
    if not any(path.iterdir()):
        raise DataError(
            f"data.path {path} is an empty directory; put the {fmt} files there.{fetch}"
        )
    return path
