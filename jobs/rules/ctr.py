"""The adaptor's inputs and outputs as the job's tables, for adapt and evaluate alike.

CTR tensors from `samples` and `attributes` with the config's history, label and
split settings; entity matrices from EMBEDDINGS-like or VECTORS rows; and VECTORS
rows from exported vectors (adapters.vectors) with their provenance. Needs torch
(adapters.data), so only the stages that train import it.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from adapters import data as ctr_data
from adapters.data import EntityMatrix
from adapters.moe import TOWERS, Tower
from jobs.plumbing import schemas, tables
from jobs.plumbing.config import Config
from jobs.plumbing.errors import InputError, MissingTableError
from jobs.plumbing.storage import Location
from jobs.rules import knowledge


def ctr_inputs(
    conf: Config,
    samples: pa.Table,
    attributes: pa.Table,
    seed: int,
    users: EntityMatrix | None,
    items: EntityMatrix | None,
) -> ctr_data.CTRData:
    """CTR tensors from the prepared tables with the config's history, label and split settings.

    Too little data is an InputError, so the CLI names it without a traceback.
    """
    try:
        return ctr_data.build(
            samples,
            history_length=conf.prepare.ctr_history_length,
            like_threshold=conf.prepare.label_threshold,
            validation_fraction=conf.adapt.validation_fraction,
            seed=seed,
            users=users,
            items=items,
            attributes=attributes if attributes.num_rows else None,
        )
    except ctr_data.DataError as e:
        raise InputError(str(e)) from e


def entity_matrix(rows: pa.Table, kind: Tower, column: str = "embedding") -> EntityMatrix:
    """`kind`'s rows of an EMBEDDINGS-like (`embedding`) or VECTORS (`vector`) table as a matrix."""
    what = {"embedding": "embeddings of current knowledge", "vector": "vectors"}[column]
    rows = rows.filter(pc.equal(rows.column("kind"), kind))
    if rows.num_rows == 0:
        raise InputError(f"no {kind} {what}; run kar generate, encode and adapt")
    dims = set(rows.column("dim").to_pylist())
    if len(dims) != 1:
        raise InputError(
            f"{kind} {what} have mixed sizes {sorted(dims)}; re-encode every {kind} with "
            "one encoder (kar encode)"
        )
    flat = pc.list_flatten(rows.column(column).combine_chunks())
    values = flat.to_numpy(zero_copy_only=False).astype(np.float32).reshape(rows.num_rows, -1)
    return EntityMatrix(rows.column("entity_id").to_pylist(), values)


def embedding_matrices(rows: pa.Table) -> dict[Tower, EntityMatrix]:
    """The text embeddings of `rows` (EMBEDDINGS-like) per kind present, in row order."""
    present = set(rows.column("kind").to_pylist())
    return {kind: entity_matrix(rows, kind) for kind in TOWERS if kind in present}


def read_vectors(
    path: Location,
    version: int | None = None,
    version_id: str | None = None,
    only: tuple[pa.Array, pa.Array] | None = None,
) -> tuple[EntityMatrix | None, EntityMatrix | None]:
    """(user, item) vectors stored in a VECTORS table (optionally one Delta version / version id).

    What a downstream ranker does with frozen vectors: they are read as stored,
    never recomputed. A kind the table holds no vectors of is None. `only` = (user ids,
    item ids) reads just those entities' rows (a bounded read: the gate's sample); without
    it the whole version is read (evaluate's sampled benchmark tables only).
    """
    if only is None:
        rows = tables.read(path, schemas.VECTORS, version)
    else:
        users, items = only
        where = knowledge.of_entities("user", users) | knowledge.of_entities("item", items)
        rows = tables.read_where(path, schemas.VECTORS, where, version)
    if version_id is not None:
        rows = rows.filter(pc.equal(rows.column("version_id"), version_id))
    if rows.num_rows == 0:
        raise MissingTableError(
            f"no vectors (version {version}, version id {version_id}) at {path}"
        )
    kinds = set(rows.column("kind").to_pylist())
    user, item = (entity_matrix(rows, k, "vector") if k in kinds else None for k in TOWERS)
    return user, item


# What each VECTORS row records about where its vector came from.
PROVENANCE = (
    "version_id",
    "fingerprint",
    "llm_model",
    "encoder_model",
    "adaptor",
    "input_fingerprint",
)


def vector_rows(
    kind: Tower, vectors: EntityMatrix, created_at: datetime, **provenance: pa.Array | str
) -> pa.Table:
    """VECTORS rows of one kind's exported vectors (adapters.vectors.export). `provenance`
    gives each column of PROVENANCE: one value for every entity or an array aligned with
    `vectors.ids`."""
    n, dim = len(vectors.ids), vectors.dim

    def column(value: pa.Array | str) -> pa.Array:
        return pa.array([value] * n, pa.string()) if isinstance(value, str) else value

    rows = pa.table(
        {
            "kind": pa.array([kind] * n, pa.string()),
            "entity_id": pa.array(vectors.ids, pa.string()),
            "dim": pa.array([dim] * n, pa.int32()),
            "vector": pa.FixedSizeListArray.from_arrays(vectors.values.reshape(-1), dim),
            **{c: column(provenance[c]) for c in PROVENANCE},
            "created_at": pa.array([created_at] * n, schemas.UTC_US),
        }
    )
    return tables.conform(rows, schemas.VECTORS, "vectors")
