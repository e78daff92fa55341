"""The adapt stage on real Delta tables in tmp: trains, publishes vectors once, then skips."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest
import torch
from table_rows import embedding_row, knowledge_row, knowledge_table, table_of
from table_writes import write_live_vectors

from adapters.data import EntityMatrix
from adapters.moe import HybridExpertAdaptor
from jobs import adapt, forget, maintain
from jobs.adapting import trainer, training, vector_export
from jobs.plumbing import schemas, tables
from jobs.plumbing.errors import MissingTableError
from jobs.rules import ctr, knowledge, vectors

T0 = datetime(2026, 11, 16, tzinfo=UTC)
T1, T2 = T0 + timedelta(days=7), T0 + timedelta(days=8)
N_USERS, N_ITEMS, DIM, PER_USER = 40, 30, 384, 12
LLM, ENCODER = "smollm2-135m-instruct", "all-MiniLM-L6-v2"


def write_inputs(conf, genres: dict | None = None) -> dict[tuple[str, str], np.ndarray]:
    """samples, knowledge and embeddings tables; returns each current entity's embedding.

    `genres`, if given, receives each entity's hidden genre (what the labels follow).

    Item i0 has an older answer (and its embedding) before the current one; item
    i29's latest answer has no embedding yet, so i29 must get no vector.
    """
    rng = np.random.default_rng(0)
    taste = rng.standard_normal((4, DIM)).astype(np.float32)
    user_genre, item_genre = rng.integers(4, size=N_USERS), rng.integers(4, size=N_ITEMS)
    emb = {("user", f"u{u}"): taste[user_genre[u]] for u in range(N_USERS)}
    emb |= {("item", f"i{i}"): taste[item_genre[i]] for i in range(N_ITEMS)}
    emb = {k: v + rng.standard_normal(DIM).astype(np.float32) for k, v in emb.items()}
    if genres is not None:
        genres |= {("user", f"u{u}"): g for u, g in enumerate(user_genre)}
        genres |= {("item", f"i{i}"): g for i, g in enumerate(item_genre)}

    samples = []
    for u in range(N_USERS):
        seq = rng.choice(N_ITEMS, size=PER_USER, replace=False)
        liked = rng.random(PER_USER) < 0.2 + 0.6 * (item_genre[seq] == user_genre[u])
        ratings = np.where(liked, 5.0, 2.0).tolist()
        for pos in range(PER_USER // 2, PER_USER):
            samples.append(
                {
                    "user_id": f"u{u}",
                    "item_id": f"i{seq[pos]}",
                    "label": int(liked[pos]),
                    "rating": ratings[pos],
                    "timestamp": 1000 + pos,
                    "position": pos,
                    "history_item_ids": [f"i{i}" for i in seq[max(0, pos - 10) : pos]],
                    "history_ratings": ratings[max(0, pos - 10) : pos],
                    "split": "test" if u % 10 == 0 else "train",
                }
            )
    tables.overwrite(
        conf.table_path("samples"),
        table_of("samples", samples),
        schemas.SAMPLES,
    )

    def knowledge(kind: str, eid: str, fp: str, at: datetime) -> dict:
        return knowledge_row(kind, eid, fingerprint=fp, generated_at=at, model_id=LLM)

    def embedding(kind: str, eid: str, fp: str, vec: np.ndarray) -> dict:
        return embedding_row(
            kind,
            eid,
            fingerprint=fp,
            encoder_model=ENCODER,
            dim=DIM,
            embedding=vec.tolist(),
            encoded_at=T1,
        )

    know = [knowledge(k, e, f"fp-{e}", T1) for k, e in emb]
    know += [knowledge("item", "i0", "fp-old", T0), knowledge("item", "i29", "fp-newest", T2)]
    embs = [embedding(k, e, f"fp-{e}", v) for (k, e), v in emb.items()]
    embs.append(embedding("item", "i0", "fp-old", rng.standard_normal(DIM)))
    tables.overwrite(
        conf.table_path("knowledge"),
        knowledge_table(know),
        schemas.KNOWLEDGE,
    )
    tables.overwrite(
        conf.table_path("embeddings"),
        table_of("embeddings", embs),
        schemas.EMBEDDINGS,
    )
    del emb[("item", "i29")]
    return emb


def test_adapt_publishes_vectors_once_and_skips_unchanged_inputs(make_config, ray_local):
    conf = make_config("adapt.epochs=3")
    current = write_inputs(conf)
    path = conf.table_path("vectors")

    first = adapt.run(conf, "run-1")
    assert not first.skipped and first.vectors_version == 0
    assert first.vectors_written == len(current) == N_USERS + N_ITEMS - 1
    assert 0 < first.auc_without < 1 and 0 < first.auc_with < 1
    assert first.logloss_without > 0 and first.logloss_with > 0

    rows = tables.read(path, schemas.VECTORS).to_pylist()
    assert len(rows) == len(current)
    assert {(r["kind"], r["entity_id"]) for r in rows} == set(current)
    assert {r["version_id"] for r in rows} == {"run-1"}
    assert {r["dim"] for r in rows} == {32}
    assert all(len(r["vector"]) == 32 and np.isfinite(r["vector"]).all() for r in rows)
    assert all(r["fingerprint"] == f"fp-{r['entity_id']}" for r in rows)  # i0: not fp-old
    assert {(r["llm_model"], r["encoder_model"]) for r in rows} == {(LLM, ENCODER)}
    assert {r["adaptor"] for r in rows} == {"hybrid_moe(shared=2,dedicated=5,hidden=128,out=32)"}
    assert len({r["input_fingerprint"] for r in rows}) == 1
    assert float(tables.commit_metadata(path, "auc_with")) == first.auc_with

    # The stored vectors are exactly the saved adaptor's towers applied to the texts.
    checkpoint = tables.commit_metadata(path, "adaptor_checkpoint")
    assert checkpoint == str(adapt.adaptor_checkpoint(conf, "run-1"))
    adaptor = load_adaptor(conf, "run-1")
    for kind in ("user", "item"):
        mine = [r for r in rows if r["kind"] == kind]
        x = torch.from_numpy(np.stack([current[(kind, r["entity_id"])] for r in mine]))
        with torch.no_grad():
            expected = adaptor.tower(x, kind)
        stored = torch.tensor([r["vector"] for r in mine])
        torch.testing.assert_close(stored, expected, rtol=1e-5, atol=1e-6)

    # Trained in a Ray worker as it was in the driver: the same seed gives the same AUCs
    # and the same adaptor (the worker runs as many torch threads as this process).
    versions, total = adapt._versions(conf)
    here = conf.output("models", "in-process.pt")
    meta = {"input_fingerprint": "x", "version_id": "run-1"}
    outcome = trainer.train_and_gate(conf, versions, total, None, here, meta)
    assert outcome.metrics == {k: getattr(first, k) for k in adapt.METRICS}
    for name, weights in trainer.load_adaptor(here).state_dict().items():
        torch.testing.assert_close(weights, adaptor.state_dict()[name], rtol=0, atol=0)

    # Where training runs is no input: another worker shape retrains nothing.
    elsewhere = make_config("adapt.epochs=3", "adapt.worker.cpus_per_actor=1")
    second = adapt.run(elsewhere, "run-2")
    assert second.skipped and second.vectors_written == 0
    assert second.vectors_version == tables.version(path) == 0
    assert (second.auc_without, second.auc_with, second.logloss_with) == (
        first.auc_without,
        first.auc_with,
        first.logloss_with,
    )

    # Compaction, vacuum and an erasure between two runs are no new input: nothing retrains.
    maintain.run(make_config("adapt.epochs=3", "run.retain_hours=0"))
    forget.run(conf, "user", "u3")
    assert tables.version(path) > 0
    third = adapt.run(conf, "run-2b")
    assert third.skipped and third.vectors_written == 0 and third.vectors_version == 0

    # A changed config retrains; the gate is opened wide so the new version publishes.
    retrained = adapt.run(make_config("adapt.epochs=2", "adapt.gate.tolerance=1.0"), "run-3")
    assert not retrained.skipped and retrained.vectors_version == tables.version(path)
    assert vectors.resolve(path).version == retrained.vectors_version
    assert vectors.previous(vectors.resolve(path)).version == 0
    assert retrained.gate.startswith("published: held-out AUC")
    assert set(tables.read(path, schemas.VECTORS).column("version_id").to_pylist()) == {"run-3"}


def test_the_adapt_driver_never_imports_torch():
    """Training and the export's adaptor live in Ray workers: on a cluster the driver is a
    CPU node that needs no torch (nor its ~450 MB)."""
    code = (
        "import sys, jobs.cli, jobs.adapt, jobs.adapting.vector_export; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'adapters')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "['adapters', 'adapters.config']", done.stdout


def test_adapt_names_the_missing_stage(make_config):
    conf = make_config()
    with pytest.raises(MissingTableError, match="kar prepare"):
        adapt.run(conf, "r")
    write_inputs(conf)
    tables.overwrite(
        conf.table_path("embeddings"), schemas.EMBEDDINGS.empty_table(), schemas.EMBEDDINGS
    )
    with pytest.raises(MissingTableError, match="kar encode"):
        adapt.run(conf, "r")
    assert tables.version(conf.table_path("vectors")) is None


def test_gate_keeps_a_better_live_version_and_remembers_why(make_config, ray_local):
    conf = make_config("adapt.epochs=8", "adapt.gate.tolerance=0.01")
    genres: dict = {}
    current = write_inputs(conf, genres)
    # Live vectors carry the hidden genre (what the labels follow) as a clean one-hot.
    live = {k: np.eye(4, dtype=np.float32)[genres[k]] for k in current}
    live_version = write_live_vectors(conf, live)
    # Today's embeddings are pure noise: a new version cannot be as good.
    emb = tables.read(conf.table_path("embeddings"), schemas.EMBEDDINGS)
    rng = np.random.default_rng(1)
    noise = [rng.standard_normal(DIM).astype(np.float32).tolist() for _ in range(emb.num_rows)]
    emb = emb.set_column(5, schemas.EMBEDDINGS.field("embedding"), pa.array(noise, schemas.VECTOR))
    tables.overwrite(conf.table_path("embeddings"), emb, schemas.EMBEDDINGS)

    result = adapt.run(conf, "run-1")
    assert result.skipped and result.vectors_written == 0
    assert result.vectors_version == live_version == tables.version(conf.table_path("vectors"))
    assert result.gate_new_auc < result.gate_live_auc - 0.01
    assert result.gate.startswith(f"kept live vectors version {live_version}")
    assert "adapt.gate.tolerance 0.01" in result.gate
    stored = tables.read(conf.table_path("vectors"), schemas.VECTORS)
    assert set(stored.column("version_id").to_pylist()) == {"live"}

    again = adapt.run(conf, "run-2")  # same inputs: the decision is repeated, not retrained
    assert again.gate == result.gate and again.seconds < result.seconds / 3
    assert tables.version(conf.table_path("vectors")) == live_version


def test_read_vectors_returns_exactly_the_stored_values(make_config):
    conf = make_config()
    rng = np.random.default_rng(2)
    values = {("user", f"u{u}"): rng.standard_normal(6).astype(np.float32) for u in range(5)}
    values |= {("item", f"i{i}"): rng.standard_normal(6).astype(np.float32) for i in range(3)}
    write_live_vectors(conf, values)
    users, items = ctr.read_vectors(conf.table_path("vectors"), version_id="live")
    for matrix, kind in ((users, "user"), (items, "item")):
        for eid, row in zip(matrix.ids, matrix.values, strict=True):
            assert np.array_equal(row, values[(kind, eid)])
    assert len(users.ids) == 5 and len(items.ids) == 3
    with pytest.raises(MissingTableError, match="version id nope"):
        ctr.read_vectors(conf.table_path("vectors"), version_id="nope")


def answer_everything(conf, when: datetime) -> dict[str, dict]:
    """Answers (and random 8-d embeddings) for every pending prompt, as generate + encode
    would leave them; returns fingerprint -> prompt row."""
    prompts = tables.read(conf.table_path("prompts"), schemas.PROMPTS).to_pylist()
    rng = np.random.default_rng(len(prompts))
    know = knowledge_table(knowledge_row(**p, generated_at=when) for p in prompts)
    tables.insert_new(conf.table_path("knowledge"), know, schemas.KNOWLEDGE, knowledge.KEYS)
    emb = table_of(
        "embeddings",
        (
            embedding_row(
                p["kind"],
                p["entity_id"],
                fingerprint=p["fingerprint"],
                encoder_model=ENCODER,
                dim=8,
                embedding=rng.standard_normal(8).tolist(),
                encoded_at=when,
            )
            for p in prompts
        ),
    )
    keys = ["kind", "entity_id", "fingerprint", "encoder_model"]
    tables.insert_new(conf.table_path("embeddings"), emb, schemas.EMBEDDINGS, keys)
    return {p["fingerprint"]: p for p in prompts}


def test_no_training_sample_is_inside_its_users_prompt(make_config, spark, ml100k, monkeypatch):
    """Real prepare output, two weeks: every sample the adaptor trains on lies after the
    prompt behind its user's text, checked on the prompt text itself."""
    from jobs import prepare

    seen: list[tuple[pa.Table, EntityMatrix]] = []
    real = ctr.ctr_inputs

    def spy(conf, samples, attributes, seed, users, items):
        seen.append((samples, users))
        return real(conf, samples, attributes, seed, users, items)

    monkeypatch.setattr(ctr, "ctr_inputs", spy)
    common = ["data.sample.max_items=40", "data.sample.max_users=30", "adapt.epochs=1"]
    titles = {
        r["item_id"]: r["title"]
        for r in prepare.readers.read(spark, make_config().data)
        .items.select("item_id", "title")
        .collect()
    }
    by_fingerprint: dict[str, dict] = {}
    for week, as_of in enumerate(["1998-02-01", "1998-04-01"]):
        conf = make_config(*common, f"run.as_of={as_of}")
        prepare.run(conf, f"week{week}", spark)
        by_fingerprint |= answer_everything(conf, T0 + timedelta(days=7 * week))
        seen.clear()
        # The worker's training, in this process so the spy sees what it trains on.
        versions, total = adapt._versions(conf)
        trainer.train_and_gate(
            conf, versions, total, None, adapt.adaptor_checkpoint(conf, f"week{week}"), {}
        )
        samples, users = seen[0]  # the co-training data
        chosen = {}
        emb = tables.read(conf.table_path("embeddings"), schemas.EMBEDDINGS)
        vec_to_fp = {tuple(e["embedding"]): e["fingerprint"] for e in emb.to_pylist()}
        for uid, vec in zip(users.ids, users.values, strict=True):
            chosen[uid] = by_fingerprint[vec_to_fp[tuple(vec.tolist())]]
        windows = {p["window"] for p in chosen.values()}
        assert windows == ({"evaluation"} if week == 0 else {"evaluation", "production"})
        checked = 0
        for s in samples.to_pylist():
            prompt = chosen.get(s["user_id"])
            if prompt is None:
                continue
            assert s["position"] >= prompt["history_end"]
            assert f'"{titles[s["item_id"]]}"' not in prompt["prompt"]
            checked += 1
        assert checked > 100


