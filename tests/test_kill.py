"""`kill -9` in every stage, exactly between two of its commits (jobs/plumbing/faults.py), then a
rerun: it completes, every table opens, and no key has two current rows. The real `kar`
CLI on real Spark, Ray, encoder, adaptor, Delta and Feast. (generate's kill tests, with
a real external SIGKILL, are in test_generate.py.)"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from suite_paths import ROOT
from table_rows import embedding_row, knowledge_row, sample_row, table_of, vectors_table

from jobs.plumbing import feature_store, schemas, tables
from jobs.plumbing.config import Config

pytestmark = pytest.mark.e2e


def kar(conf: Config, command: str, *extra: str, fault: str | None = None) -> int:
    """Run `kar <command>` on conf's output directory; its exit status (-9: killed)."""
    env = {k: v for k, v in os.environ.items() if k != "KAR_FAULT"}
    if fault:
        env["KAR_FAULT"] = fault
    args = [str(Path(sys.executable).with_name("kar")), *command.split()]
    args += ["--conf", str(ROOT / "conf" / "local.yaml")]
    args += [f"run.output_dir={conf.run.output_dir}", f"run.cache_dir={conf.run.cache_dir}"]
    args += [f"data.path={conf.data.path}", *extra]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr[-3000:]
    return proc.returncode


def assert_unique(conf: Config, name: str, keys: list[str]) -> int:
    rows = tables.read(conf.table_path(name), schemas.TABLES.get(name) or _FEATURES[name])
    counts = collections.Counter(zip(*(rows.column(k).to_pylist() for k in keys), strict=True))
    assert counts and max(counts.values()) == 1, name
    return rows.num_rows


_FEATURES = {"features_user": schemas.USER_FEATURES, "features_item": schemas.ITEM_FEATURES}


def test_kill_9_of_prepare_between_its_commits(make_config, ml100k):
    conf = make_config()
    slice_ = ["data.sample.max_items=20", "data.sample.max_users=15"]
    assert kar(conf, "prepare", *slice_, fault="prepare:after-prompts") == -signal.SIGKILL
    assert tables.version(conf.table_path("prompts")) == 0  # committed, then killed
    assert tables.version(conf.table_path("stages")) is None  # the stage never completed
    assert tables.version(conf.table_path("samples")) is None

    assert kar(conf, "prepare", *slice_) == 0
    stages = tables.read(conf.table_path("stages"), schemas.STAGES).to_pylist()
    assert [s["stage"] for s in stages] == ["prepare"]
    assert dict(stages[0]["versions"]) == {"prompts": 1, "samples": 0, "attributes": 0, "cohort": 0}
    assert assert_unique(conf, "prompts", ["kind", "entity_id", "fingerprint"]) == 50


def test_kill_9_of_encode_loses_at_most_the_chunk_in_flight(make_config):
    conf = make_config()
    rows = [
        knowledge_row(k, f"{k[0]}{i}", text=f"{k} {i} likes films number {i}.")
        for k in ("user", "item")
        for i in range(5)
    ]
    tables.overwrite(conf.table_path("knowledge"), table_of("knowledge", rows), schemas.KNOWLEDGE)
    extra = ["encoder.commit_rows=4", "encoder.batch_size=2"]
    assert kar(conf, "encode", *extra, fault="encode:after-commit") == -signal.SIGKILL
    committed = tables.read(conf.table_path("embeddings"), schemas.EMBEDDINGS).num_rows
    assert 4 <= committed < 10

    assert kar(conf, "encode", *extra) == 0
    keys = ["kind", "entity_id", "fingerprint", "encoder_model"]
    assert assert_unique(conf, "embeddings", keys) == 10


def test_kill_9_of_adapt_before_its_vectors_commit(make_config):
    conf = make_config()
    rng = np.random.default_rng(0)
    users, items = [f"u{i}" for i in range(40)], [f"i{i}" for i in range(20)]
    samples = [
        sample_row(
            u,
            it,
            label=int(rng.random() < 0.5),
            position=6 + p,
            history_item_ids=list(rng.choice(items, 3)),
            history_ratings=[4.0, 2.0, 5.0],
            split="test" if n % 8 == 0 else "train",
        )
        for n, u in enumerate(users)
        for p, it in enumerate(rng.choice(items, 6, replace=False))
    ]
    entities = [("user", u) for u in users] + [("item", i) for i in items]
    embeddings = [
        embedding_row(k, e, dim=8, embedding=rng.standard_normal(8).tolist()) for k, e in entities
    ]
    for name, table_rows in {
        "samples": samples,
        "knowledge": [knowledge_row(k, e) for k, e in entities],
        "embeddings": embeddings,
    }.items():
        tables.overwrite(conf.table_path(name), table_of(name, table_rows), schemas.TABLES[name])

    assert kar(conf, "adapt", "adapt.epochs=1", fault="adapt:before-vectors") == -signal.SIGKILL
    assert tables.version(conf.table_path("vectors")) is None

    # Rerun as an orchestrator's task would: under the run's id, which names the version.
    assert kar(conf, "adapt --run-id week-48", "adapt.epochs=1") == 0
    vectors = tables.read(conf.table_path("vectors"), schemas.VECTORS)
    assert tables.version(conf.table_path("vectors")) == 0
    assert set(vectors.column("version_id").to_pylist()) == {"week-48"}
    runs = tables.read(conf.table_path("runs"), schemas.RUNS).to_pylist()
    assert [(r["run_id"], r["command"], list(dict(r["stage_seconds"]))) for r in runs] == [
        ("week-48", "adapt", ["adapt"])
    ]
    assert assert_unique(conf, "vectors", ["kind", "entity_id"]) == len(entities)


def test_kill_9_of_publish_between_the_offline_and_online_stores(make_config):
    conf = make_config()
    rng = np.random.default_rng(1)
    entities = [("user", f"u{i}") for i in range(5)] + [("item", f"i{i}") for i in range(3)]
    vecs = vectors_table({e: rng.standard_normal(4).astype(np.float32) for e in entities})
    tables.overwrite(conf.table_path("vectors"), vecs, schemas.VECTORS)

    assert kar(conf, "publish --online", fault="publish:before-online") == -signal.SIGKILL
    assert tables.version(conf.table_path("features_user")) == 0
    assert not (Path(conf.run.output_dir) / "feast" / "online.db").exists()

    assert kar(conf, "publish --online") == 0
    assert assert_unique(conf, "features_user", ["user_id", "vectors_version"]) == 5
    assert assert_unique(conf, "features_item", ["item_id", "vectors_version"]) == 3
    store, _ = feature_store.feature_store(conf)
    online = store.get_online_features(
        features=["kar_user:reasoning"], entity_rows=[{"user_id": f"u{i}"} for i in range(5)]
    ).to_dict()
    assert all(v is not None for v in online["reasoning"])
