"""prepare (Spark): raw interactions -> prompts for entities due a new answer + CTR samples.

Only interactions before the run's cutoff (run.as_of) count. A user prompt
lists one of two history windows (prepare.window): production, the latest
max_prompt_history interactions (what the weekly run publishes), or KAR's
evaluation cut, the first n = min((len+1)//2, max_prompt_history). CTR samples
start at KAR's cut; adapt trains each user's text only against samples after
the prompt that produced it (jobs/rules/knowledge.py), so no label is in its prompt.

Every entity's prompt inputs are fingerprinted. An item is due a new answer when
its fingerprint has none; a user in the production window when the refresh
policy says so (RefreshConf): a window that gained enough interactions or
knowledge that is too old. Users without knowledge that ended before their
latest interaction also get KAR's-cut prompt (bootstrap), the adaptor's
leak-free training text. Due prompts go to `prompts`, which makes the weekly run
incremental and a rerun after a crash resume where it stopped.

No table's rows pass through the driver: Spark tasks write the Parquet files
(`spark.write_parts`) and the driver commits their file actions with delta-rs;
it collects only aggregates (counts, digests) and one small row per file.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType

from factors import prompts, sets, untrusted
from factors.sets import FactorSet
from factors.untrusted import age_range
from jobs import llm, readers
from jobs.plumbing import faults, schemas, tables
from jobs.plumbing.config import Config
from jobs.plumbing.models import ModelError, resolve_model
from jobs.plumbing.spark import read_delta, session, write_parts
from jobs.plumbing.storage import Location
from jobs.rules import knowledge

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareResult:
    users: int
    items: int
    prompts_pending: int
    # kind -> state -> entities: fresh (answer of this exact prompt exists), new (no
    # answer yet), refreshed (due a new one), stale (changed, not due: keeps its answer).
    refresh: dict[str, dict[str, int]]
    # Users that also got KAR's-cut prompt (training text for the adaptor).
    bootstrap: int
    # Input text cleaned: markers and invisible characters removed, values cut.
    sanitized: dict[str, int]
    # Documented repairs of the input (readers.RawData.repairs).
    repairs: dict[str, int]
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
    return dataclasses.replace(raw, interactions=inter, items=items, users=users)


def user_histories(inter: DataFrame, items: DataFrame, conf: Config) -> DataFrame:
    """One row per user: time-ordered `history` (timestamp, item_id, rating, title), its
    `length` and KAR's cut `n`."""
    events = inter.join(items.select("item_id", "title"), "item_id")
    # Struct order makes sort_array order by timestamp, then item id: a stable time order.
    history = F.sort_array(F.collect_list(F.struct("timestamp", "item_id", "rating", "title")))
    length = F.size("history")
    cut = F.least(F.floor((length + 1) / 2), F.lit(conf.prepare.max_prompt_history))
    return (
        events.groupBy("user_id")
        .agg(history.alias("history"))
        .withColumn("length", length.cast("int"))
        .withColumn("n", cut.cast("int"))
    )


def user_windows(hist: DataFrame, window: str, conf: Config) -> DataFrame:
    """user_id, window, history_end and `prompt_history`: the interactions a prompt lists.

    production: the latest max_prompt_history (history_end = length);
    evaluation: KAR's cut, the first n (history_end = n).
    """
    if window == "production":
        start = F.greatest(F.col("length") - conf.prepare.max_prompt_history, F.lit(0))
        end = F.col("length")
    else:
        start, end = F.lit(0), F.col("n")
    return hist.select(
        "user_id",
        F.lit(window).alias("window"),
        end.cast("int").alias("history_end"),
        F.slice("history", start + 1, end - start).alias("prompt_history"),
    )


# split_of maps a user's seeded 64-bit hash to [0, 1) on this grid (exact in a double).
_SPLIT_GRID = 1 << 52


