"""adapt: train the hybrid-expert adaptor against a backbone and publish reasoning / fact vectors.

Reads `samples`, `attributes`, `knowledge` (each entity's current answer, the
LLM that gave it, and the window its prompt covered) and `embeddings` (the text
vectors of those answers). Trains the backbone (adapt.backbone, DIN by default)
alone and with the co-trained adaptor on the same split, seed and epochs, logs
both AUCs, then runs every entity's current text through its adaptor tower.

Scale: training and the gate read a bounded, seeded sample of at most
adapt.max_train_rows CTR samples (streamed from the published `samples` version;
all of them when there are fewer) and only the knowledge, embeddings, attributes
and live vectors of the sample's entities. The export of every entity's vector is a
Ray Data map over each entity's current knowledge joined with its embedding (Arrow in
this process below ray.local_rows): workers write `vectors` files, the driver commits
them all in one overwrite. The sample's size is in the result and the commit metadata.

No leakage (README, "Two history windows"): a user's text is trained only
against CTR samples after the prompt that produced it. Per user that is the
current answer among those whose prompt ended before the user's last sample:
last week's answer against this week's interactions, or on a first run the
bootstrap answer from KAR's cut against the samples after the cut; the
samples inside that prompt are dropped. Users without such an answer train as
users without text.

Publish gate: when a live vectors version exists, the backbone is trained once
with the live vectors and once with the new adaptor's as frozen inputs (what a
downstream ranker sees), on today's training samples after both the live
vector's prompt and the training text's, with the same split and seed. The new
version is written (one overwrite commit) only if its held-out AUC is not worse
than the live one's by more than adapt.gate.tolerance; otherwise the live
version stays and the result says why. If nothing the stage reads has changed
since the last decision, it trains nothing and writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from adapters import data as ctr_data
from adapters.data import EntityMatrix
from adapters.moe import TOWERS, HybridExpertAdaptor, Tower
from adapters.train import train_and_evaluate
from jobs import faults, knowledge, schemas, tables
from jobs.config import Config
from jobs.errors import InputError, MissingTableError

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger(__name__)

METRICS = ("auc_without", "auc_with", "logloss_without", "logloss_with")


@dataclass(frozen=True)
class AdaptResult:
    auc_without: float
    auc_with: float
    logloss_without: float
    logloss_with: float
    vectors_version: int | None
    vectors_written: int
    skipped: bool
    seconds: float
    # Why the vectors were or were not published (the run summary prints it).
    gate: str = ""
    gate_live_auc: float | None = None  # held-out AUC with the live vectors, frozen
    gate_new_auc: float | None = None  # held-out AUC with the new vectors, frozen
    # The CTR samples trained (and gated) on: how many, of how many, and whether sampled
    # (adapt.max_train_rows); also in the vectors' commit metadata.
    train_rows: int | None = None
    samples_total: int | None = None
    sampled: bool = False


def adaptor_checkpoint(conf: Config, version_id: str) -> Path:
    """Where the adaptor behind vectors version `version_id` is saved (for new entities)."""
    return conf.run.output_dir / "models" / f"adaptor-{version_id}.pt"


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


@dataclass(frozen=True)
class TrainSample:
    """The CTR samples adapt trains and gates on: all of them, or a seeded bounded sample."""

    rows: pa.Table
    total: int  # samples in the prepared table (its log's statistics)
    sampled: bool  # True when `rows` is a sample of adapt.max_train_rows of them


def published_version(path: Path) -> int | None:
    """The version of `path`'s table the last completed prepare published (latest where no
    stage recorded it; None if there is no table)."""
    pinned = tables.pinned(path.parent / "stages", "prepare", path.name)
    return tables.version(path) if pinned is None else pinned


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


def train_sample(conf: Config, path: Path, version: int) -> TrainSample:
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
    where = ((pc.field("kind") == "user") & pc.field("entity_id").isin(users)) | (
        (pc.field("kind") == "item") & pc.field("entity_id").isin(items)
    )
    batches = list(tables.scan(path, schemas.ATTRIBUTES, version, where=where))
    return pa.concat_tables(batches) if batches else schemas.ATTRIBUTES.empty_table()


def _with_embeddings(rows: pa.Table, embeddings: pa.Table) -> pa.Table:
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


def _llm_model(rows: pa.Table) -> pa.Table:
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
        where = (pc.field("kind") == kind) & pc.field("entity_id").isin(ids)
        embs = list(tables.scan(emb_path, schemas.EMBEDDINGS, versions["embeddings"], where=where))
        return _llm_model(rows), (
            pa.concat_tables(embs) if embs else schemas.EMBEDDINGS.empty_table()
        )

    item_rows, item_embs = read("item", items)
    user_rows, user_embs = read("user", users)
    return (
        _with_embeddings(knowledge.current(item_rows), item_embs),
        _with_embeddings(user_rows, user_embs),
        user_rows,
    )


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


def read_vectors(
    path: Path,
    version: int | None = None,
    version_id: str | None = None,
    only: tuple[pa.Array, pa.Array] | None = None,
) -> tuple[EntityMatrix | None, EntityMatrix | None]:
    """(user, item) vectors stored in a VECTORS table (optionally one Delta version / version id).

    What a downstream ranker does with frozen vectors: they are read as stored,
    never recomputed. A kind the table holds no vectors of is None. `only` = (user ids,
    item ids) reads just those entities' rows (a bounded read: the gate's sample).
    """
    if only is None:
        rows = tables.read(path, schemas.VECTORS, version)
    else:
        users, items = only
        where = ((pc.field("kind") == "user") & pc.field("entity_id").isin(users)) | (
            (pc.field("kind") == "item") & pc.field("entity_id").isin(items)
        )
        batches = list(tables.scan(path, schemas.VECTORS, version, where=where))
        rows = pa.concat_tables(batches) if batches else schemas.VECTORS.empty_table()
    if version_id is not None:
        rows = rows.filter(pc.equal(rows.column("version_id"), version_id))
    if rows.num_rows == 0:
        raise MissingTableError(
            f"no vectors (version {version}, version id {version_id}) at {path}"
        )
    kinds = set(rows.column("kind").to_pylist())
    user, item = (entity_matrix(rows, k, "vector") if k in kinds else None for k in TOWERS)
    return user, item


def input_fingerprint(conf: Config, versions: dict[str, int | None], samples_total: int) -> str:
    """Hash of everything that changes the trained adaptor and its vectors: equal hash ->
    nothing to redo. Bounded: the versions of the tables read (samples, attributes,
    knowledge, embeddings), how many samples there were (the sample's size follows from
    it and adapt.max_train_rows), the adapt config and the seed; no entity keys."""
    payload = {
        "versions": versions,
        "samples_total": samples_total,
        "adapt": conf.adapt.model_dump(mode="json"),
        "seed": conf.run.seed,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# Commits that rewrite files without changing rows (the weekly compact and vacuum chores).
_SAME_ROWS = {"OPTIMIZE", "VACUUM START", "VACUUM END"}


def _published_metrics(path: Path, fingerprint: str) -> dict | None:
    """The live version's metrics (and sample size) if it was built from `fingerprint`,
    else None; from the commit metadata of the adapt commit behind it (past compactions
    and vacuums), so no vector is read."""
    table = tables.open_table(path)
    commit = next(
        (c for c in (table.history() if table else []) if c.get("operation") not in _SAME_ROWS),
        None,
    )
    if commit is None or commit.get("input_fingerprint") != fingerprint:
        return None
    values = {k: commit.get(k) for k in METRICS}
    if any(v is None for v in values.values()):
        log.warning("vectors at %s lack metrics in their last commit; retraining", path)
        return None
    out: dict = {k: float(v) for k, v in values.items()}
    if commit.get("train_rows") is not None:
        out |= {
            "train_rows": int(commit["train_rows"]),
            "sampled": commit["train_sampled"] == "True",
        }
    return out


def vector_rows(
    adaptor: HybridExpertAdaptor,
    current: pa.Table,
    version_id: str,
    input_fp: str,
    created_at: datetime | None = None,
) -> pa.Table:
    """The VECTORS rows of embedded entities: each text embedding through its own tower."""
    adaptor.eval()
    created_at = created_at or datetime.now(UTC)
    parts = []
    present = set(current.column("kind").to_pylist())
    for kind in (k for k in TOWERS if k in present):
        matrix = entity_matrix(current, kind)
        with torch.no_grad():
            chunks = torch.split(torch.from_numpy(matrix.values), 4096)
            vectors = torch.cat([adaptor.tower(c, kind) for c in chunks]).numpy()
        if not np.isfinite(vectors).all():
            raise RuntimeError(f"the adaptor's {kind} tower produced non-finite vectors")
        meta = current.filter(pc.equal(current.column("kind"), kind))
        n, dim = len(matrix.ids), adaptor.conf.out_dim
        parts.append(
            pa.table(
                {
                    "version_id": pa.array([version_id] * n),
                    "kind": meta.column("kind"),
                    "entity_id": meta.column("entity_id"),
                    "dim": pa.array([dim] * n, pa.int32()),
                    "vector": pa.FixedSizeListArray.from_arrays(vectors.reshape(-1), dim),
                    "fingerprint": meta.column("fingerprint"),
                    "llm_model": meta.column("llm_model"),
                    "encoder_model": meta.column("encoder_model"),
                    "adaptor": pa.array([adaptor.describe()] * n),
                    "input_fingerprint": pa.array([input_fp] * n),
                    "created_at": pa.array([created_at] * n, schemas.UTC_US),
                }
            )
        )
    if not parts:
        return schemas.VECTORS.empty_table()
    return pa.concat_tables([tables.conform(p, schemas.VECTORS, "vectors") for p in parts])


# Entities per `vectors` file the export writes (one map_batches call).
EXPORT_ROWS = 16_384
EXPORTED = pa.schema([*tables.PART, pa.field("missing", pa.int64())])


class VectorWriter:
    """The export's map: rows of each entity's current knowledge left-joined with the newest
    embedding of it become one Parquet part of `vectors` (the trained adaptor's towers).

    Returns that part's tables.PART row plus `missing`: rows without an embedding of
    their current knowledge, which get no vector. Run as a Ray Data actor (the adaptor is
    built once per actor) or in-process on the small-table path.
    """

    def __init__(
        self,
        adaptor: HybridExpertAdaptor,
        path: Path,
        version_id: str,
        input_fp: str,
        created_at: datetime,
    ) -> None:
        self.adaptor, self.path = adaptor.eval(), path
        self.version_id, self.input_fp, self.created_at = version_id, input_fp, created_at

    def __call__(self, rows: pa.Table) -> pa.Table:
        has = pc.is_valid(rows.column("embedding"))
        embedded = _llm_model(rows.filter(has))
        out = vector_rows(self.adaptor, embedded, self.version_id, self.input_fp, self.created_at)
        part = {"file": "", "size": 0, "rows": 0, "modified_ms": 0, "stats": ""}
        if out.num_rows:
            part = tables.write_part(self.path, out, schemas.VECTORS)
        part["missing"] = rows.num_rows - embedded.num_rows
        return pa.Table.from_pylist([part], schema=EXPORTED)


def _embedding_order(batch: pa.Table) -> pa.Table:
    """`batch` (EMBEDDINGS) plus `_group` (its knowledge key) and `_order` (encoded_at, then
    encoder_model, as one sortable string): the newest embedding of a key has the max."""
    micros = pc.cast(pc.cast(batch.column("encoded_at"), pa.timestamp("us", "UTC")), pa.int64())
    when = pc.utf8_lpad(pc.cast(micros, pa.string()), 20, "0")
    sep = "\x1f"
    group = pc.binary_join_element_wise(*(batch.column(k) for k in knowledge.KEYS), sep)
    batch = batch.append_column("_group", group)
    return batch.append_column(
        "_order", pc.binary_join_element_wise(when, batch.column("encoder_model"), sep)
    )


def export_stream(conf: Config, embeddings_version: int | None) -> ray.data.Dataset:
    """Every entity's current usable knowledge (kind, entity_id, fingerprint, model_id)
    left-joined with the newest embedding of exactly that answer (encoder_model, dim,
    embedding; null where there is none), as a Ray Dataset workers shuffle: the export's
    input at any scale."""
    from ray.data.aggregate import Max

    columns = [*knowledge.KEYS, "model_id"]
    current = knowledge.current_stream(conf.table_path("knowledge"), ["model_id"])
    current = current.select_columns(columns)
    embs = tables.dataset(conf.table_path("embeddings"), schemas.EMBEDDINGS, embeddings_version)
    embs = embs.map_batches(_embedding_order, batch_format="pyarrow")
    newest = (
        embs.select_columns(["_group", "_order"])
        .groupby("_group")
        .aggregate(Max("_order", alias_name="_order"))
    )
    embs = embs.join(newest, "inner", knowledge.partitions(), on=("_group", "_order"))
    embs = embs.select_columns([*knowledge.KEYS, "encoder_model", "dim", "embedding"])
    return current.join(embs, "left_outer", knowledge.partitions(), on=tuple(knowledge.KEYS))


def export_vectors(
    conf: Config,
    adaptor: HybridExpertAdaptor,
    versions: dict[str, int | None],
    version_id: str,
    input_fp: str,
) -> list[dict]:
    """Write every entity's vector as parts of the `vectors` table (not committed yet);
    returns their PART rows.

    Below ray.local_rows (knowledge + embeddings) the join is Arrow in this process
    (tiny runs need no Ray shuffle); above it a Ray Data stream (export_stream) mapped by
    VectorWriter actors, so only PART rows reach the driver. Both write the same rows.
    """
    path = conf.table_path("vectors")
    know_path, emb_path = conf.table_path("knowledge"), conf.table_path("embeddings")
    writer_args = (adaptor, path, version_id, input_fp, datetime.now(UTC))
    if tables.count(know_path) + tables.count(emb_path, versions["embeddings"]) <= (
        conf.ray.local_rows
    ):
        current = knowledge.current(knowledge.read_usable(know_path, ["model_id"]))
        embs = tables.read(emb_path, schemas.EMBEDDINGS, versions["embeddings"])
        joined = _with_embeddings(current, embs)
        writer = VectorWriter(*writer_args)
        results = [
            writer(joined.slice(start, EXPORT_ROWS))
            for start in range(0, joined.num_rows, EXPORT_ROWS)
        ]
        results.append(pa.table({"rows": [0], "missing": [current.num_rows - joined.num_rows]}))
    else:
        import ray.data

        from jobs.ray_data import ensure_ray, outputs

        ensure_ray(conf.ray)
        parts = export_stream(conf, versions["embeddings"]).map_batches(
            VectorWriter,
            fn_constructor_args=writer_args,
            batch_size=EXPORT_ROWS,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=knowledge.partitions()),
            num_cpus=1,
        )
        results = list(outputs(parts))
    written = [p for r in results for p in r.to_pylist() if p["rows"]]
    missing = sum(pc.sum(r.column("missing")).as_py() or 0 for r in results)
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


def _versions(conf: Config) -> tuple[dict[str, int | None], int]:
    """(versions of the tables adapt reads, samples at the published version); an
    InputError naming the stage to run when one is missing or empty."""
    samples_path = conf.table_path("samples")
    versions = {n: published_version(conf.table_path(n)) for n in ("samples", "attributes")}
    versions |= {n: tables.version(conf.table_path(n)) for n in ("knowledge", "embeddings")}
    total = 0 if versions["samples"] is None else tables.count(samples_path, versions["samples"])
    if total == 0:
        raise MissingTableError(
            f"samples table at {samples_path} is missing or empty; "
            "run the prepare stage first (kar prepare)"
        )
    if versions["attributes"] is None:
        log.warning(
            "no attributes table at %s: backbones see ids and history only "
            "(rerun kar prepare to write it)",
            conf.table_path("attributes"),
        )
    if not tables.count(conf.table_path("knowledge")):
        raise MissingTableError(
            f"knowledge table at {conf.table_path('knowledge')} is missing or has no answer; "
            "run the generate stage first (kar generate)"
        )
    if not tables.count(conf.table_path("embeddings")):
        raise MissingTableError(
            f"embeddings table at {conf.table_path('embeddings')} is missing or empty; "
            "run the encode stage first (kar encode)"
        )
    return versions, total


def run(conf: Config, run_id: str) -> AdaptResult:
    started = time.monotonic()
    vectors_path = conf.table_path("vectors")
    versions, total = _versions(conf)
    input_fp = input_fingerprint(conf, versions, total)
    previous = _published_metrics(vectors_path, input_fp)
    if previous is not None:
        version = tables.version(vectors_path)
        log.info(
            "adapt inputs unchanged (input fingerprint %s); kept vectors version %s",
            input_fp[:12],
            version,
        )
        return AdaptResult(
            **previous,
            samples_total=total,
            vectors_version=version,
            vectors_written=0,
            skipped=True,
            seconds=time.monotonic() - started,
            gate=f"inputs unchanged since vectors version {version}",
        )
    rejected = _rejection(conf, input_fp)
    if rejected is not None:
        log.info("%s", rejected["gate"])
        return AdaptResult(
            **rejected,
            vectors_version=tables.version(vectors_path),
            vectors_written=0,
            skipped=True,
            seconds=time.monotonic() - started,
        )

    sample = train_sample(conf, conf.table_path("samples"), versions["samples"])
    drawn = {"train_rows": sample.rows.num_rows, "samples_total": total, "sampled": sample.sampled}
    attributes = sample_attributes(conf, sample, versions["attributes"])
    items, user_rows, user_knowledge = sample_knowledge(conf, sample.rows, versions)
    # No leakage: each user's text is trained only against samples after its prompt.
    trained_on = knowledge.training_users(sample.rows, user_rows)
    if trained_on.num_rows == 0:
        raise InputError(
            "no user knowledge ended before any of its user's CTR samples, so the adaptor has "
            "no leak-free text to train on; keep refresh.bootstrap_users unset (or > 0) so "
            "users get KAR's-cut prompts, and rerun kar prepare, generate and encode"
        )
    samples = knowledge.after_prompts(
        sample.rows, trained_on.column("entity_id"), trained_on.column("history_end")
    )
    log.info(
        "adapt: %d users' texts against the %d samples after their prompts (no sample inside "
        "its prompt), of %d drawn from %d",
        trained_on.num_rows,
        samples.num_rows,
        sample.rows.num_rows,
        total,
    )

    def build(part: pa.Table, users: EntityMatrix, items: EntityMatrix) -> ctr_data.CTRData:
        return ctr_inputs(conf, part, attributes, conf.run.seed, users, items)

    data = build(samples, entity_matrix(trained_on, "user"), entity_matrix(items, "item"))
    without = train_and_evaluate(data, conf.adapt, conf.run.seed)
    with_kar = train_and_evaluate(data, conf.adapt, conf.run.seed, kar="cotrained")
    log.info(
        "test AUC %.4f -> %.4f with KAR (%+.4f); LogLoss %.4f -> %.4f",
        without.auc,
        with_kar.auc,
        with_kar.auc - without.auc,
        without.logloss,
        with_kar.logloss,
    )
    metrics = {
        "auc_without": without.auc,
        "auc_with": with_kar.auc,
        "logloss_without": without.logloss,
        "logloss_with": with_kar.logloss,
    }

    adaptor = with_kar.model.adaptor.cpu()
    live_version = tables.version(vectors_path)
    gate: dict = {"gate": "published: no live vectors version to compare with"}
    if live_version is not None and conf.adapt.gate.enabled:
        seed = conf.run.seed
        # Scored on the sample's samples after both prompts: the live vector's and the
        # training text's; only the sample's entities' vectors are read.
        sample_users = pc.unique(samples.column("user_id"))
        live_users = _vector_prompts(conf, live_version, user_knowledge, sample_users)
        part = knowledge.after_prompts(
            samples, live_users.column("entity_id"), live_users.column("history_end")
        )
        new_users = vector_rows(adaptor, trained_on, run_id, input_fp)
        new_items = vector_rows(adaptor, items, run_id, input_fp)
        only = (sample_users, pc.unique(samples.column("item_id")))
        try:
            live_data = build(part, *read_vectors(vectors_path, live_version, only=only))
            new_data = build(
                part,
                entity_matrix(new_users, "user", "vector"),
                entity_matrix(new_items, "item", "vector"),
            )
        except tables.SchemaError:
            raise  # broken live vectors are a failure, not a reason to publish ungated
        except InputError as e:
            # Few users were active since the live vectors' prompts: nothing fair to score.
            gate["gate"] = f"published: too few samples after the live vectors' prompts ({e})"
        else:
            live = train_and_evaluate(live_data, conf.adapt, seed, "frozen")
            new = train_and_evaluate(new_data, conf.adapt, seed, "frozen")
            gate = _gate(conf, live_version, live.auc, new.auc)
        if gate["gate"].startswith("kept"):
            log.warning("%s", gate["gate"])
            _remember_rejection(conf, input_fp, {**metrics, **gate, **drawn})
            return AdaptResult(
                **metrics,
                **gate,
                **drawn,
                vectors_version=live_version,
                vectors_written=0,
                skipped=True,
                seconds=time.monotonic() - started,
            )
    elif live_version is not None:
        gate["gate"] = "published: adapt.gate.enabled is false"
    log.info("%s", gate["gate"])

    checkpoint = adaptor_checkpoint(conf, run_id)
    adaptor.save(checkpoint, input_fingerprint=input_fp, version_id=run_id)
    parts = export_vectors(conf, adaptor, versions, run_id, input_fp)
    faults.point("adapt:before-vectors")
    # One overwrite commit of every part: the vectors table is one version per adapt, and a
    # run killed before it leaves the live version as it was.
    version = tables.commit_parts(
        vectors_path,
        parts,
        schemas.VECTORS,
        mode="overwrite",
        metadata={
            "run_id": run_id,
            "input_fingerprint": input_fp,
            "adaptor_checkpoint": str(checkpoint),
            **{k: repr(v) for k, v in metrics.items()},
            # Provenance of the training data: how many samples, and whether sampled.
            "train_rows": str(sample.rows.num_rows),
            "samples_total": str(total),
            "train_sampled": str(sample.sampled),
        },
    )
    return AdaptResult(
        **metrics,
        **gate,
        **drawn,
        vectors_version=version,
        vectors_written=sum(p["rows"] for p in parts),
        skipped=False,
        seconds=time.monotonic() - started,
    )


def _gate(conf: Config, live_version: int, live_auc: float, new_auc: float) -> dict:
    """The gate's decision: "kept ..." when the new AUC is below the live one by more than
    adapt.gate.tolerance, "published ..." otherwise."""
    tolerance = conf.adapt.gate.tolerance
    gate: dict = {"gate_live_auc": live_auc, "gate_new_auc": new_auc}
    if new_auc < live_auc - tolerance:
        gate["gate"] = (
            f"kept live vectors version {live_version}: the new vectors' held-out AUC "
            f"{new_auc:.4f} is {live_auc - new_auc:.4f} below the live version's "
            f"{live_auc:.4f} (adapt.gate.tolerance {tolerance})"
        )
    else:
        gate["gate"] = (
            f"published: held-out AUC {new_auc:.4f} with the new vectors vs {live_auc:.4f} "
            f"with live version {live_version} (adapt.gate.tolerance {tolerance})"
        )
    return gate


def _vector_prompts(conf: Config, version: int, know: pa.Table, users: pa.Array) -> pa.Table:
    """entity_id, history_end: where the prompt behind each user vector of `version` ended,
    for the users `users` (the sample's), from `know` (their usable knowledge).

    A vector whose knowledge row is gone or predates the window columns gets an end
    past every sample, so the gate never scores it on a sample its prompt may hold.
    """
    where = (pc.field("kind") == "user") & pc.field("entity_id").isin(users)
    columns = ["entity_id", "fingerprint"]
    path = conf.table_path("vectors")
    batches = list(tables.scan(path, schemas.VECTORS, version, columns, where))
    empty = pa.schema([schemas.VECTORS.field(c) for c in columns]).empty_table()
    stored = pa.concat_tables(batches) if batches else empty
    know = know.select(["entity_id", "fingerprint", "history_end"])
    ends = stored.join(know, ["entity_id", "fingerprint"], join_type="left outer")
    unknown = pa.scalar(np.iinfo(np.int32).max, pa.int32())
    return pa.table(
        {
            "entity_id": ends.column("entity_id"),
            "history_end": pc.fill_null(ends.column("history_end"), unknown),
        }
    )


def _rejection_path(conf: Config, input_fp: str) -> Path:
    return conf.run.output_dir / "models" / f"gate-rejected-{input_fp[:16]}.json"


def _remember_rejection(conf: Config, input_fp: str, result: dict) -> None:
    """So a rerun with the same inputs repeats the decision instead of retraining."""
    path = _rejection_path(conf, input_fp)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(path)


def _rejection(conf: Config, input_fp: str) -> dict | None:
    path = _rejection_path(conf, input_fp)
    return json.loads(path.read_text()) if path.is_file() else None


if __name__ == "__main__":
    from jobs import cli

    cli.main(["adapt", *sys.argv[1:]])