def test_adapt_trains_on_a_bounded_seeded_sample_and_records_it(make_config, ray_local):
    conf = make_config("adapt.epochs=1", "adapt.max_train_rows=150")
    write_inputs(conf)
    path, samples_path = conf.table_path("vectors"), conf.table_path("samples")
    total = tables.count(samples_path)
    assert total == N_USERS * PER_USER // 2 > 150

    version = tables.version(samples_path)
    sample = training.train_sample(conf, samples_path, version)
    assert sample.sampled and sample.total == total and sample.rows.num_rows == 150
    # The same seed draws the same samples; another seed others.
    assert training.train_sample(conf, samples_path, version).rows.equals(sample.rows)
    other = training.train_sample(
        make_config("adapt.max_train_rows=150", "run.seed=7"), samples_path, 0
    )
    assert not other.rows.equals(sample.rows)
    everything = {
        (r["user_id"], r["position"])
        for r in tables.read(samples_path, schemas.SAMPLES).to_pylist()
    }
    drawn = {(r["user_id"], r["position"]) for r in sample.rows.to_pylist()}
    assert len(drawn) == 150 and drawn <= everything

    result = adapt.run(conf, "run-1")
    assert not result.skipped
    assert (result.train_rows, result.samples_total, result.sampled) == (150, total, True)
    assert tables.commit_metadata(path, "train_rows") == "150"
    assert tables.commit_metadata(path, "train_sampled") == "True"
    assert tables.commit_metadata(path, "samples_total") == str(total)
    # Every entity still gets its vector, sampled or not.
    assert result.vectors_written == N_USERS + N_ITEMS - 1

    again = adapt.run(conf, "run-2")
    assert again.skipped and (again.train_rows, again.sampled) == (150, True)

    unsampled = make_config("adapt.epochs=1", "adapt.gate.enabled=false")
    whole = adapt.run(unsampled, "run-3")
    assert (whole.train_rows, whole.sampled) == (total, False)
    assert tables.commit_metadata(path, "train_sampled") == "False"
    # The weekly vacuum commits too; the decision is still read from adapt's commit.
    assert tables.vacuum(path, retention_hours=0)
    assert tables.version(path) > whole.vectors_version
    assert adapt.run(unsampled, "run-4").skipped