def split_of(user_id: Column, conf: Config) -> Column:
    """A user's split: "test" for a seeded hash fraction of users, else "train".

    The test share is approximately prepare.test_fraction (not exact): each user's split
    depends on its id and run.seed alone, so it is computed row by row with no global
    ranking of users through one task, and a user keeps its split as others come and go.
    """
    hashed = F.pmod(F.xxhash64(user_id, F.lit(conf.run.seed)), F.lit(_SPLIT_GRID))
    is_test = hashed / F.lit(float(_SPLIT_GRID)) < conf.prepare.test_fraction
    return F.when(is_test, "test").otherwise("train")


def ctr_samples(hist: DataFrame, conf: Config) -> DataFrame:
    """Samples from index n onward, each with the preceding `ctr_history_length` interactions
    and the user's `split_of`."""
    k = conf.prepare.ctr_history_length
    exploded = hist.select("user_id", "n", "history", F.posexplode("history").alias("pos", "ev"))
    start = F.greatest(F.col("pos") - k, F.lit(0))
    before = F.slice("history", start + 1, F.col("pos") - start)
    return exploded.where(F.col("pos") >= F.col("n")).select(
        "user_id",
        F.col("ev.item_id").alias("item_id"),
        (F.col("ev.rating") > conf.prepare.label_threshold).cast("byte").alias("label"),
        F.col("ev.rating").cast("float").alias("rating"),
        F.col("ev.timestamp").alias("timestamp"),
        F.col("pos").cast("int").alias("position"),
        F.transform(before, lambda e: e["item_id"]).alias("history_item_ids"),
        F.transform(before, lambda e: e["rating"].cast("float")).alias("history_ratings"),
        split_of(F.col("user_id"), conf).alias("split"),
    )


def _user_context_udf(fs: FactorSet) -> Column:
    def render(history: list, attributes: dict | None) -> str:
        pairs = [(e["title"], float(e["rating"])) for e in history]
        return prompts.user_context(fs, pairs, attributes)

    return F.udf(render, StringType(), useArrow=True)


_COUNTS = "markers int, invisible int, cut int"


def clean_inputs(raw: readers.RawData, conf: Config) -> tuple[readers.RawData, dict[str, int]]:
    """Input text cleaned (factors/untrusted.py) and users' attributes cut to the allow-list.

    Titles, genres and allowed attribute values lose chat/special-token markers of
    the configured model and invisible characters, and are cut at
    prepare.max_text_chars; ages become ranges if prepare.bucket_age. Returns the
    cleaned inputs (cached) and how many markers, invisible characters and cut
    values were found: the run summary's `sanitized`.
    """
    cleaner = untrusted.Cleaner(_model_special_tokens(conf), conf.prepare.max_text_chars)
    allowed, bucket = set(conf.prepare.user_attributes), conf.prepare.bucket_age

    def tally(done: list[untrusted.Cleaned]) -> dict[str, int]:
        return {
            "markers": sum(c.markers for c in done),
            "invisible": sum(c.invisible for c in done),
            "cut": sum(c.cut for c in done),
        }

    # Plain functions without hints: Spark 4 reads hints on a UDF as a pandas-UDF signature.
    def title(text):
        c = cleaner.clean(text)
        return {"value": c.text, **tally([c])}

    def genres(values):
        done = [cleaner.clean(v) for v in values or []]
        return {"value": [c.text for c in done if c.text], **tally(done)}

    def attributes(values):
        pairs = dict(values or {})
        kept = {k: v for k, v in pairs.items() if k in allowed and v is not None}
        done = {
            k: cleaner.clean(age_range(v) if bucket and k == "age" else v) for k, v in kept.items()
        }
        return {
            "value": {k: c.text for k, c in done.items() if c.text},
            **tally(list(done.values())),
        }

    def udf(fn, value_type: str) -> Column:
        return F.udf(fn, f"value {value_type}, {_COUNTS}")

    items = raw.items.select(
        "item_id",
        udf(title, "string")("title").alias("t"),
        udf(genres, "array<string>")("genres").alias("g"),
    ).cache()
    parts = [items.select(F.col("t.*")), items.select(F.col("g.*"))]
    users = None
    if raw.users is not None:
        cleaned = raw.users.select(
            "user_id", udf(attributes, "map<string,string>")("attributes").alias("a")
        ).cache()
        parts.append(cleaned.select(F.col("a.*")))
        users = cleaned.select("user_id", F.col("a.value").alias("attributes"))
    totals = {"markers": 0, "invisible": 0, "cut": 0}
    for part in parts:
        row = part.agg(*[F.sum(k).alias(k) for k in totals]).first()
        totals = {k: totals[k] + int(row[k] or 0) for k in totals}
    if any(totals.values()):
        log.warning(
            "input text cleaned: %(markers)d chat/special-token markers and %(invisible)d "
            "invisible characters removed, %(cut)d values cut at prepare.max_text_chars",
            totals,
        )
    items = items.select(
        "item_id", F.col("t.value").alias("title"), F.col("g.value").alias("genres")
    )
    return dataclasses.replace(raw, items=items, users=users), totals


