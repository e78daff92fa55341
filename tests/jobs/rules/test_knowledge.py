"""The knowledge table's read rules (jobs/rules/knowledge.py) on real Delta tables in tmp."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import ray
import ray.data
from table_rows import knowledge_row, knowledge_table, sample_row, table_of, vectors_table

from jobs.plumbing import schemas, tables
from jobs.rules import knowledge

T = datetime(2026, 11, 30, tzinfo=UTC)


def _write(path, rows) -> None:
    tables.overwrite(path, knowledge_table(rows), schemas.KNOWLEDGE)


def _ordering_cases() -> list[dict]:
    """Rows that exercise every tie-breaker of knowledge.ORDER (current: prod, new, now, good)."""
    week = timedelta(days=7)
    return [
        # One cutoff, two windows (a first run with its bootstrap prompt): production wins.
        knowledge_row("user", "u1", fingerprint="boot", window="evaluation", as_of=T - week),
        knowledge_row("user", "u1", fingerprint="prod", window="production", as_of=T - week),
        # A later cutoff wins over an answer generated later from an older one.
        knowledge_row("user", "u2", fingerprint="new", as_of=T, generated_at=T),
        knowledge_row("user", "u2", fingerprint="old", as_of=T - week, generated_at=T + week),
        # A row of an older release (no cutoff) is older than any row that has one.
        knowledge_row("user", "u3", fingerprint="legacy", as_of=None, generated_at=T + week),
        knowledge_row("user", "u3", fingerprint="now", as_of=T - week),
        knowledge_row("user", "u4", fingerprint="bad", usable=False, as_of=T),
        knowledge_row("user", "u4", fingerprint="good", as_of=T - week),
    ]


def test_current_prefers_the_latest_cutoff_then_production_over_kars_cut(tmp_path):
    path = tmp_path / "knowledge"
    _write(path, _ordering_cases())
    live = knowledge.current(knowledge.read_usable(path, []))
    got = dict(zip(live["entity_id"].to_pylist(), live["fingerprint"].to_pylist(), strict=True))
    assert got == {"u1": "prod", "u2": "new", "u3": "now", "u4": "good"}


def test_the_streamed_rules_agree_with_the_arrow_ones(tmp_path, ray_local):
    """current_stream (Ray Data shuffles) picks what `current` picks, per entity and per
    window; `without` leaves out exactly the done keys."""
    rows = [
        *_ordering_cases(),
        knowledge_row("item", "u1", fingerprint="item", window=None, as_of=None),
    ]
    path = tmp_path / "knowledge"
    _write(path, rows)

    def picked(table: pa.Table) -> set[tuple[str, str, str]]:
        return set(zip(*(table.column(c).to_pylist() for c in knowledge.KEYS), strict=True))

    arrow = knowledge.read_usable(path, ["window"])
    for per in (knowledge.ENTITY, [*knowledge.ENTITY, "window"]):
        streamed = knowledge.current_stream(path, ["text"], per=per).to_arrow_refs()
        streamed = pa.concat_tables([ray.get(ref) for ref in streamed])
        assert picked(streamed) == picked(tables.latest_rows(arrow, per, knowledge.ORDER))
    per_window = knowledge.current_stream(path, [], per=[*knowledge.ENTITY, "window"])
    assert per_window.count() == 6  # u1 has two windows; u2-u4 and the item one each

    done = ray.data.from_arrow(
        pa.table({"kind": ["user"], "entity_id": ["u2"], "fingerprint": ["new"]})
    )
    left = knowledge.without(knowledge.current_stream(path, []), done, knowledge.KEYS)
    assert sorted(left.to_pandas()["fingerprint"]) == ["good", "item", "now", "prod"]

    ages = knowledge.live_ages(path, T + timedelta(days=1), max_entities=1_000, seed=42)
    assert sorted(ages["user"].tolist()) == [1.0, 8.0, 8.0, 8.0]
    assert knowledge.age_summary(ages["user"]) == {
        "entities": 4,
        "p50": 8.0,
        "p90": 8.0,
        "max": 8.0,
    }
    assert knowledge.age_summary(np.array([])) == {"entities": 0}


def _samples(positions: dict[str, list[int]]) -> pa.Table:
    """Each user's CTR samples at these positions of their history."""
    return table_of(
        "samples",
        (sample_row(u, f"i{p}", position=p) for u, ps in positions.items() for p in ps),
    )


