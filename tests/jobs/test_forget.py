"""`kar forget`: one user or item leaves every Delta table and the real Feast online store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
from table_rows import (
    attribute_row,
    embedding_row,
    knowledge_row,
    prompt_row,
    sample_row,
    table_of,
    vectors_table,
)

from jobs import cli, publish
from jobs.plumbing import feature_store, schemas, tables

USERS, ITEMS = ["u1", "u2", "o'brien"], ["i1", "i2"]


def write_tables(conf) -> None:
    entities = [("user", u) for u in USERS] + [("item", i) for i in ITEMS]
    rows = {
        "prompts": [prompt_row(k, e) for k, e in entities],
        "knowledge": [knowledge_row(k, e) for k, e in entities],
        "embeddings": [embedding_row(k, e) for k, e in entities],
        "samples": [sample_row(u, i) for u in USERS for i in ITEMS],
        "attributes": [attribute_row(k, e) for k, e in entities],
    }
    for name, table_rows in rows.items():
        tables.overwrite(conf.table_path(name), table_of(name, table_rows), schemas.TABLES[name])
    vecs = vectors_table({key: np.full(4, i, np.float32) for i, key in enumerate(entities)})
    tables.overwrite(conf.table_path("vectors"), vecs, schemas.VECTORS)
    evaluate_vectors = Path(conf.run.output_dir) / "evaluate" / "tables" / "vectors"
    tables.overwrite(evaluate_vectors, vecs, schemas.VECTORS)
    conf.run.cache_dir = Path(conf.run.output_dir).parent / "cache"  # not the suite's CACHE
    conf.evaluate_cache().mkdir(parents=True)
    publish.run(conf, online=True)


def holds(conf, kind: str, entity_id: str) -> list[str]:
    """Tables (and the online store) that still hold a row of the entity."""
    found = []
    paths = [conf.table_path(n) for n in ("prompts", "knowledge", "embeddings", "vectors")]
    paths += [conf.table_path("attributes"), Path(conf.run.output_dir) / "evaluate/tables/vectors"]
    for path in paths:
        t = tables.open_table(path).to_pyarrow_table()
        mine = pc.and_(pc.equal(t["kind"], kind), pc.equal(t["entity_id"], entity_id))
        if pc.any(mine).as_py():
            found.append(path.name)
    for name, column in (("samples", f"{kind}_id"), (f"features_{kind}", f"{kind}_id")):
        t = tables.open_table(conf.table_path(name)).to_pyarrow_table()
        if pc.any(pc.equal(t[column], entity_id)).as_py():
            found.append(name)
    store, _ = feature_store.feature_store(conf)
    view, feature = ("kar_user", "reasoning") if kind == "user" else ("kar_item", "fact")
    online = store.get_online_features(
        features=[f"{view}:{feature}"], entity_rows=[{f"{kind}_id": entity_id}]
    ).to_dict()
    if online[feature][0] is not None:
        found.append("online")
    return found


@pytest.mark.parametrize(("kind", "entity_id"), [("user", "o'brien"), ("item", "i1")])
def test_forget_removes_the_entity_everywhere_and_nothing_else(
    make_config, capsys, kind, entity_id
):
    forget_and_check(make_config(), capsys, kind, entity_id)


def test_forget_deletes_the_online_row_from_redis_too(make_config, capsys, redis_server):
    conf = make_config("feature_store.online_store=redis", f"feature_store.redis={redis_server}")
    forget_and_check(conf, capsys, "user", "u1")


def forget_and_check(conf, capsys, kind: str, entity_id: str) -> None:
    write_tables(conf)
    everywhere = holds(conf, kind, entity_id)
    # 7 tables, evaluate's vectors and the online row: the check can fail.
    assert len(everywhere) == 9

    conf_file = Path(conf.run.output_dir) / "conf.yaml"
    conf_file.write_text(json.dumps(conf.model_dump(mode="json")))
    cli.main(["forget", "--conf", str(conf_file), f"--{kind}", entity_id])
    out = capsys.readouterr()
    result = json.loads(out.out.strip().splitlines()[-1])

    assert holds(conf, kind, entity_id) == []
    assert result["online_deleted"] is True and len(result["deleted"]) == 8
    assert "VACUUM delta.`" in out.err and "RETAIN 168 HOURS" in out.err
    assert not conf.evaluate_cache().exists()
    others = [("user", u) for u in USERS] + [("item", i) for i in ITEMS]
    for other in others:
        if other != (kind, entity_id):
            assert len(holds(conf, *other)) == 9, other

    # The erasure is no new vectors version: the next publish adds no row and brings
    # nothing back, online or offline.
    feature_rows = {n: tables.count(conf.table_path(n)) for n in ("features_user", "features_item")}
    again = publish.run(conf, online=True)
    assert again.vectors_version == 0
    assert {n: tables.count(conf.table_path(n)) for n in feature_rows} == feature_rows
    assert holds(conf, kind, entity_id) == []
