"""The encode stage on a real Delta knowledge table, with real Ray actors and the real encoder."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from table_rows import knowledge_row, knowledge_table

from encoders.inputs import encoder_input
from encoders.sentence import SentenceEncoder
from jobs import encode
from jobs.plumbing import tables
from jobs.plumbing.config import Config
from jobs.plumbing.errors import MissingTableError
from jobs.plumbing.models import ModelError, resolve_model
from jobs.plumbing.schemas import EMBEDDINGS, KNOWLEDGE

T0 = datetime(2025, 1, 6, tzinfo=UTC)
T1 = T0 + timedelta(days=7)
# (kind, entity_id, fingerprint, context, text, generated_at)
ROWS = [
    ("user", "1", "u1-old", "History: Heat, 5 stars;", "Likes crime films.", T0),
    ("user", "1", "u1-new", "History: Heat, 5 stars; Up, 2 stars;", "Likes crime only.", T1),
    ("user", "2", "u2", "History: Up, 5 stars;", "Enjoys animated family films.", T0),
    ("user", "3", "u3", "History: Alien, 4 stars;", "Prefers science fiction horror.", T0),
    ("item", "10", "i10", "Movie: Heat (1995)", "Heat is a 1995 crime thriller.", T0),
    ("item", "11", "i11", "Movie: Up (2009)", "Up is a Pixar animated adventure.", T0),
    ("item", "12", "i12", "Movie: Alien (1979)", "Alien is a science fiction horror film.", T0),
]


def knowledge(rows: list[tuple], **columns: object) -> pa.Table:
    return knowledge_table(
        knowledge_row(
            kind,
            entity_id,
            fingerprint=fingerprint,
            prompt=f"Analyze.\n\n{context}",
            context=context,
            text=text,
            generated_at=generated_at,
            **columns,
        )
        for kind, entity_id, fingerprint, context, text, generated_at in rows
    )


@pytest.fixture
def conf(make_config, ray_local) -> Config:
    c = make_config("encoder.batch_size=2", "encoder.commit_rows=3")
    tables.overwrite(c.table_path("knowledge"), knowledge(ROWS), KNOWLEDGE)
    return c


def embeddings(conf: Config) -> dict[tuple[str, str, str], tuple[str, int, np.ndarray]]:
    """(kind, entity_id, fingerprint) -> (encoder_model, dim, vector)."""
    rows = tables.read(conf.table_path("embeddings"), EMBEDDINGS).to_pylist()
    return {
        (r["kind"], r["entity_id"], r["fingerprint"]): (
            r["encoder_model"],
            r["dim"],
            np.array(r["embedding"], np.float32),
        )
        for r in rows
    }


def test_encodes_latest_knowledge_once_and_only_what_changed(conf: Config) -> None:
    first = encode.run(conf, "r1")
    assert first.encoded == 6  # 3 users + 3 items; user 1's older answer is not current
    stored = embeddings(conf)
    assert set(stored) == {
        ("user", "1", "u1-new"),
        ("user", "2", "u2"),
        ("user", "3", "u3"),
        ("item", "10", "i10"),
        ("item", "11", "i11"),
        ("item", "12", "i12"),
    }
    assert {(model, dim) for model, dim, _ in stored.values()} == {(conf.encoder.model, 384)}
    assert all(v.shape == (384,) and np.isfinite(v).all() for _, _, v in stored.values())
    # Batches of 2 and commits every 3 rows: several MERGEs, each key once.
    assert first.embeddings_version is not None and first.embeddings_version >= 1

    # The stored vectors are the encoder's vectors of KAR's inputs (user: history + answer).
    local = SentenceEncoder(
        resolve_model(conf.encoder.model, "encoder", conf.run.cache_dir), threads=2
    )
    direct = local.encode(
        [
            encoder_input("user", ROWS[1][3], ROWS[1][4]),
            encoder_input("item", ROWS[4][3], ROWS[4][4]),
        ]
    )
    np.testing.assert_allclose(stored[("user", "1", "u1-new")][2], direct[0], atol=1e-5)
    np.testing.assert_allclose(stored[("item", "10", "i10")][2], direct[1], atol=1e-5)

    again = encode.run(conf, "r2")
    assert again.encoded == 0
    assert again.embeddings_version == first.embeddings_version
    assert tables.version(conf.table_path("embeddings")) == first.embeddings_version

    newer = (
        "item",
        "11",
        "i11-v2",
        "Movie: Up (2009)",
        "Up is a 2009 Pixar film.",
        T0 + timedelta(days=7),
    )
    # A newer answer that failed every check (usable=false) must not replace item 12's.
    junk = knowledge(
        [("item", "12", "i12-junk", "Movie: Alien (1979)", "the the the", T1)], usable=False
    )
    tables.insert_new(
        conf.table_path("knowledge"),
        pa.concat_tables([knowledge([newer]), junk]),
        KNOWLEDGE,
        keys=["kind", "entity_id", "fingerprint"],
    )
    third = encode.run(conf, "r3")
    assert third.encoded == 1
    assert third.embeddings_version == first.embeddings_version + 1
    assert set(embeddings(conf)) - set(stored) == {("item", "11", "i11-v2")}


def test_missing_knowledge_and_bad_model_fail_clearly(make_config, tmp_path: Path) -> None:
    with pytest.raises(MissingTableError, match="no knowledge table.*run `kar generate`"):
        encode.run(make_config(), "r1")
    bad = make_config(f"encoder.model={tmp_path / 'no-such-model'}")
    tables.overwrite(bad.table_path("knowledge"), knowledge(ROWS), KNOWLEDGE)
    with pytest.raises(ModelError, match="encoder.model .*no-such-model.*not a local directory"):
        encode.run(bad, "r1")
