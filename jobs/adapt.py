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

from adapters import gate
from adapters.data import EntityMatrix
from adapters.moe import HybridExpertAdaptor, Tower
from adapters.train import train_and_evaluate
from adapters.vectors import export
from jobs.plumbing import ctr, faults, knowledge, schemas, tables
from jobs.plumbing.config import Config
from jobs.plumbing.errors import InputError, MissingTableError

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
    """The VECTORS rows of embedded entities (`current`: knowledge rows with their text
    embedding): each embedding through its own tower, with the knowledge it came from."""
    created_at = created_at or datetime.now(UTC)
    parts = []
    for kind, vectors in export(adaptor, ctr.embedding_matrices(current)).items():
        meta = current.filter(pc.equal(current.column("kind"), kind))
        parts.append(
            ctr.vector_rows(
                kind,
                vectors,
                created_at,
                version_id=version_id,
                fingerprint=meta.column("fingerprint"),
                llm_model=meta.column("llm_model"),
                encoder_model=meta.column("encoder_model"),
                adaptor=adaptor.describe(),
                input_fingerprint=input_fp,
            )
        )
    return pa.concat_tables(parts) if parts else schemas.VECTORS.empty_table()


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

        from jobs.plumbing.ray_data import ensure_ray, outputs

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
    versions, total = _versions(conf)
    input_fp = input_fingerprint(conf, versions, total)
    unchanged = _unchanged(conf, input_fp, total)
    if unchanged is not None:
        return AdaptResult(
            **unchanged, vectors_written=0, skipped=True, seconds=time.monotonic() - started
        )
    trained = _train(conf, versions, total)
    publish, gate_fields = _gate(conf, trained, input_fp)
    log.log(logging.INFO if publish else logging.WARNING, "%s", gate_fields["gate"])
    result = {**trained.metrics, **gate_fields, **trained.drawn}
    if not publish:
        _remember_rejection(conf, input_fp, result)
        return AdaptResult(
            **result,
            vectors_version=tables.version(conf.table_path("vectors")),
            vectors_written=0,
            skipped=True,
            seconds=time.monotonic() - started,
        )
    version, written = _publish(conf, trained, versions, run_id, input_fp)
    return AdaptResult(
        **result,
        vectors_version=version,
        vectors_written=written,
        skipped=False,
        seconds=time.monotonic() - started,
    )


def _unchanged(conf: Config, input_fp: str, total: int) -> dict | None:
    """AdaptResult fields of the last decision on these very inputs (the live version built
    from them, or the gate's rejection of them), so a rerun repeats it; None: train."""
    vectors_path = conf.table_path("vectors")
    previous = _published_metrics(vectors_path, input_fp)
    if previous is not None:
        version = tables.version(vectors_path)
        log.info(
            "adapt inputs unchanged (input fingerprint %s); kept vectors version %s",
            input_fp[:12],
            version,
        )
        return {
            **previous,
            "samples_total": total,
            "vectors_version": version,
            "gate": f"inputs unchanged since vectors version {version}",
        }
    rejected = _rejection(conf, input_fp)
    if rejected is not None:
        log.info("%s", rejected["gate"])
        return {**rejected, "vectors_version": tables.version(vectors_path)}
    return None


@dataclass(frozen=True)
class _Trained:
    """What one training leaves for the gate and the export."""

    adaptor: HybridExpertAdaptor
    metrics: dict[str, float]  # METRICS
    drawn: dict  # train_rows, samples_total, sampled: the AdaptResult fields of the sample
    samples: pa.Table  # the drawn samples after their users' training prompts
    attributes: pa.Table
    texts: dict[Tower, EntityMatrix]  # the text embeddings trained with
    user_knowledge: pa.Table  # the sample's users' usable knowledge (where prompts ended)