def _model_special_tokens(conf: Config) -> list[str]:
    """The configured model's special tokens; generic markers only if it cannot be loaded."""
    try:
        return llm.special_tokens(resolve_model(conf.llm.model, "llm", conf.run.cache_dir))
    except (ModelError, OSError) as e:
        log.warning(
            "cannot read llm.model's tokenizer (%s): input text is cleaned of the generic "
            "chat markers only",
            e,
        )
        return []


def settings(conf: Config, fs: FactorSet) -> str:
    """Everything besides the prompt text that changes the answer: template, factors, model
    and its sampling settings (engine and batch size do not belong here)."""
    model = conf.llm
    return (
        f"{prompts.TEMPLATE_VERSION}|{fs.version}|{model.model}|"
        f"{model.max_new_tokens}|{model.temperature}|{model.top_p}|{model.seed}"
    )


def user_prompts(
    windows: DataFrame, users: DataFrame | None, conf: Config, fs: FactorSet
) -> DataFrame:
    """kind, entity_id, context, window, history_end, prompt of each user window."""
    if users is not None:
        windows = windows.join(users, "user_id", "left")
    else:
        windows = windows.withColumn("attributes", F.lit(None).cast("map<string,string>"))
    render_user = _user_context_udf(fs)
    return windows.select(
        F.lit("user").alias("kind"),
        F.col("user_id").alias("entity_id"),
        render_user("prompt_history", "attributes").alias("context"),
        "window",
        "history_end",
    ).withColumn("prompt", F.udf(lambda c: prompts.user_prompt(fs, c), StringType())("context"))


def item_prompts(items: DataFrame, fs: FactorSet) -> DataFrame:
    """kind, entity_id, context, window, history_end, prompt of each item."""
    return items.select(
        F.lit("item").alias("kind"),
        F.col("item_id").alias("entity_id"),
        F.udf(lambda t: prompts.item_context(fs, t), StringType())("title").alias("context"),
        F.lit("item").alias("window"),
        F.lit(0).alias("history_end"),
    ).withColumn("prompt", F.udf(lambda c: prompts.item_prompt(fs, c), StringType())("context"))


def fingerprinted(rows: DataFrame, conf: Config, fs: FactorSet, as_of: datetime) -> DataFrame:
    """Prompt rows in the PROMPTS layout (less run_id, created_at) with their fingerprint."""
    salt = settings(conf, fs)
    return rows.select(
        "kind",
        "entity_id",
        "prompt",
        "context",
        F.sha2(F.concat_ws("\u0001", F.lit(salt), "kind", "prompt"), 256).alias("fingerprint"),
        F.lit(conf.llm.model).alias("model_id"),
        F.lit(fs.version).alias("factor_version"),
        F.lit(prompts.TEMPLATE_VERSION).alias("template_version"),
        "window",
        F.lit(as_of).cast("timestamp").alias("as_of"),
        F.col("history_end").cast("int").alias("history_end"),
        F.lit(salt).alias("settings"),
    )


def entity_prompts(
    windows: DataFrame, raw: readers.RawData, conf: Config, fs: FactorSet, as_of: datetime
) -> DataFrame:
    """Every user window (`user_windows`) and item with its prompt and fingerprint."""
    rows = user_prompts(windows, raw.users, conf, fs).unionByName(item_prompts(raw.items, fs))
    return fingerprinted(rows, conf, fs, as_of)


