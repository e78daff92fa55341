"""prepare (Spark): raw interactions -> prompts for changed entities + CTR samples.

Per user, the time-ordered history is cut KAR's way: the first
n = min((len+1)//2, max_prompt_history) interactions feed the prompt, CTR
samples start at index n, so no sample's label is in its own prompt. Every
entity's prompt inputs are fingerprinted; only entities whose fingerprint has
no knowledge yet are written to `prompts`, which makes the weekly run
incremental and a rerun after a crash resume where it stopped.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import StringType

from factors import prompts, sets
from factors.sets import FactorSet
from jobs import readers, schemas, tables
from jobs.config import Config
from jobs.spark import read_delta, session, to_arrow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareResult:
    users: int
    items: int
    prompts_pending: int
    samples: int
    prompts_version: int | None
    samples_version: int | None
    seconds: float


def sample(raw: readers.RawData, conf: Config) -> readers.RawData:
    """Keep the most-rated items, then a seeded random set of users (laptop-size runs)."""
    inter, items, users = raw.interactions, raw.items, raw.users
    limits = conf.data.sample
    if limits.max_items:
        top = (
            inter.groupBy("item_id")
            .count()
            .orderBy(F.desc("count"), "item_id")
            .limit(limits.max_items)
            .select("item_id")
        )
        inter = inter.join(top, "item_id")
        items = items.join(top, "item_id")
    if limits.max_users:
        chosen = (
            inter.select("user_id")
            .distinct()
            .orderBy(F.xxhash64("user_id", F.lit(conf.run.seed)), "user_id")
            .limit(limits.max_users)
        )
        inter = inter.join(chosen, "user_id")
        if users is not None:
            users = users.join(chosen, "user_id")
    return readers.RawData(interactions=inter, items=items, users=users)


def user_histories(inter: DataFrame, items: DataFrame, conf: Config) -> DataFrame:
    """One row per user: time-ordered `history` (timestamp, item_id, rating, title) and cut `n`."""
    events = inter.join(items.select("item_id", "title"), "item_id")
    # Struct order makes sort_array order by timestamp, then item id: a stable time order.
    history = F.sort_array(F.collect_list(F.struct("timestamp", "item_id", "rating", "title")))
    length = F.size("history")
    cut = F.least(F.floor((length + 1) / 2), F.lit(conf.prepare.max_prompt_history))
    return events.groupBy("user_id").agg(history.alias("history")).withColumn("n", cut.cast("int"))


def split_users(hist: DataFrame, conf: Config) -> DataFrame:
    """user_id -> "train"/"test": an exact test_fraction of users, chosen by a seeded hash."""
    order = Window.orderBy(F.xxhash64("user_id", F.lit(conf.run.seed)), "user_id")
    ranked = hist.select("user_id").withColumn("rank", F.percent_rank().over(order))
    is_test = F.col("rank") >= 1 - conf.prepare.test_fraction
    return ranked.select("user_id", F.when(is_test, "test").otherwise("train").alias("split"))


def ctr_samples(hist: DataFrame, splits: DataFrame, conf: Config) -> DataFrame:
    """Samples from index n onward, each with the preceding `ctr_history_length` interactions."""
    k = conf.prepare.ctr_history_length
    exploded = hist.select("user_id", "n", "history", F.posexplode("history").alias("pos", "ev"))
    start = F.greatest(F.col("pos") - k, F.lit(0))
    before = F.slice("history", start + 1, F.col("pos") - start)
    return (
        exploded.where(F.col("pos") >= F.col("n"))
        .select(
            "user_id",
            F.col("ev.item_id").alias("item_id"),
            (F.col("ev.rating") > conf.prepare.label_threshold).cast("byte").alias("label"),
            F.col("ev.rating").cast("float").alias("rating"),
            F.col("ev.timestamp").alias("timestamp"),
            F.col("pos").cast("int").alias("position"),
            F.transform(before, lambda e: e["item_id"]).alias("history_item_ids"),
            F.transform(before, lambda e: e["rating"].cast("float")).alias("history_ratings"),
        )
        .join(splits, "user_id")
    )


def _user_context_udf(fs: FactorSet, with_demographics: bool) -> Column:
    def render(history: list, attributes: dict | None) -> str:
        pairs = [(e["title"], float(e["rating"])) for e in history]
        return prompts.user_context(fs, pairs, attributes if with_demographics else None)

    return F.udf(render, StringType(), useArrow=True)


def entity_prompts(hist: DataFrame, raw: readers.RawData, conf: Config, fs: FactorSet) -> DataFrame:
    """Every current user and item with its prompt, context and fingerprint."""
    users = hist.select("user_id", F.slice("history", 1, F.col("n")).alias("prompt_history"))
    if raw.users is not None:
        users = users.join(raw.users, "user_id", "left")
    else:
        users = users.withColumn("attributes", F.lit(None).cast("map<string,string>"))
    render_user = _user_context_udf(fs, conf.prepare.include_demographics)
    user_rows = users.select(
        F.lit("user").alias("kind"),
        F.col("user_id").alias("entity_id"),
        render_user("prompt_history", "attributes").alias("context"),
    ).withColumn("prompt", F.udf(lambda c: prompts.user_prompt(fs, c), StringType())("context"))

    item_rows = raw.items.select(
        F.lit("item").alias("kind"),
        F.col("item_id").alias("entity_id"),
        F.udf(lambda t: prompts.item_context(fs, t), StringType())("title").alias("context"),
    ).withColumn("prompt", F.udf(lambda c: prompts.item_prompt(fs, c), StringType())("context"))

    llm = conf.llm
    # Everything that changes the answer: prompt text (history, metadata, factors, template)
    # and the model with its sampling settings. Engine and batch size do not belong here.
    salt = (
        f"{prompts.TEMPLATE_VERSION}|{fs.version}|{llm.model}|"
        f"{llm.max_new_tokens}|{llm.temperature}|{llm.top_p}|{llm.seed}"
    )
    return user_rows.unionByName(item_rows).select(
        "kind",
        "entity_id",
        "prompt",
        "context",
        F.sha2(F.concat_ws("\u0001", F.lit(salt), "kind", "prompt"), 256).alias("fingerprint"),
        F.lit(llm.model).alias("model_id"),
        F.lit(fs.version).alias("factor_version"),
        F.lit(prompts.TEMPLATE_VERSION).alias("template_version"),
    )


def entity_attributes(raw: readers.RawData) -> DataFrame:
    """kind, entity_id, attribute, value: items' genres and release year, users' demographics.

    The CTR backbones read these as categorical features (adapters/data.py); the
    year comes from the title's trailing "(1995)", which is how titles carry it.
    """
    genres = raw.items.select(
        F.lit("item").alias("kind"),
        F.col("item_id").alias("entity_id"),
        F.lit("genre").alias("attribute"),
        F.explode("genres").alias("value"),
    )
    year = raw.items.select(
        F.lit("item").alias("kind"),
        F.col("item_id").alias("entity_id"),
        F.lit("year").alias("attribute"),
        F.regexp_extract("title", r"\((\d{4})\)\s*$", 1).alias("value"),
    ).where(F.col("value") != "")
    rows = genres.unionByName(year)
    if raw.users is not None:
        rows = rows.unionByName(
            raw.users.select(
                F.lit("user").alias("kind"),
                F.col("user_id").alias("entity_id"),
                F.explode("attributes").alias("attribute", "value"),
            )
        )
    return rows.distinct()


def _overwrite_if_changed(
    path: Path, rows: DataFrame, schema: pa.Schema, digest: str, run_id: str
) -> int | None:
    """The table's version: a new one only when `digest` differs from the last commit's."""
    if tables.commit_metadata(path, "digest") == digest:
        version = tables.version(path)
        log.info(
            "%s unchanged (%s rows); kept version %s", path.name, digest.split(":")[0], version
        )
        return version
    return tables.overwrite(
        path,
        to_arrow(rows, schema, path.name),
        schema,
        metadata={"digest": digest, "run_id": run_id},
    )


def content_digest(samples: DataFrame) -> str:
    """Order-independent content hash, so unchanged rows are not rewritten as a new version."""
    row = (
        samples.select(F.xxhash64(*samples.columns).alias("h"))
        .agg(
            F.count("*").alias("n"),
            F.bit_xor("h").alias("x"),
            F.sum(F.pmod("h", F.lit(2_147_483_647))).alias("s"),
        )
        .first()
    )
    return f"{row['n']}:{row['x']}:{row['s']}"


def run(conf: Config, run_id: str, spark: SparkSession | None = None) -> PrepareResult:
    started = time.monotonic()
    spark = spark or session(conf.spark, app_name=f"kar-prepare-{run_id}")
    fs = sets.load(conf.factors.domain, conf.factors.file)
    raw = sample(readers.read(spark, conf.data), conf)

    hist = user_histories(raw.interactions, raw.items, conf).cache()
    splits = split_users(hist, conf)
    samples = ctr_samples(hist, splits, conf).cache()
    current = entity_prompts(hist, raw, conf, fs)

    done = read_delta(spark, conf.table_path("knowledge"), schemas.KNOWLEDGE).select(
        "kind", "entity_id", "fingerprint"
    )
    pending = current.join(done, ["kind", "entity_id", "fingerprint"], "left_anti").select(
        F.lit(run_id).alias("run_id"),
        "*",
        F.current_timestamp().alias("created_at"),
    )
    pending_rows = to_arrow(pending, schemas.PROMPTS, "prompts")
    n_users, n_items = hist.count(), raw.items.count()
    log.info(
        "%d users, %d items; %d prompts changed since the last run (%d users, %d items)",
        n_users,
        n_items,
        pending_rows.num_rows,
        sum(k == "user" for k in pending_rows.column("kind").to_pylist()),
        sum(k == "item" for k in pending_rows.column("kind").to_pylist()),
    )
    prompts_path = conf.table_path("prompts")
    # Always record this run's pending set (possibly empty): generate reads exactly it.
    prompts_version = tables.overwrite(
        prompts_path, pending_rows, schemas.PROMPTS, metadata={"run_id": run_id}
    )

    samples_path = conf.table_path("samples")
    digest = content_digest(samples)
    n_samples = int(digest.split(":", 1)[0])
    if n_samples == 0:
        raise ValueError(
            "prepare produced no CTR samples: every user has a single interaction after "
            "sampling; raise data.sample.max_items/max_users or check the interactions file"
        )
    samples_version = _overwrite_if_changed(samples_path, samples, schemas.SAMPLES, digest, run_id)
    attributes = entity_attributes(raw)
    _overwrite_if_changed(
        conf.table_path("attributes"),
        attributes,
        schemas.ATTRIBUTES,
        content_digest(attributes),
        run_id,
    )
    hist.unpersist()
    samples.unpersist()
    return PrepareResult(
        users=n_users,
        items=n_items,
        prompts_pending=pending_rows.num_rows,
        samples=n_samples,
        prompts_version=prompts_version,
        samples_version=samples_version,
        seconds=time.monotonic() - started,
    )


if __name__ == "__main__":
    from jobs import cli

    cli.main(["prepare", *sys.argv[1:]])
