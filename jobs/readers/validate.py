"""The validation engine every input format shares: raw files in, typed and checked Spark
DataFrames out, so each format only says where its columns are and what they must hold.

A bad row fails the run here, naming its file, exact 1-based line (row index for Parquet),
column and value, instead of surfacing as a null deep inside prepare or the adaptor.

Scaling: everything runs in Spark, nothing is collected. Text is read with `spark.read.text`;
each line keeps its position (file, split start, row id within the split), and only the first
bad line is turned into a line number, by counting the lines before it. The happy path costs
one validation pass per file plus the duplicate-id and unknown-item checks.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from urllib.parse import unquote, urlparse

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.plumbing.config import DataConf, FileConf
from jobs.plumbing.errors import InputError

log = logging.getLogger(__name__)

POSITION = ("_file", "_block", "_pos")
# `_found` of a CSV line whose quotes do not close on it (a quoted newline): such a file is
# read record by record (_csv_records).
_OPEN_QUOTE = -2


@dataclass(frozen=True)
class RawData:
    """The three normalized inputs every later stage reads."""

    interactions: DataFrame  # user_id string, item_id string, rating double, timestamp long
    items: DataFrame  # item_id string, title string, genres array<string>
    users: DataFrame | None  # user_id string, attributes map<string,string>
    # Documented repairs (README, "Bad input and personal data") -> rows affected.
    repairs: dict[str, int] = dataclasses.field(default_factory=dict)


class DataError(InputError):
    """An input file is unusable; the message names file, line (or row), column, value and fix."""


class Kind(Enum):
    """What a cell must hold; decides its Spark type and which values are errors."""

    ID = "id"  # non-empty string (trimmed)
    TEXT = "text"  # non-empty string (trimmed)
    NUMBER = "number"  # finite double
    TIMESTAMP = "timestamp"  # epoch seconds (number) or a date-time string -> long
    OPTIONAL = "optional"  # string, may be empty (-> null)


@dataclass(frozen=True)
class Field:
    """One of our columns: the file column it comes from and what it must hold."""

    column: str
    kind: Kind
    # False: a column the file may lack (read as null); True: missing it is a DataError.
    required: bool = True
    # NUMBER: values outside [min, max] are a DataError (the rating scale).
    bounds: tuple[float, float] | None = None


@dataclass(frozen=True)
class Raw:
    """One input's cells by file column, each row keeping its position for error messages."""

    path: str  # as configured, shown in messages
    what: str  # interactions | items | users
    columns: list[str]  # the file's column names
    types: dict[str, T.DataType]  # Spark type per file column (all strings for text inputs)
    # POSITION, _line (raw text; null for Parquet), _found (field count, -1 if unknown;
    # null when the row is well-formed), then one column per file column named `_c<i>`.
    rows: DataFrame
    lines: DataFrame | None  # every raw line with its POSITION (text inputs), for line numbers
    separator: str | None
    hint: str  # how to fix a missing column
    encoding: str = "utf-8"  # text inputs: how the bytes were decoded
    # CSV with quoted newlines: rows are records (1-based, header excluded), not lines.
    records: bool = False
    escape: str = '"'  # CSV: how a quote inside a quoted field is escaped (FileConf.escape)

    def cell(self, column: str) -> Column:
        return F.col(f"_c{self.columns.index(column)}")


def _display(file_uri: str) -> str:
    parsed = urlparse(file_uri)
    return unquote(parsed.path) if parsed.scheme in ("", "file") else file_uri


def _where(raw: Raw, file: str, block: int, pos: int) -> str:
    """'<file>, line N' (exact, 1-based) for text; '<file>, row index N' for Parquet."""
    shown = raw.path if Path(raw.path).is_file() else _display(file)
    if raw.records:
        return f"{shown}, record {pos} (1-based, after the header; a record may span lines)"
    if raw.lines is None:
        return f"{shown}, row index {pos} (0-based)"
    before = (F.col("_block") < block) | ((F.col("_block") == block) & (F.col("_pos") <= pos))
    line = raw.lines.where(F.col("_file") == file).select(F.count_if(before)).first()[0]
    return f"{shown}, line {line}"