def refresh_states(current: DataFrame, know: DataFrame, conf: Config, as_of: datetime) -> DataFrame:
    """`current` prompts with a `state`: fresh | new | refreshed | stale (PrepareResult.refresh).

    Items, and users outside the production window, are refreshed whenever their
    prompt changed; production-window users follow the refresh policy.
    """
    done = know.select(*knowledge.ENTITY, "fingerprint").distinct().withColumn("_done", F.lit(True))
    cur = knowledge.current_spark(know).select(
        *knowledge.ENTITY,
        F.lit(True).alias("_has"),
        F.col("as_of").alias("_as_of"),
        F.col("history_end").alias("_end"),
        F.col("settings").alias("_settings"),
    )
    policy = conf.refresh
    gained = F.col("history_end") - F.col("_end")
    age_days = (F.unix_timestamp(F.lit(as_of).cast("timestamp")) - F.unix_timestamp("_as_of")) / (
        knowledge.SECONDS_PER_DAY
    )
    due = (
        (F.col("window") != "production")
        | F.col("_end").isNull()
        | F.col("_as_of").isNull()
        | ~F.col("_settings").eqNullSafe(F.col("settings"))
        | (gained >= policy.min_new_interactions)
        | (gained < 0)  # history rewritten: the old answer describes interactions now gone
        | (age_days >= policy.max_age_days)
    )
    state = (
        F.when(F.col("_done").isNotNull(), "fresh")
        .when(F.col("_has").isNull(), "new")
        .when(due, "refreshed")
        .otherwise("stale")
    )
    return (
        current.join(done, [*knowledge.ENTITY, "fingerprint"], "left")
        .join(cur, knowledge.ENTITY, "left")
        .withColumn("state", state)
        .drop("_done", "_has", "_as_of", "_end", "_settings")
    )


def covered_users(hist: DataFrame, know: DataFrame) -> DataFrame:
    """user_id of the users whose usable answer ended before their latest interaction:
    text the adaptor can train on without leakage."""
    return (
        know.where(F.col("usable") & (F.col("kind") == "user"))
        .select(F.col("entity_id").alias("user_id"), "history_end")
        .join(hist.select("user_id", "length"), "user_id")
        .where(F.col("history_end") < F.col("length"))
        .select("user_id")
        .distinct()
    )


def bootstrap_cohort(
    hist: DataFrame,
    know: DataFrame,
    covered: DataFrame,
    cohort: DataFrame,
    conf: Config,
    run_id: str,
) -> DataFrame:
    """The adaptor's training cohort after this run (COHORT rows), from the stored one;
    `covered`: `covered_users(hist, know)`.

    Chosen once and kept: members stay, whatever their activity. A member that is still
    not covered and whose KAR's-cut answer came back unusable (generate already retried
    it generate.max_attempts times) leaves; the free slots, up to
    refresh.bootstrap_users members, go to a seeded draw of users never in the cohort
    with no text to train on. A cohort of 10^6 users is a Spark-sized table, never
    collected.
    """
    user = F.col("kind") == "user"
    failed = (
        know.where(user & (F.col("window") == "evaluation"))
        .groupBy(F.col("entity_id").alias("user_id"))
        .agg(F.max(F.col("usable").cast("int")).alias("ok"))
        .where(F.col("ok") == 0)
        .select("user_id")
    )
    members = cohort.where(F.col("state") == "member")
    leaving = (
        members.join(covered, "user_id", "left_anti")
        .join(failed, "user_id", "left_semi")
        .select(
            "user_id",
            F.lit("left").alias("state"),
            F.lit("unusable").alias("reason"),
            F.lit(run_id).alias("run_id"),
        )
    )
    staying = members.join(leaving, "user_id", "left_anti")
    candidates = (
        hist.where(F.col("length") >= 2)
        .select("user_id")
        .join(cohort, "user_id", "left_anti")
        .join(covered, "user_id", "left_anti")
    )
    limit = conf.refresh.bootstrap_users
    if limit is not None:
        free = max(0, limit - staying.count())
        draw = F.xxhash64("user_id", F.lit(conf.run.seed))
        candidates = candidates.orderBy(draw, "user_id").limit(free)
    joining = candidates.select(
        "user_id",
        F.lit("member").alias("state"),
        F.lit(None).cast("string").alias("reason"),
        F.lit(run_id).alias("run_id"),
    )
    kept = cohort.where(F.col("state") != "member")
    return kept.unionByName(leaving).unionByName(staying).unionByName(joining)