def _train(conf: Config, versions: dict[str, int | None], total: int) -> _Trained:
    """Draw the samples, pair each user with a leak-free text, and train the backbone alone
    and with the co-trained adaptor on the same split, seed and epochs."""
    sample = train_sample(conf, conf.table_path("samples"), versions["samples"])
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
    texts = {
        "user": ctr.entity_matrix(trained_on, "user"),
        "item": ctr.entity_matrix(items, "item"),
    }
    data = ctr.ctr_inputs(conf, samples, attributes, conf.run.seed, texts["user"], texts["item"])
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
    return _Trained(
        adaptor=with_kar.model.adaptor.cpu(),
        metrics={
            "auc_without": without.auc,
            "auc_with": with_kar.auc,
            "logloss_without": without.logloss,
            "logloss_with": with_kar.logloss,
        },
        drawn={
            "train_rows": sample.rows.num_rows,
            "samples_total": total,
            "sampled": sample.sampled,
        },
        samples=samples,
        attributes=attributes,
        texts=texts,
        user_knowledge=user_knowledge,
    )


def _gate(conf: Config, trained: _Trained, input_fp: str) -> tuple[bool, dict]:
    """(publish?, AdaptResult's gate fields): the new vectors against the live version's,
    both frozen (adapters.gate), on the sample's samples after both prompts: the live
    vector's and the training text's. Only the sample's entities' vectors are read."""
    vectors_path = conf.table_path("vectors")
    live_version = tables.version(vectors_path)
    if live_version is None:
        return True, {"gate": "published: no live vectors version to compare with"}
    if not conf.adapt.gate.enabled:
        return True, {"gate": "published: adapt.gate.enabled is false"}
    samples, seed = trained.samples, conf.run.seed
    sample_users = pc.unique(samples.column("user_id"))
    live_users = _vector_prompts(conf, live_version, trained.user_knowledge, sample_users)
    part = knowledge.after_prompts(
        samples, live_users.column("entity_id"), live_users.column("history_end")
    )
    new = export(trained.adaptor, trained.texts)
    only = (sample_users, pc.unique(samples.column("item_id")))
    try:
        live = ctr.read_vectors(vectors_path, live_version, only=only)
        live_data = ctr.ctr_inputs(conf, part, trained.attributes, seed, *live)
        new_data = ctr.ctr_inputs(conf, part, trained.attributes, seed, new["user"], new["item"])
    except tables.SchemaError:
        raise  # broken live vectors are a failure, not a reason to publish ungated
    except InputError as e:
        # Few users were active since the live vectors' prompts: nothing fair to score.
        return True, {"gate": f"published: too few samples after the live vectors' prompts ({e})"}
    tolerance = conf.adapt.gate.tolerance
    score = gate.score(live_data, new_data, conf.adapt, seed, tolerance)
    fields: dict = {"gate_live_auc": score.live_auc, "gate_new_auc": score.new_auc}
    if not score.passed:
        fields["gate"] = (
            f"kept live vectors version {live_version}: the new vectors' held-out AUC "
            f"{score.new_auc:.4f} is {score.live_auc - score.new_auc:.4f} below the live "
            f"version's {score.live_auc:.4f} (adapt.gate.tolerance {tolerance})"
        )
    else:
        fields["gate"] = (
            f"published: held-out AUC {score.new_auc:.4f} with the new vectors vs "
            f"{score.live_auc:.4f} with live version {live_version} (adapt.gate.tolerance "
            f"{tolerance})"
        )
    return score.passed, fields


def _publish(
    conf: Config,
    trained: _Trained,
    versions: dict[str, int | None],
    run_id: str,
    input_fp: str,
) -> tuple[int, int]:
    """(vectors version, vectors written): save the adaptor, export every entity's vector
    and commit them all in one overwrite: the vectors table is one version per adapt, and a
    run killed before the commit leaves the live version as it was."""
    checkpoint = adaptor_checkpoint(conf, run_id)
    trained.adaptor.save(checkpoint, input_fingerprint=input_fp, version_id=run_id)
    parts = export_vectors(conf, trained.adaptor, versions, run_id, input_fp)
    faults.point("adapt:before-vectors")
    version = tables.commit_parts(
        conf.table_path("vectors"),
        parts,
        schemas.VECTORS,
        mode="overwrite",
        metadata={
            "run_id": run_id,
            "input_fingerprint": input_fp,
            "adaptor_checkpoint": str(checkpoint),
            **{k: repr(v) for k, v in trained.metrics.items()},
            # Provenance of the training data: how many samples, and whether sampled.
            "train_rows": str(trained.drawn["train_rows"]),
            "samples_total": str(trained.drawn["samples_total"]),
            "train_sampled": str(trained.drawn["sampled"]),
        },
    )
    return version, sum(p["rows"] for p in parts)


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
