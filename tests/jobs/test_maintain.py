"""`kar maintain` on real Delta tables: fewer files, same rows, a killed run's parts gone."""

from __future__ import annotations

from table_rows import knowledge_row, knowledge_table

from jobs import maintain
from jobs.plumbing import schemas, tables


def test_maintain_compacts_parts_and_vacuums_uncommitted_ones(make_config) -> None:
    conf = make_config("run.retain_hours=0")
    path = conf.table_path("knowledge")
    rows = [knowledge_row("user", f"u{i}") for i in range(6)]
    parts = [
        tables.write_part(path, knowledge_table(rows[i : i + 2]), schemas.KNOWLEDGE)
        for i in (0, 2, 4)
    ]
    tables.commit_parts(path, parts[:2], schemas.KNOWLEDGE)
    tables.commit_parts(path, parts[2:], schemas.KNOWLEDGE)
    orphan = tables.write_part(
        path, knowledge_table([knowledge_row("user", "lost")]), schemas.KNOWLEDGE
    )

    result = maintain.run(conf)

    assert result.compacted == {"knowledge": 3}
    assert result.vacuumed["knowledge"] >= 4  # the 3 compacted parts and the orphan
    assert not (conf.table_path("knowledge").local_path() / orphan["file"]).exists()
    assert len(tables.open_table(path).file_uris()) == 1
    ids = tables.read(path, schemas.KNOWLEDGE).column("entity_id").to_pylist()
    assert sorted(ids) == [f"u{i}" for i in range(6)]
