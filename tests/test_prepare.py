"""prepare's logic on small hand-made Spark frames (real local Spark), and on real ML-100K."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pytest
from table_rows import knowledge_row, knowledge_table

from factors import sets
from jobs import prepare, schemas, tables
from jobs.readers import RawData

FS = sets.load("movies")


@pytest.fixture
def raw(spark) -> RawData:
    # u1: 5 events given out of time order; u2: one event; u3: 70 events (cut capped at 30).
    rows = [
        ("u1", f"i{k}", float(r), ts)
        for k, r, ts in [(4, 5, 40), (0, 2, 0), (2, 4, 20), (1, 3, 10), (3, 1, 30)]
    ]
    rows += [("u2", "i0", 4.0, 5)]
    rows += [("u3", f"i{k}", 4.0, 100 + k) for k in range(70)]
    inter = spark.createDataFrame(
        rows, "user_id string, item_id string, rating double, timestamp long"
    )
    items = spark.createDataFrame(
        [(f"i{k}", f"Movie {k} (1995)", ["Drama"]) for k in range(70)],
        "item_id string, title string, genres array<string>",
    )
    users = spark.createDataFrame(
        [("u1", {"age": "24", "gender": "M", "occupation": "technician"}), ("u2", {}), ("u3", {})],
        "user_id string, attributes map<string,string>",
    )
    return RawData(interactions=inter, items=items, users=users)


def _by_user(df) -> dict:
    return {r["user_id"]: r for r in df.collect()}


def test_history_is_time_ordered_and_cut_the_kar_way(raw, make_config):
    hist = _by_user(prepare.user_histories(raw.interactions, raw.items, make_config()))
    assert [e["item_id"] for e in hist["u1"]["history"]] == ["i0", "i1", "i2", "i3", "i4"]
    assert hist["u1"]["n"] == 3  # (5 + 1) // 2
    assert hist["u2"]["n"] == 1
    assert hist["u3"]["n"] == 30  # min(35, 30)


def test_samples_start_at_the_cut_with_preceding_history(raw, make_config):
    conf = make_config("prepare.ctr_history_length=2")
    hist = prepare.user_histories(raw.interactions, raw.items, conf)
    splits = prepare.split_users(hist, conf)
    samples = prepare.ctr_samples(hist, splits, conf).collect()
    u1 = sorted((r for r in samples if r["user_id"] == "u1"), key=lambda r: r["position"])
    assert [(r["item_id"], r["position"]) for r in u1] == [("i3", 3), ("i4", 4)]
    assert u1[0]["history_item_ids"] == ["i1", "i2"] and u1[0]["history_ratings"] == [3.0, 4.0]
    assert [r["label"] for r in u1] == [0, 1]  # rating 1 -> 0, rating 5 -> 1 (threshold 3)
    assert not any(r["user_id"] == "u2" for r in samples)  # one event: all of it is prompt
    assert sum(r["user_id"] == "u3" for r in samples) == 40
    assert all(r["position"] >= 30 for r in samples if r["user_id"] == "u3")


def test_user_split_is_exact_and_seeded(spark, make_config):
    users = spark.createDataFrame([(f"u{k}",) for k in range(20)], "user_id string")
    first = _by_user(prepare.split_users(users, make_config()))
    again = _by_user(prepare.split_users(users, make_config()))
    other = _by_user(prepare.split_users(users, make_config("run.seed=7")))
    test_users = {u for u, r in first.items() if r["split"] == "test"}
    assert len(test_users) == 2
    assert test_users == {u for u, r in again.items() if r["split"] == "test"}
    assert test_users != {u for u, r in other.items() if r["split"] == "test"}


def test_prompts_hold_only_the_prompt_part_of_history(raw, make_config):
    conf = make_config()
    hist = prepare.user_histories(raw.interactions, raw.items, conf)
    rows = {
        (r["kind"], r["entity_id"]): r
        for r in prepare.entity_prompts(hist, raw, conf, FS).collect()
    }
    u1 = rows[("user", "u1")]
    assert u1["prompt"].startswith("Analyze the user's preferences on movies")
    assert (
        '"Movie 0 (1995)", 2 stars; "Movie 1 (1995)", 3 stars; "Movie 2 (1995)", 4 stars;'
        in u1["context"]
    )
    assert "Movie 3" not in u1["prompt"]  # index >= n is a CTR sample, never in the prompt
    assert "24-year-old" in u1["context"]
    item = rows[("item", "i7")]
    assert item["prompt"].endswith("Movie: Movie 7 (1995)")
    prefixes = {r["prompt"].split("\n\n")[0] for (kind, _), r in rows.items() if kind == "item"}
    assert len(prefixes) == 1  # all item prompts share the instruction prefix
    assert len({r["fingerprint"] for r in rows.values()}) == len(rows)


def test_fingerprint_changes_only_with_inputs(raw, make_config, spark):
    conf = make_config()

    def fingerprints(conf, raw):
        hist = prepare.user_histories(raw.interactions, raw.items, conf)
        return {
            (r["kind"], r["entity_id"]): r["fingerprint"]
            for r in prepare.entity_prompts(hist, raw, conf, FS).collect()
        }

    base = fingerprints(conf, raw)
    assert fingerprints(conf, raw) == base
    new_model = fingerprints(make_config("llm.model=/models/other"), raw)
    assert all(new_model[k] != base[k] for k in base)
    extra = spark.createDataFrame([("u1", "i5", 5.0, 1)], raw.interactions.schema)
    changed = fingerprints(conf, RawData(raw.interactions.unionByName(extra), raw.items, raw.users))
    assert {k for k in base if changed[k] != base[k]} == {("user", "u1")}


def test_attributes_hold_genres_year_and_demographics(raw):
    rows = {
        (r["kind"], r["entity_id"], r["attribute"], r["value"])
        for r in prepare.entity_attributes(raw).collect()
    }
    assert ("item", "i3", "genre", "Drama") in rows and ("item", "i3", "year", "1995") in rows
    assert {r for r in rows if r[0] == "user"} == {
        ("user", "u1", "age", "24"),
        ("user", "u1", "gender", "M"),
        ("user", "u1", "occupation", "technician"),
    }
    assert len(rows) == 70 * 2 + 3


def test_run_writes_only_changed_prompts_and_unchanged_samples_once(spark, ml100k, make_config):
    conf = make_config("data.sample.max_items=20", "data.sample.max_users=15")
    first = prepare.run(conf, "r1", spark)
    assert (first.users, first.items, first.prompts_pending) == (15, 20, 35)
    pending = tables.read(conf.table_path("prompts"), schemas.PROMPTS)
    assert set(pending.column("run_id").to_pylist()) == {"r1"}

    # Pretend three entities were generated: the next prepare must skip exactly those.
    now = datetime.now(UTC)
    done = pending.slice(0, 3).to_pylist()
    knowledge = knowledge_table(
        knowledge_row(**r, text="x", input_tokens=1, output_tokens=1, generated_at=now)
        for r in done
    )
    tables.overwrite(conf.table_path("knowledge"), knowledge, schemas.KNOWLEDGE)
    second = prepare.run(conf, "r2", spark)
    assert second.prompts_pending == 32
    assert second.samples_version == first.samples_version  # same samples: no new version
    assert tables.version(conf.table_path("attributes")) == 0  # unchanged: not rewritten
    attrs = tables.read(conf.table_path("attributes"), schemas.ATTRIBUTES)
    assert set(attrs.column("kind").to_pylist()) == {"user", "item"}
    assert len(set(attrs.filter(pa.compute.equal(attrs["kind"], "item"))["entity_id"])) == 20
    samples = tables.read(conf.table_path("samples"), schemas.SAMPLES)
    assert samples.num_rows == first.samples
    assert set(samples.column("split").to_pylist()) == {"train", "test"}