def exists(path: Path | str, what: str, fix: str) -> str:
    """The path as text; a missing path, or a folder without data files, is a DataError.

    A folder (a dataset Spark or another engine wrote as part files) is read whole;
    messages then name the file inside it.
    """
    text = str(path)
    if "://" in text:
        return text
    local = Path(text)
    if not local.exists():
        raise DataError(f"{what} file {text} does not exist. {fix}")
    if local.is_dir() and not any(
        p.is_file() and not p.name.startswith((".", "_")) for p in local.rglob("*")
    ):
        raise DataError(
            f"{what} path {text} is a folder with no data files in it. Point it at the {what} "
            f"file (or a folder of part files). {fix}"
        )
    return text


def _text_lines(spark: SparkSession, path: str, encoding: str) -> DataFrame:
    """Every line of a text file (or directory of files) with its position."""
    value = F.col("value")
    if encoding.lower().replace("-", "") != "utf8":
        # spark.read.text keeps the raw bytes; decode them as the file's real encoding.
        value = F.decode(value.cast("binary"), encoding)
    return spark.read.text(path).select(
        F.col("_metadata.file_path").alias("_file"),
        F.col("_metadata.file_block_start").alias("_block"),
        F.monotonically_increasing_id().alias("_pos"),
        value.alias("_line"),
    )


def _data_lines(lines: DataFrame, header: str | None) -> DataFrame:
    """Lines holding records: blank lines and header lines (one per file) are skipped."""
    keep = F.trim(F.col("_line")) != ""
    if header is not None:
        keep &= F.col("_line") != header
    return lines.where(keep)


def _first_line(spark: SparkSession, path: str, encoding: str, what: str) -> str:
    row = _text_lines(spark, path, encoding).select("_line").first()
    if row is None:
        raise DataError(f"{what} file {path} is empty. Point the config at the right file.")
    return row[0]


def split_text_file(
    spark: SparkSession,
    path: str,
    what: str,
    separator: str,
    encoding: str,
    columns: list[str] | None,
    hint: str,
) -> Raw:
    """A separator-delimited text file without quoting (MovieLens); header when `columns` is None.

    A header of RecBole's typed form (`user_id:token`) is read without the `:type` suffix.
    """
    lines = _text_lines(spark, path, encoding)
    header = None
    if columns is None:
        header = _first_line(spark, path, encoding, what)
        columns = [name.split(":", 1)[0].strip() for name in header.split(separator)]
    parts = F.split(F.col("_line"), f"\\Q{separator}\\E", -1)  # a literal, not a regex
    found = F.size(parts)
    rows = _data_lines(lines, header).select(
        *POSITION,
        "_line",
        F.when(found != len(columns), found).alias("_found"),
        *[F.get(parts, i).alias(f"_c{i}") for i in range(len(columns))],
    )
    types = dict.fromkeys(columns, T.StringType())
    return Raw(path, what, columns, types, rows, lines, separator, hint, encoding)


def csv_file(spark: SparkSession, fc: FileConf, what: str, hint: str) -> Raw:
    """A generic CSV quoted as CSV writers do (RFC 4180): a quoted field may hold the
    delimiter, doubled quotes (`"a ""b"" c"`) and newlines. Read line by line, so errors
    name exact lines; a file with a quoted newline is read record by record instead."""
    path = exists(fc.path, what, f"Fix data.{what}.path.")
    quoting = {"sep": fc.delimiter, "quote": '"', "escape": fc.escape}
    names = (
        spark.read.options(header=fc.header, inferSchema=False, encoding=fc.encoding, **quoting)
        .csv(path)
        .columns
    )
    header = _first_line(spark, path, fc.encoding, what) if fc.header else None
    schema = ", ".join(f"`_c{i}` STRING" for i in range(len(names))) + ", `_bad` STRING"
    options = {**quoting, "mode": "PERMISSIVE", "columnNameOfCorruptRecord": "_bad"}
    lines = _text_lines(spark, path, fc.encoding)
    parsed = _data_lines(lines, header).select(
        *POSITION, "_line", F.from_csv("_line", schema, options).alias("_r")
    )
    # An odd number of quote characters leaves a quoted field open at the end of the line
    # (escaped ones aside: a backslash and the character it escapes are dropped first).
    line = F.col("_line")
    if fc.escape == "\\":
        line = F.regexp_replace(line, r"\\.", "")
    quotes = F.length(line) - F.length(F.regexp_replace(line, '"', ""))
    rows = parsed.select(
        *POSITION,
        "_line",
        F.when(quotes % 2 == 1, F.lit(_OPEN_QUOTE))
        .when(F.col("_r._bad").isNotNull(), F.lit(-1))
        .alias("_found"),
        *[F.col(f"_r._c{i}").alias(f"_c{i}") for i in range(len(names))],
    )
    types = dict.fromkeys(names, T.StringType())
    if rows.where(F.col("_found") == _OPEN_QUOTE).limit(1).count():
        # A quoted field holds a newline: parse records, not lines (positions become records).
        return _csv_records(spark, fc, path, what, hint, names)
    return Raw(
        path, what, names, types, rows, lines, fc.delimiter, hint, fc.encoding, escape=fc.escape
    )