def test_distributed_export_writes_the_same_vectors_as_the_arrow_path(make_config, ray_local):
    import pyarrow.parquet as pq

    conf = make_config("adapt.epochs=1")
    write_inputs(conf)
    path = conf.table_path("vectors")
    adapt.run(conf, "run-1")  # small tables: the Arrow path
    arrow_rows = tables.read(path, schemas.VECTORS)

    versions, _ = adapt._versions(conf)
    input_fp = arrow_rows.column("input_fingerprint")[0].as_py()
    forced = make_config("adapt.epochs=1", "ray.local_rows=0")
    checkpoint = adapt.adaptor_checkpoint(conf, "run-1")
    parts = vector_export.export_vectors(forced, checkpoint, versions, "run-1", input_fp)
    assert sum(p["rows"] for p in parts) == arrow_rows.num_rows
    ray_rows = pa.concat_tables(pq.read_table((path / p["file"]).uri) for p in parts)

    def by_key(rows: pa.Table) -> dict:
        return {(r["kind"], r["entity_id"]): r for r in rows.to_pylist()}

    expected, got = by_key(arrow_rows), by_key(ray_rows)
    assert got.keys() == expected.keys() and ("item", "i29") not in got
    for key, row in got.items():
        want = expected[key]
        for column in schemas.VECTORS.names:
            if column == "vector":
                np.testing.assert_allclose(row["vector"], want["vector"], rtol=1e-5, atol=1e-6)
            elif column != "created_at":
                assert row[column] == want[column], (key, column)


def load_adaptor(conf, run_id: str) -> HybridExpertAdaptor:
    """The adaptor `adapt` saved for vectors version `run_id` (read from its location)."""
    return trainer.load_adaptor(adapt.adaptor_checkpoint(conf, run_id))
