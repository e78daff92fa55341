"""Encode stage: turn each entity's current knowledge text into one vector in `embeddings`.

An entity's current knowledge is its latest usable `knowledge` row
(jobs/rules/knowledge.py), per window. Only those whose (kind, entity_id,
fingerprint) has no embedding from the configured encoder yet are encoded, so a
rerun encodes nothing and a changed answer is re-encoded once. Batches go to a
Ray Data actor pool, one encoder per actor; actors write the vectors as Parquet
parts and the driver commits those files in chunks, so no vector passes through
the driver, a crash loses at most the uncommitted parts and no key is ever
committed twice.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray.data

from encoders import ENGINES
from encoders.inputs import encoder_input
from jobs.plumbing import faults, tables
from jobs.plumbing.config import Config, EncoderConf
from jobs.plumbing.errors import MissingTableError
from jobs.plumbing.models import BUNDLED_PREFIX, load_encoder, resolve_model
from jobs.plumbing.ray_data import actor_pool, blocks, ensure_ray, outputs
from jobs.plumbing.schemas import EMBEDDINGS
from jobs.plumbing.storage import Location
from jobs.rules import knowledge

log = logging.getLogger(__name__)

KEYS = ["kind", "entity_id", "fingerprint", "encoder_model"]


@dataclass
class EncodeResult:
    encoded: int
    seconds: float
    embeddings_version: int | None


class EncoderWorker:
    """A Ray Data actor: one loaded encoder; each call turns a batch of current-knowledge
    rows into vectors and writes them as one Parquet part of the `embeddings` table.

    Returns one row per part (tables.PART plus truncations and busy seconds), so no
    vector passes through the driver.
    """

    def __init__(
        self,
        model: str,
        conf: EncoderConf,
        cache_dir: Path,
        threads: int | None,
        path: Location,
        model_name: str,
    ) -> None:
        self.encoder = load_encoder(model, conf, cache_dir, threads)
        self.path, self.model_name = path, model_name

    def __call__(self, rows: pa.Table) -> pa.Table:
        started = time.perf_counter()
        texts = [
            encoder_input(kind, context, text)
            for kind, context, text in zip(
                *(rows.column(c).to_pylist() for c in ("kind", "context", "text")), strict=True
            )
        ]
        # Sorted by length, so each encoder batch pads little.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        rows, texts = rows.take(pa.array(order, pa.int64())), [texts[i] for i in order]
        vectors = self.encoder.encode(texts)
        part = tables.write_part(
            self.path, _embedding_rows(rows, vectors, self.model_name), EMBEDDINGS
        )
        part["truncated"] = self.encoder.count_truncated(texts)
        part["busy_seconds"] = time.perf_counter() - started
        return pa.Table.from_pylist([part])


def pending_inputs(conf: Config) -> pa.Table | ray.data.Dataset:
    """Each entity's current knowledge per window with no vector from this encoder yet.

    Per window, not per entity: a user's production answer is what adapt exports,
    its KAR's-cut answer (bootstrap) what the adaptor may train on; both need a
    vector. Columns kind, entity_id, fingerprint, context, text. The knowledge rules
    of jobs/rules/knowledge.py, then an anti-join with `embeddings`: in Arrow here when both
    tables are small (ray.local_rows, so a no-change rerun needs no Ray), else a Ray
    Dataset that workers stream.
    """
    knowledge_path = conf.table_path("knowledge")
    if tables.open_table(knowledge_path) is None:
        raise MissingTableError(
            f"no knowledge table at {knowledge_path}; run `kar generate` with the same config first"
        )
    path = conf.table_path("embeddings")
    columns = ["kind", "entity_id", "fingerprint", "context", "text"]
    per_window = [*knowledge.ENTITY, "window"]
    mine = pc.field("encoder_model") == conf.encoder.model
    if tables.count(knowledge_path) + tables.count(path) <= conf.ray.local_rows:
        rows = knowledge.read_usable(knowledge_path, ["context", "text", "window"])
        rows = tables.latest_rows(rows, per_window, knowledge.ORDER).select(columns)
        embedded = tables.open_table(path)
        if embedded is None:
            return rows
        done = pa.table(embedded.to_pyarrow_table(columns=KEYS[:3], filters=mine))
        return rows.join(done.cast(rows.select(KEYS[:3]).schema), KEYS[:3], join_type="left anti")
    ensure_ray(conf.ray)
    rows = knowledge.current_stream(knowledge_path, ["context", "text"], per=per_window)
    rows = rows.select_columns(columns)
    if tables.open_table(path) is None:
        return rows
    done = tables.dataset(path, EMBEDDINGS, columns=KEYS[:3], where=mine)
    return knowledge.without(rows, done, KEYS[:3])


def _portable_model(model: str, engine: str, cache_dir: Path) -> str:
    """The model name a Ray worker can resolve: absolute path, since its cwd may differ.

    Resolving here first also fails a bad name (ModelError, an input error) before any
    actor starts. A plug-in engine's model may be a remote name: it is passed on as
    configured.
    """
    if engine not in ENGINES:
        return model
    path = resolve_model(model, "encoder", cache_dir)
    return model if model.startswith(BUNDLED_PREFIX) else str(path)


def _embedding_rows(rows: pa.Table, vectors: np.ndarray, model: str) -> pa.Table:
    n, dim = vectors.shape
    offsets = pa.array(np.arange(0, n * dim + 1, dim), pa.int32())
    embedding = pa.ListArray.from_arrays(offsets, pa.array(vectors.reshape(-1), pa.float32()))
    return pa.table(
        {
            "kind": rows.column("kind"),
            "entity_id": rows.column("entity_id"),
            "fingerprint": rows.column("fingerprint"),
            "encoder_model": pa.array([model] * n, pa.string()),
            "dim": pa.array([dim] * n, pa.int32()),
            "embedding": embedding,
            "encoded_at": pa.array([datetime.now(UTC)] * n, EMBEDDINGS.field("encoded_at").type),
        }
    )


def run(conf: Config, run_id: str) -> EncodeResult:
    """Encode every entity whose current knowledge has no vector yet; commit the actors'
    parts to `embeddings` in chunks (a crash loses at most the uncommitted ones)."""
    started = time.monotonic()
    path = conf.table_path("embeddings")
    model = _portable_model(conf.encoder.model, conf.encoder.engine, conf.run.cache_dir)
    pending = pending_inputs(conf)
    enc = conf.encoder
    if isinstance(pending, pa.Table):
        log.info("encode: %d entities to encode with %s", pending.num_rows, enc.model)
        if pending.num_rows == 0:
            return EncodeResult(0, time.monotonic() - started, tables.version(path))
        ensure_ray(conf.ray)
        pending = blocks(pending, enc.commit_rows)
    else:
        pending = pending.repartition(target_num_rows_per_block=enc.commit_rows)
    committer = tables.PartCommitter(
        path,
        EMBEDDINGS,
        enc.commit_rows,
        metadata={"run_id": run_id, "encoder_model": enc.model},
        after=_committed,
    )
    # `pending` comes in blocks of commit_rows inputs (above): a task's output reaches the
    # driver when the task ends, so each task is one commit's worth (and a kill's loss).
    parts = pending.map_batches(
        EncoderWorker,
        fn_constructor_args=(
            model,
            enc,
            conf.run.cache_dir,
            enc.pool.torch_threads,
            path,
            enc.model,
        ),
        batch_size=None,  # one call per block: one Parquet part (the encoder batches inside)
        batch_format="pyarrow",
        **actor_pool(enc.pool),
    )
    done = truncated = 0
    busy = 0.0
    for batch in outputs(parts, enc.pool, conf.ray.unschedulable_wait_s):
        for row in batch.to_pylist():
            committer.add(row)
            done += row["rows"]
            truncated += row["truncated"]
            busy += row["busy_seconds"]
    committer.flush()

    seconds = time.monotonic() - started
    if truncated:
        log.warning(
            "encode: %d of %d inputs were longer than the encoder's token limit and were cut at "
            "the end (for users that drops the answer after a long history)",
            truncated,
            done,
        )
    # Wall time includes the pending set and loading the model; busy time is encoding only.
    log.info(
        "encode: %d texts with %s in %.1f s wall; %.1f texts/s per actor while encoding",
        done,
        enc.model,
        seconds,
        done / busy if busy else 0.0,
    )
    return EncodeResult(done, seconds, committer.version)


def _committed(version: int) -> None:
    log.info("embeddings: committed vectors (version %d)", version)
    faults.point("encode:after-commit")
