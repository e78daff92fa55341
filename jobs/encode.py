"""Encode stage: turn each entity's current knowledge text into one vector in `embeddings`.

An entity's current knowledge is its latest usable `knowledge` row
(jobs/knowledge.py), per window. Only those whose (kind, entity_id,
fingerprint) has no embedding from the configured encoder yet are encoded, so a
rerun encodes nothing and a changed answer is re-encoded once. Batches go to a
Ray actor pool, one encoder per actor; the driver MERGEs vectors into Delta in
chunks, so a crash loses at most one chunk and no key is ever written twice.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from encoders.inputs import encoder_input
from encoders.sentence import BUNDLED_PREFIX, EncoderError, SentenceEncoder, resolve_encoder
from jobs import faults, knowledge, tables
from jobs.actors import ActorStage
from jobs.config import Config, ConfigError, EncoderConf
from jobs.schemas import EMBEDDINGS

log = logging.getLogger(__name__)

KEYS = ["kind", "entity_id", "fingerprint", "encoder_model"]


@dataclass
class EncodeResult:
    encoded: int
    seconds: float
    embeddings_version: int | None


@dataclass
class EncodedBatch:
    """One batch's vectors plus what the driver logs: truncations and the actor's busy time."""

    vectors: np.ndarray  # float32 (n, dim)
    truncated: int
    seconds: float


class EncoderWorker:
    """One Ray actor = one loaded encoder; it turns batches of texts into vectors."""

    def __init__(self, model: str, conf: EncoderConf, threads: int | None) -> None:
        self.encoder = SentenceEncoder(
            resolve_encoder(model),
            device=conf.device,
            batch_size=conf.batch_size,
            threads=threads,
        )

    def encode(self, texts: list[str]) -> EncodedBatch:
        started = time.perf_counter()
        vectors = self.encoder.encode(texts)
        seconds = time.perf_counter() - started
        return EncodedBatch(vectors, self.encoder.count_truncated(texts), seconds)


def pending_inputs(conf: Config) -> pa.Table:
    """Encoder inputs of each entity's current knowledge per window not encoded yet.

    Per window, not per entity: a user's production answer is what adapt exports,
    its KAR's-cut answer (bootstrap) what the adaptor may train on; both need a
    vector. Columns kind, entity_id, fingerprint, input; sorted by kind then input
    length so each batch pads little.
    """
    knowledge_path = conf.table_path("knowledge")
    if tables.open_table(knowledge_path) is None:
        raise FileNotFoundError(
            f"no knowledge table at {knowledge_path}; run `kar generate` with the same config first"
        )
    rows = knowledge.read_usable(knowledge_path, ["context", "text"])
    rows = tables.latest_rows(rows, [*knowledge.ENTITY, "window"], knowledge.ORDER)
    done = tables.open_table(conf.table_path("embeddings"))
    if done is not None:
        key_schema = pa.schema([EMBEDDINGS.field(k) for k in KEYS])
        keys = tables.conform(
            pa.table(done.to_pyarrow_table(columns=KEYS)), key_schema, "embeddings"
        )
        keys = keys.filter(pc.equal(keys.column("encoder_model"), conf.encoder.model))
        rows = rows.join(keys.drop_columns(["encoder_model"]), keys=KEYS[:3], join_type="left anti")
    inputs = [
        encoder_input(kind, context, text)
        for kind, context, text in zip(
            rows.column("kind").to_pylist(),
            rows.column("context").to_pylist(),
            rows.column("text").to_pylist(),
            strict=True,
        )
    ]
    rows = rows.select(["kind", "entity_id", "fingerprint"]).append_column(
        "input", pa.array(inputs, pa.string())
    )
    rows = rows.append_column("_len", pc.utf8_length(rows.column("input")))
    return rows.sort_by([("kind", "ascending"), ("_len", "ascending")]).drop_columns(["_len"])


def _portable_model(model: str) -> str:
    """The model name a Ray worker can resolve: absolute path, since its cwd may differ.

    Resolving here first also fails a bad name before any actor starts.
    """
    try:
        path = resolve_encoder(model)
    except EncoderError as e:
        raise ConfigError(f"encoder.model: {e}") from e
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


def _batches(
    conf: Config, model: str, pending: pa.Table
) -> Iterator[tuple[pa.Table, EncodedBatch]]:
    """(pending rows, their encoded batch) per batch, as the actor pool finishes them."""
    size = conf.encoder.batch_size
    ranges = [(a, min(a + size, pending.num_rows)) for a in range(0, pending.num_rows, size)]
    texts = pending.column("input").to_pylist()
    enc = conf.encoder
    with ActorStage(conf.ray, EncoderWorker, enc.pool, model, enc, enc.pool.torch_threads) as stage:
        for a, b, batch in stage.map_ranges(
            lambda actor, batch: actor.encode.remote(batch),
            texts,
            ranges,
            in_flight=1,
            desc="encode",
        ):
            yield pending.slice(a, b - a), batch


def run(conf: Config, run_id: str) -> EncodeResult:
    """Encode every entity whose current knowledge has no vector yet; MERGE into `embeddings`."""
    started = time.monotonic()
    path = conf.table_path("embeddings")
    model = _portable_model(conf.encoder.model)
    pending = pending_inputs(conf)
    log.info("encode: %d entities to encode with %s", pending.num_rows, conf.encoder.model)
    if pending.num_rows == 0:
        return EncodeResult(0, time.monotonic() - started, tables.version(path))

    buffer: list[pa.Table] = []
    buffered = done = truncated = 0
    busy = 0.0
    version: int | None = None

    def flush() -> None:
        nonlocal buffered, version
        chunk = pa.concat_tables(buffer)
        version = tables.insert_new(
            path,
            chunk,
            EMBEDDINGS,
            keys=KEYS,
            metadata={"run_id": run_id, "encoder_model": conf.encoder.model},
        )
        log.info("embeddings: committed %d vectors (version %d)", chunk.num_rows, version)
        buffer.clear()
        buffered = 0

    for rows, batch in _batches(conf, model, pending):
        buffer.append(_embedding_rows(rows, batch.vectors, conf.encoder.model))
        buffered += len(batch.vectors)
        done += len(batch.vectors)
        truncated += batch.truncated
        busy += batch.seconds
        if buffered >= conf.encoder.commit_rows:
            flush()
            faults.point("encode:after-commit")
    if buffer:
        flush()

    seconds = time.monotonic() - started
    if truncated:
        log.warning(
            "encode: %d of %d inputs were longer than the encoder's token limit and were cut at "
            "the end (for users that drops the answer after a long history)",
            truncated,
            done,
        )
    # Wall time includes starting the actors and loading the model; busy time is encoding only.
    log.info(
        "encode: %d texts in %.1f s wall (%.1f texts/s); %.1f texts/s per actor while encoding",
        done,
        seconds,
        done / seconds,
        done / busy,
    )
    return EncodeResult(done, seconds, version)


if __name__ == "__main__":
    from jobs import cli

    cli.main(["encode", *sys.argv[1:]])