def _csv_records(
    spark: SparkSession, fc: FileConf, path: str, what: str, hint: str, names: list[str]
) -> Raw:
    """A CSV whose quoted fields may span lines, parsed record by record (Spark's multiLine
    reader: a file is one partition, so ids within it count its records in order)."""
    schema = T.StructType(
        [T.StructField(f"_c{i}", T.StringType()) for i in range(len(names))]
        + [T.StructField("_bad", T.StringType())]
    )
    df = (
        spark.read.options(
            header=fc.header,
            multiLine=True,
            encoding=fc.encoding,
            sep=fc.delimiter,
            quote='"',
            escape=fc.escape,
            mode="PERMISSIVE",
            columnNameOfCorruptRecord="_bad",
        )
        .schema(schema)
        .csv(path)
    )
    ids = df.select(
        F.col("_metadata.file_path").alias("_file"),
        F.monotonically_increasing_id().alias("_id"),
        "*",
    )
    first = F.min("_id").over(Window.partitionBy("_file"))
    rows = ids.select(
        "_file",
        F.lit(0).cast("long").alias("_block"),
        (F.col("_id") - first + 1).alias("_pos"),
        F.col("_bad").alias("_line"),
        F.when(F.col("_bad").isNotNull(), F.lit(-1)).alias("_found"),
        *[F.col(f"_c{i}") for i in range(len(names))],
    )
    types = dict.fromkeys(names, T.StringType())
    return Raw(
        path, what, names, types, rows, None, fc.delimiter, hint, fc.encoding, True, fc.escape
    )


def parquet_file(spark: SparkSession, fc: FileConf, what: str, hint: str) -> Raw:
    """A Parquet file or directory; errors point at the row index within its file."""
    path = exists(fc.path, what, f"Fix data.{what}.path.")
    df = spark.read.parquet(path)
    names = df.columns
    rows = df.select(
        F.col("_metadata.file_path").alias("_file"),
        F.lit(0).cast("long").alias("_block"),
        F.col("_metadata.row_index").alias("_pos"),
        F.lit(None).cast("string").alias("_line"),
        F.lit(None).cast("int").alias("_found"),
        *[F.col(f"`{name}`").alias(f"_c{i}") for i, name in enumerate(names)],
    )
    types = {f.name: f.dataType for f in df.schema.fields}
    return Raw(path, what, names, types, rows, None, None, hint)


_NUMERIC = (T.NumericType, T.BooleanType)
_DATETIME = (T.TimestampType, T.TimestampNTZType, T.DateType)


def _label(column: str, name: str) -> str:
    """How messages name a column: the file's name, plus ours when they differ."""
    return f"'{column}'" + ("" if column == name else f" ({name})")


def _typed(raw: Raw, name: str, field: Field) -> tuple[Column, list[tuple[Column, str]]]:
    """The cell as its Spark type, and (condition, problem) pairs that make the row bad."""
    if field.column not in raw.columns:
        return F.lit(None).cast("string"), []
    v = raw.cell(field.column)
    dtype = raw.types[field.column]
    label = _label(field.column, name)
    if not isinstance(dtype, (T.StringType, *_NUMERIC, *_DATETIME)):
        raise DataError(
            f"{raw.path}: column {label} has type {dtype.simpleString()}; expected text, "
            f"a number or a date-time. {raw.hint}"
        )
    text = F.trim(v.cast("string"))
    empty = text.isNull() | (text == "")
    if field.kind in (Kind.ID, Kind.TEXT):
        return text, [(empty, "empty")]
    if field.kind == Kind.OPTIONAL:
        return F.when(~empty, text), []
    if field.kind == Kind.NUMBER:
        if isinstance(dtype, _DATETIME):
            raise DataError(f"{raw.path}: column {label} holds dates; expected a number.")
        number = (text if isinstance(dtype, T.StringType) else v).try_cast("double")
        finite = ~F.isnan(number) & (F.abs(number) != float("inf"))
        problems = [(empty, "empty"), (number.isNull(), "nan"), (~finite, "infinite")]
        if field.bounds is not None:
            low, high = field.bounds
            problems.append(((number < low) | (number > high), "scale"))
        return number, problems
    if isinstance(dtype, _DATETIME):
        seconds = F.unix_seconds(v.cast("timestamp"))
    elif isinstance(dtype, T.StringType):
        as_number = text.try_cast("double").try_cast("long")
        seconds = F.coalesce(as_number, F.unix_seconds(text.try_cast("timestamp")))
    else:
        seconds = v.try_cast("double").try_cast("long")
    return seconds, [(empty, "empty"), (seconds.isNull(), "time")]


