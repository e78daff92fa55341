"""The `knowledge` table's read rules: an entity's current answer, and leak-free training pairs.

The table is append-only: every answer stays, keyed by (kind, entity_id,
fingerprint), with the window its prompt covered (schemas.WINDOW_FIELDS).
Stages that need "the current knowledge" or "what the adaptor may train on"
read it through here, so the rules are spelled once.

The rule "current knowledge" in three engines, spelled here together on one ORDER: Ray
Datasets (`current_stream`) for the stages that touch every entity (generate, encode,
adapt's export), which workers read and shuffle file by file so nothing grows in the
driver; Spark (`current_spark`) for prepare; and Arrow (`current`) for bounded reads (a
sample's users, one entity, tests).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.plumbing import schemas, tables
from jobs.plumbing.storage import Location

if TYPE_CHECKING:
    import ray.data
    from pyspark.sql import DataFrame

ENTITY = ["kind", "entity_id"]
# One row per answer: an entity's answer to one exact prompt.
KEYS = [*ENTITY, "fingerprint"]
# An entity's current knowledge sorts last: the latest data cutoff wins; at one cutoff the
# production window beats KAR's cut (bootstrap prompts), then the latest answer wins.
# Rows of older releases (null as_of) sort first.
ORDER = ["as_of", "window", "generated_at", "fingerprint"]
SECONDS_PER_DAY = 86_400


def read_usable(path: Location, columns: list[str]) -> pa.Table:
    """`columns` (plus ENTITY and ORDER) of every usable answer, in the declared types.

    Answers that failed every check are kept only as a record (usable=false).
    """
    wanted = list(dict.fromkeys([*ENTITY, *ORDER, *columns]))
    schema = pa.schema([schemas.KNOWLEDGE.field(c) for c in wanted])
    table = tables.open_table(path)
    if table is None:
        return schema.empty_table()
    rows = table.to_pyarrow_table(columns=wanted, filters=schemas.USABLE_KNOWLEDGE)
    return tables.conform(pa.table(rows), schema, "knowledge")


def read_usable_of(
    path: Location, columns: list[str], kind: str, ids: pa.Array, version: int | None = None
) -> pa.Table:
    """`read_usable` for the entities `ids` of `kind` only (at `version`, default latest).

    A bounded read however large the table (a sample's users or items): scanned batch
    by batch with the filter pushed down, keeping only the matching rows.
    """
    wanted = list(dict.fromkeys([*ENTITY, *ORDER, *columns]))
    where = (pc.field("usable") == pa.scalar(True)) & of_entities(kind, ids.cast(pa.string()))
    return tables.read_where(path, schemas.KNOWLEDGE, where, version, wanted)


def of_entities(kind: str, ids: pa.Array) -> pc.Expression:
    """The filter of the rows of entities `ids` of `kind` (any table keyed by ENTITY)."""
    return (pc.field("kind") == kind) & pc.field("entity_id").isin(ids)


def read_keys(path: Location) -> pa.Table:
    """KEYS of every answer, usable or not (a bounded read: for small tables only)."""
    schema = pa.schema([schemas.KNOWLEDGE.field(k) for k in KEYS])
    table = tables.open_table(path)
    if table is None:
        return schema.empty_table()
    return tables.conform(pa.table(table.to_pyarrow_table(columns=KEYS)), schema, "knowledge")


def current(rows: pa.Table) -> pa.Table:
    """Each entity's current knowledge among `rows` (one row per kind, entity_id)."""
    return tables.latest_rows(rows, ENTITY, ORDER)


def current_spark(know: DataFrame) -> DataFrame:
    """Each entity's current usable answer, as `current` picks it, on a Spark DataFrame of
    knowledge rows (prepare's refresh states)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    latest = Window.partitionBy(*ENTITY).orderBy(*[F.col(c).desc_nulls_last() for c in ORDER])
    return (
        know.where(F.col("usable"))
        .withColumn("_rank", F.row_number().over(latest))
        .where(F.col("_rank") == 1)
        .drop("_rank")
    )


def ages_days(rows: pa.Table, as_of: datetime) -> np.ndarray:
    """Days between each row's data cutoff and `as_of` (rows of older releases: left out)."""
    cutoffs = rows.column("as_of").drop_null()
    micros = pc.subtract(pa.scalar(as_of, schemas.UTC_US), cutoffs).cast(pa.int64())
    return micros.to_numpy(zero_copy_only=False) / (SECONDS_PER_DAY * 1e6)


def entity_draws(rows: pa.Table, seed: int) -> np.ndarray:
    """A seeded uniform draw in [0, 1) per row from its (kind, entity_id): the same entity
    draws the same number in every table and version, so samples of entities line up."""
    import polars as pl  # its string hash, vectorised (pyarrow.compute has none)

    keys = pc.binary_join_element_wise(rows.column("kind"), rows.column("entity_id"), "\x1f")
    hashed = pl.from_arrow(keys).hash(seed=seed).to_numpy()
    return (hashed >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def entity_sample(
    path: Location,
    schema: pa.Schema,
    max_entities: int,
    seed: int,
    version: int | None = None,
    columns: list[str] | None = None,
    where: pc.Expression | None = None,
) -> pa.Table:
    """`columns` of the rows (matching `where`) of a seeded sample of entities: whole when
    the table has at most `max_entities` rows, else a streamed scan keeping the rows whose
    entity draws below max_entities / rows. A bounded read for one-process summaries (the
    run report): about max_entities entities or fewer, the same ones on every read."""
    total = tables.count(path, version)
    fraction = max_entities / total if total else 1.0
    wanted = list(columns or schema.names)
    read = list(dict.fromkeys([*ENTITY, *wanted]))  # the draw needs the entity
    kept = []
    for batch in tables.scan(path, schema, version, read, where):
        if fraction < 1.0:
            batch = batch.filter(pa.array(entity_draws(batch, seed) < fraction))
        kept.append(batch.select(wanted))
    return (
        pa.concat_tables(kept)
        if kept
        else pa.schema([schema.field(c) for c in wanted]).empty_table()
    )


def live_ages(
    path: Location, as_of: datetime, max_entities: int, seed: int
) -> dict[str, np.ndarray]:
    """kind -> age in days (ages_days) of the current knowledge at `as_of` of a seeded sample
    of at most about `max_entities` entities (entity_sample: a bounded read)."""
    columns = list(dict.fromkeys([*ENTITY, *ORDER]))
    usable = pc.field("usable") == pa.scalar(True)
    rows = entity_sample(path, schemas.KNOWLEDGE, max_entities, seed, None, columns, usable)
    live = current(rows)
    return {
        kind: ages_days(live.filter(pc.equal(live.column("kind"), kind)), as_of)
        for kind in schemas.KINDS
    }


def age_summary(ages: np.ndarray) -> dict[str, float | int]:
    """Entities, median, p90 and max age in days: the run summary's view of live knowledge."""
    if ages.size == 0:
        return {"entities": 0}
    p50, p90 = np.percentile(ages, [50, 90])
    return {
        "entities": int(ages.size),
        "p50": round(float(p50), 1),
        "p90": round(float(p90), 1),
        "max": round(float(ages.max()), 1),
    }


def _lookup(keys: pa.ChunkedArray, ids: pa.Array, values: pa.Array) -> pa.Array:
    """`values[i]` for each key equal to `ids[i]`; null for keys not in `ids`."""
    return pc.take(values, pc.index_in(keys, value_set=ids))


def after_prompts(samples: pa.Table, ids: pa.Array, history_end: pa.Array) -> pa.Table:
    """`samples` without any interaction inside the prompt of user `ids[i]` (positions before
    `history_end[i]`); users not in `ids` keep every sample."""
    end = _lookup(samples.column("user_id"), ids, history_end)
    inside = pc.fill_null(pc.less(samples.column("position"), end), False)
    return samples.filter(pc.invert(inside))


def training_users(samples: pa.Table, users: pa.Table) -> pa.Table:
    """Per user, the knowledge the adaptor may train with against `samples`.

    `users` are candidate rows (user knowledge with an embedding). A row qualifies
    if its prompt ended before the user's last sample (history_end <= that
    position), so at least one sample lies after it; of those, the user's current
    one (ORDER) is chosen. On a weekly run that is last run's knowledge against this
    week's interactions; on a first run it is the bootstrap prompt (KAR's cut).
    Use with `after_prompts(samples, chosen.entity_id, chosen.history_end)`.
    """
    last = samples.group_by("user_id").aggregate([("position", "max")])
    users = users.filter(pc.is_valid(users.column("history_end")))
    limit = _lookup(users.column("entity_id"), last.column("user_id"), last.column("position_max"))
    fits = pc.fill_null(pc.less_equal(users.column("history_end"), limit), False)
    return current(users.filter(fits))


# Stream form. Ray Data groups and joins by hash shuffles (all rows of a key meet in one
# partition); a key and an ORDER are each packed into one string so that any number of
# key columns, and nulls in them, shuffle and compare alike.
_SEP = "\x1f"
_WIDTH = 20  # digits of a microsecond timestamp


def _fixed(col: pa.ChunkedArray) -> pa.Array:
    """Timestamps as zero-padded microseconds (strings sort as the times do); null: spaces,
    which sort first, as nulls do in ORDER."""
    micros = pc.cast(pc.cast(col, pa.timestamp("us", "UTC")), pa.int64())
    text = pc.utf8_lpad(pc.cast(micros, pa.string()), _WIDTH, "0")
    return pc.fill_null(text, " " * _WIDTH)


def _with_keys(batch: pa.Table, per: list[str]) -> pa.Table:
    """`batch` plus `_group` (the `per` key) and `_order` (ORDER, sortable as a string)."""
    group = [pc.fill_null(pc.cast(batch.column(c), pa.string()), "") for c in per]
    order = [
        _fixed(batch.column("as_of")),
        pc.fill_null(pc.utf8_rpad(batch.column("window"), 10, " "), " " * 10),
        _fixed(batch.column("generated_at")),
        batch.column("fingerprint"),
    ]
    batch = batch.append_column("_group", pc.binary_join_element_wise(*group, _SEP))
    return batch.append_column("_order", pc.binary_join_element_wise(*order, _SEP))


def partitions() -> int:
    """Hash partitions of a shuffle: one per CPU of the cluster (at least 2)."""
    import ray

    return max(2, int(ray.cluster_resources().get("CPU", 2)))


def current_stream(path: Location, columns: list[str], per: list[str] = ENTITY) -> ray.data.Dataset:
    """`columns` of each `per` group's current usable answer (ORDER), as a Ray Dataset;
    `current(read_usable(...))` in stream form.

    `per` = ENTITY: an entity's current knowledge; ENTITY + window: per history window.
    """
    from ray.data.aggregate import Max

    wanted = list(dict.fromkeys([*per, *ORDER, *columns]))
    usable = pc.field("usable") == pa.scalar(True)
    rows = tables.dataset(path, schemas.KNOWLEDGE, columns=wanted, where=usable)
    rows = rows.map_batches(_with_keys, fn_args=(per,), batch_format="pyarrow")
    latest = (
        rows.select_columns(["_group", "_order"])
        .groupby("_group")
        .aggregate(Max("_order", alias_name="_order"))
    )
    current = rows.join(latest, "inner", partitions(), on=("_group", "_order"))
    return current.drop_columns(["_group", "_order"])


def without(rows: ray.data.Dataset, done: ray.data.Dataset, keys: list[str]) -> ray.data.Dataset:
    """Rows of `rows` whose `keys` are not among `done`'s (a distributed anti-join)."""
    return rows.join(done.select_columns(keys), "left_anti", partitions(), on=tuple(keys))