def test_training_text_ends_before_the_users_samples_and_drops_those_inside():
    samples = _samples({"u1": [5, 6, 7, 8, 9], "u2": [3, 4], "u3": [10, 11]})
    rows = knowledge_table(
        [
            # u1: last week's answer covered 8 interactions, this week's covers all 10.
            knowledge_row("user", "u1", fingerprint="boot", window="evaluation", history_end=5),
            knowledge_row("user", "u1", fingerprint="w1", history_end=8, as_of=T),
            knowledge_row("user", "u1", fingerprint="w2", history_end=10, as_of=T + timedelta(1)),
            # u2: only an answer that covers every sample: no leak-free text.
            knowledge_row("user", "u2", fingerprint="all", history_end=5),
            # u3: an answer of an older release (unknown window) never qualifies.
            knowledge_row("user", "u3", fingerprint="legacy", history_end=None),
        ]
    )
    chosen = knowledge.training_users(samples, rows)
    got = dict(zip(chosen["entity_id"].to_pylist(), chosen["fingerprint"].to_pylist(), strict=True))
    assert got == {"u1": "w1"}
    kept = knowledge.after_prompts(samples, chosen["entity_id"], chosen["history_end"])
    by_user: dict[str, list[int]] = {}
    for u, p in zip(kept["user_id"].to_pylist(), kept["position"].to_pylist(), strict=True):
        by_user.setdefault(u, []).append(p)
    # u1 trains on the samples after its 8-interaction prompt; the others as users without text.
    assert by_user == {"u1": [8, 9], "u2": [3, 4], "u3": [10, 11]}


def test_a_knowledge_table_of_an_older_release_gains_the_window_columns(tmp_path):
    from deltalake import write_deltalake

    added = {f.name for f in schemas.WINDOW_FIELDS}
    old = pa.schema([f for f in schemas.KNOWLEDGE if f.name not in added])
    path = tmp_path / "knowledge"
    row = {k: v for k, v in knowledge_row("user", "u1").items() if k in old.names}
    write_deltalake(str(path), pa.Table.from_pylist([row], schema=old))

    tables.evolve(path, schemas.KNOWLEDGE)
    tables.evolve(path, schemas.KNOWLEDGE)  # a second call changes nothing
    assert tables.version(path) == 1
    new = knowledge_table([knowledge_row("user", "u2", history_end=3)])
    tables.insert_new(path, new, schemas.KNOWLEDGE, knowledge.KEYS)
    rows = {r["entity_id"]: r for r in knowledge.read_usable(path, ["history_end"]).to_pylist()}
    assert (rows["u1"]["window"], rows["u1"]["history_end"]) == (None, None)  # old row: null
    assert (rows["u2"]["window"], rows["u2"]["history_end"]) == ("production", 3)


def test_entity_sample_keeps_the_same_seeded_entities_in_every_table(tmp_path):
    """Above max_entities rows a bounded read keeps a seeded share of entities, every row
    of each one kept (two answers per user here), the same entities in another table."""
    rows = [
        knowledge_row("user", f"u{i}", fingerprint=f"f{i}-{n}", as_of=T - timedelta(days=n))
        for i in range(400)
        for n in (1, 2)
    ]
    path = tmp_path / "knowledge"
    _write(path, rows)
    whole = knowledge.entity_sample(path, schemas.KNOWLEDGE, 10_000, seed=7)
    assert whole.num_rows == 800

    picked = knowledge.entity_sample(path, schemas.KNOWLEDGE, 100, seed=7, columns=["entity_id"])
    ids = picked["entity_id"].to_pylist()
    assert 20 <= len(set(ids)) <= 80  # 400 users at 100 / 800: about 50, seeded
    assert len(ids) == 2 * len(set(ids))
    again = knowledge.entity_sample(path, schemas.KNOWLEDGE, 100, seed=7, columns=["entity_id"])
    assert again["entity_id"].to_pylist() == ids
    other_seed = knowledge.entity_sample(path, schemas.KNOWLEDGE, 100, seed=8)
    assert set(other_seed["entity_id"].to_pylist()) != set(ids)

    vectors = tmp_path / "vectors"
    tables.overwrite(
        vectors, vectors_table({("user", f"u{i}"): [1.0, 0.0] for i in range(400)}), schemas.VECTORS
    )
    in_vectors = knowledge.entity_sample(vectors, schemas.VECTORS, 50, seed=7)
    # 400 rows at 50 / 400 keeps the entities drawing below 1/8: those of the knowledge
    # sample (1/8 too) exactly.
    assert set(in_vectors["entity_id"].to_pylist()) == set(ids)

    ages = knowledge.live_ages(path, T, max_entities=100, seed=7)
    assert sorted(ages["user"].tolist()) == [1.0] * len(set(ids))
