"""adapt's export: every entity's vector through the trained adaptor, written as parts of
the `vectors` table for the stage to commit in one overwrite.

Each entity's current usable knowledge is joined with the newest embedding of exactly
that answer; below ray.local_rows in Arrow in this process (tiny runs need no Ray
shuffle), above it as a Ray Data stream. Either way VectorWriter actors load the adaptor
from its checkpoint and map the rows, so only part rows reach the driver, and the driver
never loads torch. Both write the same rows.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from jobs.adapting.training import with_embeddings, with_llm_model
from jobs.plumbing import schemas, tables
from jobs.plumbing.config import Config
from jobs.plumbing.errors import InputError
from jobs.plumbing.storage import Location
from jobs.rules import knowledge

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger(__name__)


# Entities per `vectors` file the export writes (one map_batches call).
EXPORT_ROWS = 16_384


EXPORTED = pa.schema([*tables.PART, pa.field("missing", pa.int64())])


class VectorWriter:
    """The export's map: rows of each entity's current knowledge left-joined with the newest
    embedding of it become one Parquet part of `vectors` (the trained adaptor's towers).

    Returns that part's tables.PART row plus `missing`: rows without an embedding of
    their current knowledge, which get no vector. A Ray Data actor: it loads the adaptor
    from `checkpoint` once, and memory holds the adaptor and one batch.
    """

    def __init__(
        self,
        checkpoint: Location,
        path: Location,
        version_id: str,
        input_fp: str,
        created_at: datetime,
    ) -> None:
        # Imported here, in the worker: the driver that builds the pipeline needs no torch.
        from jobs.adapting import trainer

        self.vectors_of = trainer.knowledge_vectors
        self.adaptor, self.path = trainer.load_adaptor(checkpoint), path
        self.version_id, self.input_fp, self.created_at = version_id, input_fp, created_at

    def __call__(self, rows: pa.Table) -> pa.Table:
        has = pc.is_valid(rows.column("embedding"))
        embedded = with_llm_model(rows.filter(has))
        out = self.vectors_of(
            self.adaptor, embedded, self.version_id, self.input_fp, self.created_at
        )
        part = {"file": "", "size": 0, "rows": 0, "modified_ms": 0, "stats": ""}
        if out.num_rows:
            part = tables.write_part(self.path, out, schemas.VECTORS)
        part["missing"] = rows.num_rows - embedded.num_rows
        return pa.Table.from_pylist([part], schema=EXPORTED)


_SEP = "\x1f"


def _with_group(batch: pa.Table) -> pa.Table:
    """`batch` plus `_group`: its knowledge key (kind, entity_id, fingerprint) as one string."""
    # As string: a Ray Data join hands its output on as large_string.
    keys = (pc.cast(batch.column(k), pa.string()) for k in knowledge.KEYS)
    group = pc.binary_join_element_wise(*keys, _SEP)
    return batch.append_column("_group", group)


def _embedding_order(batch: pa.Table) -> pa.Table:
    """`batch` (EMBEDDINGS columns) plus `_group` (its knowledge key) and `_order`
    (encoded_at, then encoder_model, as one sortable string): the newest embedding of a key
    has the max."""
    micros = pc.cast(pc.cast(batch.column("encoded_at"), pa.timestamp("us", "UTC")), pa.int64())
    when = pc.utf8_lpad(pc.cast(micros, pa.string()), 20, "0")
    batch = _with_group(batch)
    return batch.append_column(
        "_order", pc.binary_join_element_wise(when, batch.column("encoder_model"), _SEP)
    )


def export_stream(conf: Config, embeddings_version: int | None) -> ray.data.Dataset:
    """Every entity's current usable knowledge (kind, entity_id, fingerprint, model_id)
    left-joined with the newest embedding of exactly that answer (encoder_model, dim,
    embedding; null where there is none), as a Ray Dataset workers shuffle: the export's
    input at any scale.

    The keys are matched first, without the vectors (which embedding is the newest of
    each answer, and which answers are current), so the embeddings with their vectors go
    through one shuffle, not two.
    """
    from ray.data.aggregate import Max

    emb_path = conf.table_path("embeddings")
    order_columns = [*knowledge.KEYS, "encoder_model", "encoded_at"]
    newest = (
        tables.dataset(emb_path, schemas.EMBEDDINGS, embeddings_version, order_columns)
        .map_batches(_embedding_order, batch_format="pyarrow")
        .select_columns(["_group", "_order"])
        .groupby("_group")
        .aggregate(Max("_order", alias_name="_order"))
    )
    current = knowledge.current_stream(conf.table_path("knowledge"), ["model_id"])
    current = current.select_columns([*knowledge.KEYS, "model_id"])
    current = current.map_batches(_with_group, batch_format="pyarrow")
    wanted = current.join(newest, "left_outer", knowledge.partitions(), on=("_group",))
    embs = tables.dataset(emb_path, schemas.EMBEDDINGS, embeddings_version)
    embs = embs.map_batches(_embedding_order, batch_format="pyarrow").select_columns(
        ["_group", "_order", "encoder_model", "dim", "embedding"]
    )
    joined = wanted.join(embs, "left_outer", knowledge.partitions(), on=("_group", "_order"))
    return joined.drop_columns(["_group", "_order"])


def export_vectors(
    conf: Config,
    checkpoint: Location,
    versions: dict[str, int | None],
    version_id: str,
    input_fp: str,
) -> list[dict]:
    """Write every entity's vector through the adaptor saved at `checkpoint` as parts of
    the `vectors` table (not committed yet); returns their PART rows.

    Below ray.local_rows (knowledge + embeddings) the join is Arrow in this process
    (tiny runs need no Ray shuffle); above it a Ray Data stream (export_stream). Either
    way VectorWriter actors map it, so only PART rows reach the driver.
    """
    import ray.data

    from jobs.plumbing.ray_data import blocks, ensure_ray, outputs

    ensure_ray(conf.ray)
    path = conf.table_path("vectors")
    know_path, emb_path = conf.table_path("knowledge"), conf.table_path("embeddings")
    local = tables.count(know_path) + tables.count(emb_path, versions["embeddings"]) <= (
        conf.ray.local_rows
    )
    no_embedding = 0
    if local:
        current = knowledge.current(knowledge.read_usable(know_path, ["model_id"]))
        embs = tables.read(emb_path, schemas.EMBEDDINGS, versions["embeddings"])
        joined = with_embeddings(current, embs)
        no_embedding = current.num_rows - joined.num_rows
        rows = blocks(joined, EXPORT_ROWS)
    else:
        rows = export_stream(conf, versions["embeddings"])
    parts = rows.map_batches(
        VectorWriter,
        fn_constructor_args=(checkpoint, path, version_id, input_fp, datetime.now(UTC)),
        batch_size=EXPORT_ROWS,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(
            min_size=1, max_size=1 if local else knowledge.partitions()
        ),
        num_cpus=1,
    )
    results = list(outputs(parts))
    written = [p for r in results for p in r.to_pylist() if p["rows"]]
    missing = no_embedding + sum(pc.sum(r.column("missing")).as_py() or 0 for r in results)
    exported = sum(p["rows"] for p in written)
    if missing:
        log.warning(
            "%d of %d entities have no embedding of their latest knowledge; "
            "they get no vector (run kar encode to cover them)",
            missing,
            missing + exported,
        )
    if not exported:
        raise InputError("no entity's current knowledge has an embedding; run kar encode")
    return written