def bootstrap_users(hist: DataFrame, covered: DataFrame, cohort: DataFrame) -> DataFrame:
    """The hist rows of the cohort's members that have no text to train on yet (not in
    `covered`): they get KAR's-cut prompt."""
    members = cohort.where(F.col("state") == "member").select("user_id")
    return hist.join(members, "user_id", "left_semi").join(covered, "user_id", "left_anti")


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
    spark: SparkSession,
    path: Location,
    rows: DataFrame,
    schema: pa.Schema,
    digest: str,
    run_id: str,
) -> int | None:
    """The table's version: a new one, written by Spark tasks (`write_parts`), only when
    its content differs from `rows` (`digest`). Decided from the digest its last change
    recorded, past maintenance; after an erasure (`kar forget`) the table's rows are hashed
    again (a Spark read, only then), so forgetting an entity the input no longer holds
    rewrites nothing."""
    last = tables.last_change(path)
    if last is None:
        same = False
    elif tables.erased_since(path, last["version"]):
        same = content_digest(read_delta(spark, path, schema)) == digest
    else:
        same = last.get("digest") == digest
    if same:
        version = tables.version(path)
        log.info(
            "%s unchanged (%s rows); kept version %s", path.name, digest.split(":")[0], version
        )
        return version
    return tables.commit_parts(
        path,
        write_parts(rows, path, schema),
        schema,
        mode="overwrite",
        metadata={"digest": digest, "run_id": run_id},
    )


