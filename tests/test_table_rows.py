"""Every declared table has a row builder whose default row conforms: a table added to
schemas.TABLES without one fails here, not in the first test that hand-builds its rows."""

from __future__ import annotations

import pytest
from table_rows import ROW_BUILDERS, table_of

from jobs.plumbing import schemas, tables


def test_every_declared_table_has_a_row_builder():
    assert sorted(ROW_BUILDERS) == sorted(schemas.TABLES)


@pytest.mark.parametrize("name", sorted(schemas.TABLES))
def test_default_row_fills_every_column_and_conforms(name: str):
    row = ROW_BUILDERS[name]()
    # Every column named: a missing one would be a silent null, a stray one silently dropped.
    assert sorted(row) == sorted(schemas.TABLES[name].names)
    # The check every write does: no null in a required column, each value castable.
    tables.conform(table_of(name, [row]), schemas.TABLES[name], name)