_PROBLEMS = {
    "empty": "the value is empty, but the column is required",
    "nan": "{value!r} is not a number",
    "infinite": "{value!r} is not a finite number",
    "time": "{value!r} is not a number (epoch seconds) or a date-time",
    "scale": "{value!r} is outside the rating scale {low:g} to {high:g} (data.rating_scale: fix "
    "the row, or set the scale your data uses)",
}


def _escape_hint(raw: Raw, line: str) -> str | None:
    """A line that escapes quotes with a backslash where the file is read with doubled ones."""
    if raw.separator is None or raw.escape == "\\" or '\\"' not in line:
        return None
    return (
        'The line escapes quotes with a backslash (\\"), as Spark, Hive and MySQL exports do: '
        f"set data.{raw.what}.escape: {chr(92)!r}."
    )


def _delimiter_hint(raw: Raw, line: str | None = None) -> str | None:
    """The delimiter a header that landed in one column (or a data line) seems to use."""
    if raw.separator is None:
        return None
    for candidate in (",", ";", "\t", "|"):
        if candidate == raw.separator:
            continue
        if line is None and len(raw.columns) == 1 and candidate in raw.columns[0]:
            what = "The header looks"
        elif line is not None and line.count(candidate) + 1 == len(raw.columns):
            what = "The line looks"
        else:
            continue
        return (
            f"{what} {candidate!r}-separated, not {raw.separator!r}: set "
            f"data.{raw.what}.delimiter: {candidate!r}."
        )
    return None


def check(raw: Raw, fields: Mapping[str, Field]) -> DataFrame:
    """Validate every row in one pass; raise DataError for the first bad one.

    Returns POSITION plus one typed column per field (our names).
    """
    for name, field in fields.items():
        if field.required and field.column not in raw.columns:
            label = _label(field.column, name)
            raise DataError(
                f"{raw.path}: column {label} is missing; the file has columns: "
                f"{', '.join(raw.columns)}. {_delimiter_hint(raw) or raw.hint}"
            )

    def cause(column: str, value: Column, problem: str) -> Column:
        return F.struct(
            F.lit(column).alias("column"), value.alias("value"), F.lit(problem).alias("problem")
        )

    typed: dict[str, Column] = {}
    rows = raw.rows
    # Checks in column order; the first failing one names the row's error. Spark keeps a
    # line's bytes as read: bytes invalid in UTF-8 become U+FFFD only once decoded, which
    # a regex match does (a byte-wise `contains` would not see them).
    invalid = F.col("_line").rlike("\\x{FFFD}") if raw.lines is not None else F.lit(False)
    chain = F.when(invalid, cause("", F.col("_line"), "encoding")).when(
        F.col("_found").isNotNull(), cause("", F.col("_line"), "shape")
    )
    for name, field in fields.items():
        column, problems = _typed(raw, name, field)
        typed[name] = column
        for condition, problem in problems:
            chain = chain.when(
                condition, cause(name, raw.cell(field.column).cast("string"), problem)
            )
    error = chain.alias("_error")
    checked = rows.select(*POSITION, "_found", error).agg(
        F.count("*").alias("rows"),
        F.count("_error").alias("bad"),
        F.min(F.when(F.col("_error").isNotNull(), F.struct(*POSITION, "_found", "_error"))).alias(
            "first"
        ),
    )
    result = checked.first()
    if result["bad"]:
        first = result["first"]
        where = _where(raw, first["_file"], first["_block"], first["_pos"])
        column, value, problem = first["_error"]
        tally = (
            f" ({result['bad']} bad rows in all; this is the first.)" if result["bad"] > 1 else ""
        )
        if problem == "encoding":
            raise DataError(
                f"{where}: the line holds bytes that are not valid {raw.encoding}: {value!r}. "
                f"Set data.{raw.what}.encoding to the file's encoding (e.g. latin-1), or fix "
                f"the line.{tally}"
            )
        if problem == "shape":
            found = "a different number of fields" if first["_found"] < 0 else first["_found"]
            hint = (
                _escape_hint(raw, value)
                or _delimiter_hint(raw, value)
                or "Fix the row or remove it."
            )
            raise DataError(
                f"{where}: expected {len(raw.columns)} fields ({', '.join(raw.columns)}) "
                f"separated by {raw.separator!r}, found {found}: {value!r}. {hint}{tally}"
            )
        spec = fields[column]
        label = _label(spec.column, column)
        low, high = spec.bounds or (0, 0)
        raise DataError(
            f"{where}, column {label}: {_PROBLEMS[problem].format(value=value, low=low, high=high)}"
            f". Fix the row or remove it.{tally}"
        )
    log.info("%s: %d rows from %s", raw.what, result["rows"], raw.path)
    return rows.select(*POSITION, *[col.alias(name) for name, col in typed.items()])