def _queue_done(spark: SparkSession, path: Location, version: int | None, know: DataFrame) -> bool:
    """Whether the prompts the last prepare published (`path` at `version`) are all
    answered, so an empty pending set need not be written: generate would find nothing in
    either. A Spark anti-join of that (weekly, pending-only) table against the knowledge
    keys."""
    if version is None:
        return False
    if tables.count(path, version) == 0:
        return True
    queued = read_delta(spark, path, schemas.PROMPTS, version).select(*knowledge.KEYS)
    answered = know.select(*knowledge.KEYS)
    return queued.join(answered, knowledge.KEYS, "left_anti").limit(1).count() == 0


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
    as_of = conf.run.cutoff()
    raw, sanitized = clean_inputs(sample(readers.read(spark, conf.data), conf), conf)
    # Sampled before the cutoff, so replays of one dataset at several cutoffs share a sample.
    before = raw.interactions.where(F.col("timestamp") < int(as_of.timestamp()))
    raw = dataclasses.replace(raw, interactions=before)

    hist = user_histories(raw.interactions, raw.items, conf).cache()
    samples = ctr_samples(hist, conf).cache()
    current = entity_prompts(user_windows(hist, conf.prepare.window, conf), raw, conf, fs, as_of)

    # Checked before any write: a failed prepare leaves every table as it was.
    samples_path = conf.table_path("samples")
    digest = content_digest(samples)
    n_samples = int(digest.split(":", 1)[0])
    if n_samples == 0:
        raise readers.DataError(
            f"prepare found no CTR samples in {hist.count()} users' histories before "
            f"{as_of:%Y-%m-%d %H:%M} UTC: every user has a single interaction there. Check "
            "run.as_of and the interactions file, or raise data.sample.max_items/max_users"
        )

    knowledge_path = conf.table_path("knowledge")
    tables.evolve(knowledge_path, schemas.KNOWLEDGE)
    know = read_delta(spark, knowledge_path, schemas.KNOWLEDGE)
    states = refresh_states(current, know, conf, as_of).cache()
    due = states.where(F.col("state").isin("new", "refreshed")).drop("state")
    n_boot, boot, cohort = 0, states.limit(0), None
    if conf.prepare.window == "production":
        stored = read_delta(spark, conf.table_path("cohort"), schemas.COHORT)
        covered = covered_users(hist, know)
        cohort = bootstrap_cohort(hist, know, covered, stored, conf, run_id).cache()
        boot = user_windows(bootstrap_users(hist, covered, cohort), "evaluation", conf)
        boot = fingerprinted(user_prompts(boot, raw.users, conf, fs), conf, fs, as_of)
        answered = know.select(*knowledge.ENTITY, "fingerprint")
        boot = boot.join(answered, [*knowledge.ENTITY, "fingerprint"], "left_anti").cache()
        n_boot = boot.count()
        due = due.unionByName(boot)
    # One row per answer key: generate streams this table and asks each row once.
    pending = due.dropDuplicates(knowledge.KEYS).select(
        F.lit(run_id).alias("run_id"), "*", F.current_timestamp().alias("created_at")
    )
    refresh: dict[str, dict[str, int]] = {}
    for row in states.groupBy("kind", "state").count().collect():
        refresh.setdefault(row["kind"], {})[row["state"]] = row["count"]
    prompts_path = conf.table_path("prompts")
    # Spark tasks write the files; the driver commits them and counts rows from their PART rows.
    pending_parts = write_parts(pending, prompts_path, schemas.PROMPTS)
    n_pending = sum(p["rows"] for p in pending_parts)
    states.unpersist()
    n_users, n_items = hist.count(), raw.items.count()
    log.info(
        "%d users, %d items before %s; %d prompts due: users %s, items %s, %d bootstrap "
        "(KAR's cut for adaptor training)",
        n_users,
        n_items,
        as_of.isoformat(),
        n_pending,
        refresh.get("user", {}),
        refresh.get("item", {}),
        n_boot,
    )
    # This run's pending set is what generate reads; an empty one replaces the last only
    # if that still holds an unanswered prompt, so a week with nothing new writes nothing.
    queued = tables.pinned(conf.table_path("stages"), "prepare", "prompts")
    if n_pending == 0 and _queue_done(spark, prompts_path, queued, know):
        prompts_version = queued
        log.info("no prompt due or unanswered; kept prompts version %s", prompts_version)
    else:
        prompts_version = tables.commit_parts(
            prompts_path,
            pending_parts,
            schemas.PROMPTS,
            mode="overwrite",
            metadata={"run_id": run_id, "as_of": as_of.isoformat()},
        )

    faults.point("prepare:after-prompts")
    samples_version = _overwrite_if_changed(
        spark, samples_path, samples, schemas.SAMPLES, digest, run_id
    )
    attributes = entity_attributes(raw)
    attributes_version = _overwrite_if_changed(
        spark,
        conf.table_path("attributes"),
        attributes,
        schemas.ATTRIBUTES,
        content_digest(attributes),
        run_id,
    )
    versions = {"prompts": prompts_version, "samples": samples_version}
    versions["attributes"] = attributes_version
    if cohort is not None:
        # After the prompts: a run killed in between draws the same members again (seeded).
        cohort_path = conf.table_path("cohort")
        versions["cohort"] = _overwrite_if_changed(
            spark, cohort_path, cohort, schemas.COHORT, content_digest(cohort), run_id
        )
    # Last: readers see these versions, or (if this run dies first) the previous ones.
    tables.record_stage(conf.table_path("stages"), run_id, "prepare", versions, as_of, n_pending)
    for frame in (hist, samples, boot, *([cohort] if cohort is not None else [])):
        frame.unpersist()
    return PrepareResult(
        users=n_users,
        items=n_items,
        prompts_pending=n_pending,
        refresh=refresh,
        bootstrap=n_boot,
        sanitized=sanitized,
        repairs=raw.repairs,
        samples=n_samples,
        prompts_version=prompts_version,
        samples_version=samples_version,
        seconds=time.monotonic() - started,
    )
