"""What adapt trains on, read from the tables: a seeded, bounded sample of the published
CTR samples, and the attributes, knowledge and text embeddings of the sample's entities.

Bounded reads only: the sample has at most adapt.max_train_rows samples (streamed from
the published `samples` version; all of them when there are fewer), and only its
entities' rows of the other tables are read.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.plumbing import schemas, tables
from jobs.plumbing.config import Config
from jobs.plumbing.storage import Location
from jobs.rules import knowledge

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSample:
    """The CTR samples adapt trains and gates on: all of them, or a seeded bounded sample."""

    rows: pa.Table
    total: int  # samples in the prepared table (its log's statistics)
    sampled: bool  # True when `rows` is a sample of adapt.max_train_rows of them


def published_version(path: Location) -> int | None:
    """The version of `path`'s table to read as the last completed prepare published it
    (`tables.pinned`; None if there is no table)."""
    return tables.pinned(path.parent / "stages", "prepare", path.name)


def _draws(batch: pa.Table, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per sample from (seed, user_id, position) alone, so a
    sample draws the same number on every run whatever the table's file layout."""
    users = pc.unique(batch.column("user_id"))
    salt = f"{seed}\x1f".encode()
    per_user = np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(salt + u.encode(), digest_size=8).digest(), "little")
            for u in users.to_pylist()
        ),
        dtype=np.uint64,
        count=len(users),
    )
    index = pc.index_in(batch.column("user_id"), value_set=users).to_numpy()
    position = batch.column("position").to_numpy().astype(np.uint64)
    with np.errstate(over="ignore"):
        h = per_user[index] ^ (position * np.uint64(0x9E3779B97F4A7C15))
        # splitmix64's finalizer: every input bit moves every output bit.
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def train_sample(conf: Config, path: Location, version: int) -> TrainSample:
    """The samples at `version`, or a seeded sample of exactly adapt.max_train_rows of them.

    Sampled when the table (counted from its log) holds more: a streamed scan keeps the
    rows whose draw (_draws) falls below a fraction a little above the target, then the
    target count of lowest draws, so memory stays near the sample's size and a rerun
    with the same seed picks the same samples.
    """
    total, limit = tables.count(path, version), conf.adapt.max_train_rows
    if total <= limit:
        return TrainSample(tables.read(path, schemas.SAMPLES, version), total, False)
    fraction = min(1.0, (limit + 4 * math.sqrt(limit) + 16) / total)
    kept = []
    for batch in tables.scan(path, schemas.SAMPLES, version):
        draws = _draws(batch, conf.run.seed)
        keep = pa.array(draws < fraction)
        kept.append(batch.filter(keep).append_column("_draw", pa.array(draws).filter(keep)))
    rows = pa.concat_tables(kept).sort_by([("_draw", "ascending")]).slice(0, limit)
    rows = rows.drop_columns(["_draw"]).sort_by(
        [("user_id", "ascending"), ("position", "ascending")]
    )
    log.info(
        "adapt: training on a seeded sample of %d of %d CTR samples (adapt.max_train_rows)",
        rows.num_rows,
        total,
    )
    return TrainSample(rows, total, True)


def sample_attributes(conf: Config, samples: TrainSample, version: int | None) -> pa.Table:
    """The published attributes (at `version`): all of them for an unsampled run (so its
    token vocabulary is what it always was), else those of the sample's entities."""
    path = conf.table_path("attributes")
    if version is None or not samples.sampled:
        return tables.read(path, schemas.ATTRIBUTES, version)
    rows = samples.rows
    users = pc.unique(rows.column("user_id"))
    items = pc.unique(
        pa.concat_arrays(
            [
                rows.column("item_id").combine_chunks(),
                pc.list_flatten(rows.column("history_item_ids").combine_chunks()),
            ]
        )
    )
    where = knowledge.of_entities("user", users) | knowledge.of_entities("item", items)
    return tables.read_where(path, schemas.ATTRIBUTES, where, version)


def with_embeddings(rows: pa.Table, embeddings: pa.Table) -> pa.Table:
    """`rows` (knowledge: kind, entity_id, fingerprint, ...) inner-joined with the newest
    embedding of exactly their answer: + encoder_model, dim, embedding, sorted by key."""
    keys = knowledge.KEYS
    # Re-encoding the same answer (e.g. a new encoder) adds a row; the newest one wins.
    newest = tables.latest_rows(embeddings, keys, ["encoded_at", "encoder_model"]).select(
        [*keys, "encoder_model", "dim", "embedding"]
    )
    # Arrow joins cannot carry list columns: join row numbers, then take the vectors.
    slim = newest.drop_columns(["embedding"]).append_column(
        "_row", pa.array(np.arange(newest.num_rows))
    )
    joined = slim.join(rows, keys, join_type="inner").sort_by([(k, "ascending") for k in keys])
    vectors = newest.column("embedding").take(joined.column("_row"))
    return joined.append_column("embedding", vectors).drop_columns(["_row"])


def with_llm_model(rows: pa.Table) -> pa.Table:
    """`rows` with knowledge's model_id named as the tables downstream of it name it."""
    return rows.rename_columns(["llm_model" if c == "model_id" else c for c in rows.column_names])


def sample_knowledge(
    conf: Config, samples: pa.Table, versions: dict[str, int | None]
) -> tuple[pa.Table, pa.Table, pa.Table]:
    """(items, users, user knowledge): knowledge of the sample's entities.

    `items`: each target item's current knowledge with its text embedding (what the
    adaptor trains with); `users`: every usable answer of the sample's users with its
    embedding (the candidates of knowledge.training_users); `user knowledge`: those
    answers with or without one (where the live vectors' prompts ended). Columns kind,
    entity_id, fingerprint, llm_model, history_end (+ ORDER), and encoder_model, dim,
    embedding. Bounded reads: only the rows of the sample's ids, at `versions`.
    """
    know_path, emb_path = conf.table_path("knowledge"), conf.table_path("embeddings")
    columns = ["model_id", "history_end"]
    users, items = pc.unique(samples.column("user_id")), pc.unique(samples.column("item_id"))

    def read(kind: str, ids: pa.Array) -> tuple[pa.Table, pa.Table]:
        rows = knowledge.read_usable_of(know_path, columns, kind, ids, versions["knowledge"])
        where = knowledge.of_entities(kind, ids)
        embs = tables.read_where(emb_path, schemas.EMBEDDINGS, where, versions["embeddings"])
        return with_llm_model(rows), embs

    item_rows, item_embs = read("item", items)
    user_rows, user_embs = read("user", users)
    return (
        with_embeddings(knowledge.current(item_rows), item_embs),
        with_embeddings(user_rows, user_embs),
        user_rows,
    )
