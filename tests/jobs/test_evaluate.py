"""kar evaluate's parts on real Delta tables in tmp: frozen vectors, texts per variant, lifts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import torch
from ctr_samples import build, synthetic
from table_rows import (
    attribute_row,
    knowledge_row,
    knowledge_table,
    prompt_row,
    prompts_table,
    table_of,
)
from table_writes import write_live_vectors

from adapters.data import EntityMatrix
from adapters.train import build_model
from jobs import evaluate
from jobs.plumbing import schemas, tables
from jobs.plumbing.config import AdaptConf
from jobs.rules import ctr

NOW = datetime(2026, 11, 16, tzinfo=UTC)


def test_frozen_backbone_reads_exactly_the_stored_vectors(make_config):
    samples, users, items = synthetic(quality=0.5, taste=0.3, n_users=30, n_items=20)
    rng = np.random.default_rng(5)
    stored = {("user", u): rng.standard_normal(8).astype(np.float32) for u in users.ids[1:]}
    stored |= {("item", i): rng.standard_normal(8).astype(np.float32) for i in items.ids}
    conf = make_config()
    write_live_vectors(conf, stored)

    frozen_users, frozen_items = ctr.read_vectors(conf.table_path("vectors"))
    data = build(samples, frozen_users, frozen_items)
    for backbone in ("din", "deepfm", "dcnv2"):
        model = build_model(data, AdaptConf(), "frozen", backbone)
        assert model.mode == "frozen"
        assert all(p is not model.user_matrix for p in model.parameters())
        for part in (data.fit, data.test):
            kar = model.kar_features(part)
            assert kar.shape == (len(part), 8 + 1 + 8 + 1)
            user_ids = [frozen_users.ids[r - 1] if r else None for r in part.user_row.tolist()]
            item_ids = [frozen_items.ids[r - 1] for r in part.item_row.tolist()]
            for k, (u, i) in enumerate(zip(user_ids, item_ids, strict=True)):
                want_u = stored[("user", u)] if u else np.zeros(8, np.float32)
                assert torch.equal(kar[k, :8], torch.from_numpy(want_u))
                assert kar[k, 8].item() == (1.0 if u else 0.0)  # u0 has no stored vector
                assert torch.equal(kar[k, 9:17], torch.from_numpy(stored[("item", i)]))
                assert kar[k, 17].item() == 1.0
        # Frozen means fixed inputs: training cannot move them.
        assert not model.user_matrix.requires_grad and not model.item_matrix.requires_grad


def _knowledge_row(kind: str, eid: str, context: str, text: str, usable: bool = True) -> dict:
    return knowledge_row(
        kind,
        eid,
        window="evaluation" if kind == "user" else "item",
        context=context,
        text=text,
        model_id="tiny-llm",
        status="ok" if usable else "degenerate",
        attempts=1 if usable else 3,
        usable=usable,
        generated_at=NOW,
    )


def test_texts_per_variant_and_missing_answers_skip_a_variant(make_config):
    conf = make_config()
    tables.overwrite(
        conf.table_path("knowledge"),
        knowledge_table(
            [
                _knowledge_row("user", "u1", "Given a user, history: A", "likes dramas"),
                # The production window's answer: not KAR's protocol, so evaluate skips it.
                {
                    **_knowledge_row("user", "u2", "Given a user, history: B", "likes comedy"),
                    "window": "production",
                },
                _knowledge_row("item", "i1", "Movie: Heat (1995)", "a crime film"),
                # A newer answer that stayed bad after its retries: i1 keeps the one above.
                {
                    **_knowledge_row("item", "i1", "Movie: Heat (1995)", "film film film", False),
                    "generated_at": NOW + timedelta(days=7),
                },
                # Only a bad answer: i3 has history but no answer, and still counts.
                _knowledge_row("item", "i3", "Movie: Fargo (1996)", "yes yes yes", False),
            ]
        ),
        schemas.KNOWLEDGE,
    )
    tables.overwrite(
        conf.table_path("prompts"),
        prompts_table(
            [
                prompt_row(
                    "item",
                    "i2",
                    run_id="r2",
                    context="Movie: Babe (1995)",
                    model_id="tiny-llm",
                    created_at=NOW,
                )
            ]
        ),
        schemas.PROMPTS,
    )
    attributes = table_of(
        "attributes",
        [
            attribute_row("item", "i1", value="Thriller"),
            attribute_row("item", "i1", value="Crime"),
            attribute_row("item", "i2", value="Children's"),
            attribute_row("item", "i3", value="Comedy"),
        ],
    )
    texts = evaluate.entity_texts(conf, attributes)
    seen: list[list[str]] = []

    def encode(strings: list[str]) -> np.ndarray:
        seen.append(strings)
        return np.zeros((len(strings), 4), np.float32)

    matrices, problems = evaluate.text_matrices(texts, "kar", encode)
    assert problems == [] and matrices["user"].ids == ["u1"] and matrices["item"].ids == ["i1"]
    assert seen == [["Given a user, history: A\nlikes dramas"], ["a crime film"]]
    assert texts.texts("item", "answer")[2] == 3  # i3 counts though it has no answer

    seen.clear()
    matrices, _ = evaluate.text_matrices(texts, "no_llm", encode)
    # i2 has no answer yet, i3 only a bad one: no LLM needed here
    assert matrices["item"].ids == ["i1", "i2", "i3"]
    assert seen[1] == [
        "Movie: Heat (1995). Genres: Crime, Thriller.",
        "Movie: Babe (1995). Genres: Children's.",
        "Movie: Fargo (1996). Genres: Comedy.",
    ]
    matrices, _ = evaluate.text_matrices(texts, "user_only", encode)
    assert set(matrices) == {"user"}

    assert texts.prompt_ends.column("entity_id").to_pylist() == ["u1"]
    no_answers = evaluate.EntityTexts(
        {"user": {"u1": {"history": "h"}}, "item": {}}, set(), texts.prompt_ends.slice(0, 0)
    )
    matrices, problems = evaluate.text_matrices(no_answers, "answer_only", encode)
    assert matrices == {} and len(problems) == 2 and "kar generate" in problems[0]


def test_lifts_are_paired_per_seed():
    def run(seed: int, backbone: str, mode: str, auc: float) -> evaluate.Run:
        text = "none" if mode == "none" else "kar"
        return evaluate.Run(seed, backbone, text, mode, auc, 0.5, 1, 1.0)

    runs = [
        run(1, "din", "none", 0.70),
        run(2, "din", "none", 0.80),
        run(1, "din", "cotrained", 0.71),
        run(2, "din", "cotrained", 0.83),
        run(1, "deepfm", "none", 0.60),
        run(1, "deepfm", "frozen", 0.59),
    ]
    rows = {(r.backbone, r.mode): r for r in evaluate.summarize(runs)}
    assert rows[("din", "cotrained")].lifts == pytest.approx([0.01, 0.03])
    assert rows[("din", "none")].lifts == []
    assert rows[("deepfm", "frozen")].lifts == pytest.approx([-0.01])
    assert list(rows)[0] == ("din", "none")


def test_exported_vectors_are_the_adaptor_towers(make_config, tmp_path):
    samples, users, items = synthetic(quality=0.5, taste=0.3, n_users=30, n_items=20)
    model = build_model(build(samples, users, items), AdaptConf(), "cotrained", "din").eval()
    got_users, got_items = evaluate._frozen_vectors(
        model.adaptor,
        {"user": users, "item": items},
        tmp_path / "vectors",
        "kar-seed1",
        "llm",
        "enc",
    )
    with torch.no_grad():
        want = model.adaptor.tower(torch.from_numpy(users.values), "user").numpy()
    assert got_users.ids == users.ids and got_items.ids == items.ids
    np.testing.assert_allclose(got_users.values, want, rtol=1e-6, atol=1e-6)
    assert isinstance(got_items, EntityMatrix) and got_items.dim == 32