def _unique(raw: Raw, df: DataFrame, key: str) -> None:
    """Ids must appear once: a repeated item or user would duplicate every join downstream."""
    at = F.struct(*POSITION)
    dup = (
        df.groupBy(key)
        .agg(F.count("*").alias("n"), F.min(at).alias("first"), F.max(at).alias("last"))
        .where(F.col("n") > 1)
        .orderBy("first")
        .first()
    )
    if dup is not None:
        first, last = (_where(raw, *dup[k]) for k in ("first", "last"))
        raise DataError(
            f"{raw.path}: {key} {dup[key]!r} appears {dup['n']} times (first at {first}, last "
            f"at {last}); each id must appear once. Remove the duplicate rows."
        )


def _known_items(inter_raw: Raw, inter: DataFrame, items_raw: Raw, items: DataFrame) -> None:
    """Every interaction must point at a described item: the item's title feeds the prompts."""
    orphans = (
        inter.join(items.select("item_id"), "item_id", "left_anti")
        .agg(F.count("*").alias("n"), F.min(F.struct(*POSITION, "item_id")).alias("first"))
        .first()
    )
    if orphans["n"]:
        first = orphans["first"]
        where = _where(inter_raw, first["_file"], first["_block"], first["_pos"])
        raise DataError(
            f"{where}: item id {first['item_id']!r} is not in the items file {items_raw.path} "
            f"({orphans['n']} interactions reference unknown items). Add the items to "
            f"{items_raw.path} or remove those interactions."
        )


def attributes(columns: Mapping[str, Column]) -> Column:
    """map<string,string> of the non-empty attributes (prompts skip the missing ones)."""
    if not columns:
        return F.create_map().cast("map<string,string>")
    pairs = [x for key, col in columns.items() for x in (F.lit(key), col)]
    return F.map_filter(F.create_map(*pairs), lambda _, v: v.isNotNull())


def lookup(codes: Mapping[object, str], column: Column) -> Column:
    """Decode a code column with a fixed table, keeping unknown codes as they are."""
    table = F.create_map(*[x for k, v in codes.items() for x in (F.lit(str(k)), F.lit(v))])
    return F.coalesce(F.try_element_at(table, column), column)


def genres(column: Column, separator: str) -> Column:
    return F.filter(F.split(F.coalesce(column, F.lit("")), separator), lambda g: g != "")


@dataclass(frozen=True)
class Table:
    """One input as a format reader leaves it: the raw file (for messages) and its rows."""

    raw: Raw
    df: DataFrame  # POSITION + the normalized columns


Inputs = tuple[Table, Table, Table | None]  # interactions, items, users


def finish(inputs: Inputs, conf: DataConf) -> RawData:
    """The checks that span rows and files, the same for every format (ids appear once,
    interactions name known items, sane times, duplicates), then the RawData stages read."""
    inter, items, users = inputs
    _unique(items.raw, items.df, "item_id")
    if users is not None:
        _unique(users.raw, users.df, "user_id")
    _known_items(inter.raw, inter.df, items.raw, items.df)
    inter = _times(inter, conf)
    inter, duplicates = _duplicates(inter)
    repairs = {"exact_duplicate_interactions_dropped": duplicates}
    repairs |= _without_interactions(inter.df, items.df, users.df if users else None)
    if users is None:
        log.info("no users file: prompts will carry no user attributes")
    return RawData(
        interactions=inter.df.drop(*POSITION),
        items=items.df.drop(*POSITION),
        users=None if users is None else users.df.drop(*POSITION),
        repairs=repairs,
    )


_MS_THRESHOLD = 100_000_000_000  # 1e11 s is year 5138; as milliseconds, 1973


def _times(inter: Table, conf: DataConf) -> Table:
    """Timestamps in seconds (milliseconds converted, by config or detected and logged); zero,
    negative and far-future times are a DataError naming the first such row."""
    df, unit = inter.df, conf.timestamp_unit
    if unit == "auto":
        ms = F.col("timestamp") > _MS_THRESHOLD
        at = F.struct(*POSITION, "timestamp")
        found = df.agg(
            F.max("timestamp").alias("largest"),
            F.min(F.when(ms, at)).alias("ms"),
            F.min(F.when(~ms & (F.col("timestamp") > 0), at)).alias("s"),
        ).first()
        largest = found["largest"]
        if found["ms"] is not None and found["s"] is not None:
            s_row, ms_row = found["s"], found["ms"]
            raise DataError(
                "column timestamp mixes seconds and milliseconds, which data.timestamp_unit: "
                f"auto cannot tell apart: {_where(inter.raw, *s_row[:3])} holds "
                f"{s_row['timestamp']} (seconds), {_where(inter.raw, *ms_row[:3])} holds "
                f"{ms_row['timestamp']} (milliseconds). Convert the file to one unit and set "
                "data.timestamp_unit to it."
            )
        unit = "ms" if largest is not None and largest > _MS_THRESHOLD else "s"
        if unit == "ms":
            log.warning(
                "%s: timestamps read as milliseconds (largest %d is past year 5138 in "
                "seconds); set data.timestamp_unit: ms to say so, or s to refuse them",
                inter.raw.path,
                largest,
            )
    if unit == "ms":
        df = df.withColumn("timestamp", F.floor(F.col("timestamp") / 1000).cast("long"))
    limit = int(time.time() + conf.max_future_days * 86_400)
    bad = (F.col("timestamp") <= 0) | (F.col("timestamp") > limit)
    first = (
        df.where(bad)
        .agg(F.count("*").alias("n"), F.min(F.struct(*POSITION, "timestamp")).alias("first"))
        .first()
    )
    if first["n"]:
        row = first["first"]
        where = _where(inter.raw, row["_file"], row["_block"], row["_pos"])
        raise DataError(
            f"{where}, column timestamp: {row['timestamp']} ({unit}) is not a time between 1970 "
            f"and now + data.max_future_days ({conf.max_future_days:g} days). Fix the row, or "
            f"set data.timestamp_unit if the times are in another unit ({first['n']} row(s) "
            "like it)."
        )
    return Table(inter.raw, df)


def _duplicates(inter: Table) -> tuple[Table, int]:
    """Exact duplicate interactions dropped (a counted repair); the same user, item and time
    with two ratings is a DataError naming both rows."""
    key = ["user_id", "item_id", "timestamp"]
    at = F.struct(*POSITION)
    groups = (
        inter.df.groupBy(key)
        .agg(
            F.count("*").alias("n"),
            F.countDistinct("rating").alias("ratings"),
            F.min(at).alias("first"),
            F.max(at).alias("last"),
        )
        .where(F.col("n") > 1)
    )
    summary = groups.agg(
        F.sum(F.col("n") - 1).alias("extra"),
        F.min(F.when(F.col("ratings") > 1, F.struct("first", "last", *key))).alias("conflict"),
    ).first()
    conflict = summary["conflict"]
    if conflict is not None:
        first, last = (_where(inter.raw, *conflict[k]) for k in ("first", "last"))
        raise DataError(
            f"{inter.raw.path}: user {conflict['user_id']!r} rated item {conflict['item_id']!r} "
            f"at the same time {conflict['timestamp']} with different ratings ({first} and "
            f"{last}); keep one of the rows."
        )
    extra = int(summary["extra"] or 0)
    if not extra:
        return inter, 0
    log.warning("%s: %d exact duplicate interaction rows dropped", inter.raw.path, extra)
    return Table(inter.raw, inter.df.dropDuplicates([*key, "rating"])), extra


def _without_interactions(
    inter: DataFrame, items: DataFrame, users: DataFrame | None
) -> dict[str, int]:
    """Users and items no interaction mentions: users get no prompt, items still do."""
    counts = {
        "items_without_interactions": items.join(inter, "item_id", "left_anti").count(),
    }
    if users is not None:
        counts["users_without_interactions"] = users.join(inter, "user_id", "left_anti").count()
    for what, n in counts.items():
        if n:
            log.info("%s: %d", what.replace("_", " "), n)
    return counts
