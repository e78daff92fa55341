"""adapt: train the hybrid-expert adaptor against a backbone and publish reasoning / fact vectors.

Reads `samples`, `attributes`, `knowledge` (each entity's current answer, the
LLM that gave it, and the window its prompt covered) and `embeddings` (the text
vectors of those answers). Trains the backbone (adapt.backbone, DIN by default)
alone and with the co-trained adaptor on the same split, seed and epochs, logs
both AUCs, then runs every entity's current text through its adaptor tower.

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
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

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
from jobs.readers import DataError

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


class InputError(DataError):
    """An upstream table is missing, empty or too small; names the stage or key that fixes it.

    A readers.DataError, so the CLI reports it as a bad input (exit 2, no traceback).
    """


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


def usable_knowledge(conf: Config) -> pa.Table:
    """Every usable answer: kind, entity_id, fingerprint, llm_model, history_end (+ ORDER).

    Read once per run: the vectors' texts, the training texts and the gate's prompt
    ends all come from it.
    """
    path = conf.table_path("knowledge")
    know = knowledge.read_usable(path, ["model_id", "history_end"])
    if know.num_rows == 0:
        raise InputError(
            f"knowledge table at {path} is missing or has no usable answer; "
            "run the generate stage first (kar generate)"
        )
    return know.rename_columns(["llm_model" if c == "model_id" else c for c in know.column_names])


def embedded_knowledge(conf: Config, know: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(current, users): `know` rows (usable_knowledge) with their text embedding, one per
    entity for `current` (what vectors are exported from), every user row for `users` (what
    the adaptor may train on, jobs/knowledge.training_users).

    Columns of `know` plus encoder_model, dim, embedding. An entity's current knowledge
    is its latest usable answer; an embedding counts only if it was computed from it.
    """
    emb = tables.read(conf.table_path("embeddings"), schemas.EMBEDDINGS)
    if emb.num_rows == 0:
        raise InputError(
            f"embeddings table at {conf.table_path('embeddings')} is missing or empty; "
            "run the encode stage first (kar encode)"
        )
    keys = ["kind", "entity_id", "fingerprint"]
    # Re-encoding the same answer (e.g. a new encoder) adds a row; the newest one wins.
    newest = tables.latest_rows(emb, keys, ["encoded_at", "encoder_model"]).select(
        [*keys, "encoder_model", "dim", "embedding"]
    )

    # Arrow joins cannot carry list columns: join row numbers, then take the vectors.
    slim = newest.drop_columns(["embedding"]).append_column(
        "_row", pa.array(np.arange(newest.num_rows))
    )

    def with_embeddings(rows: pa.Table) -> pa.Table:
        joined = slim.join(rows, keys, join_type="inner").sort_by(
            [("kind", "ascending"), ("entity_id", "ascending"), ("fingerprint", "ascending")]
        )
        vectors = newest.column("embedding").take(joined.column("_row"))
        return joined.append_column("embedding", vectors).drop_columns(["_row"])

    latest = knowledge.current(know)
    current = with_embeddings(latest)
    stale = latest.num_rows - current.num_rows
    if stale:
        log.warning(
            "%d of %d entities have no embedding of their latest knowledge; "
            "they get no vector (run kar encode to cover them)",
            stale,
            latest.num_rows,
        )
    return current, with_embeddings(know.filter(pc.equal(know.column("kind"), "user")))


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
    path: Path, version: int | None = None, version_id: str | None = None
) -> tuple[EntityMatrix | None, EntityMatrix | None]:
    """(user, item) vectors stored in a VECTORS table (optionally one Delta version / version id).

    What a downstream ranker does with frozen vectors: they are read as stored,
    never recomputed. A kind the table holds no vectors of is None.
    """
    rows = tables.read(path, schemas.VECTORS, version)
    if version_id is not None:
        rows = rows.filter(pc.equal(rows.column("version_id"), version_id))
    if rows.num_rows == 0:
        raise InputError(f"no vectors (version {version}, version id {version_id}) at {path}")
    kinds = set(rows.column("kind").to_pylist())
    user, item = (entity_matrix(rows, k, "vector") if k in kinds else None for k in TOWERS)
    return user, item


def input_fingerprint(
    conf: Config,
    samples_version: int,
    attributes_version: int | None,
    current: pa.Table,
    trained_on: pa.Table,
) -> str:
    """Hash of everything that changes the trained adaptor: equal hash -> nothing to redo."""

    def keys(rows: pa.Table) -> list:
        cols = ["kind", "entity_id", "fingerprint"]
        return sorted(zip(*(rows.column(c).to_pylist() for c in cols), strict=True))

    payload = {
        "samples_version": samples_version,
        "attributes_version": attributes_version,
        "entities": keys(current),
        "trained_on": keys(trained_on),
        "encoder_models": sorted(set(current.column("encoder_model").to_pylist())),
        "adapt": conf.adapt.model_dump(mode="json"),
        "seed": conf.run.seed,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _published_metrics(path: Path, fingerprint: str) -> dict[str, float] | None:
    """The last version's metrics if its rows were built from `fingerprint`, else None."""
    table = tables.open_table(path)
    if table is None:
        return None
    stored = pc.unique(table.to_pyarrow_table(columns=["input_fingerprint"]).column(0))
    if stored.to_pylist() != [fingerprint]:
        return None
    values = {k: tables.commit_metadata(path, k) for k in METRICS}
    if any(v is None for v in values.values()):
        log.warning("vectors at %s lack metrics in their last commit; retraining", path)
        return None
    return {k: float(v) for k, v in values.items()}


def vector_rows(
    adaptor: HybridExpertAdaptor,
    current: pa.Table,
    version_id: str,
    input_fp: str,
) -> pa.Table:
    """The VECTORS rows of every embedded entity: its text embedding through its own tower."""
    adaptor.eval()
    created_at = datetime.now(UTC)
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
    return pa.concat_tables([tables.conform(p, schemas.VECTORS, "vectors") for p in parts])


def run(conf: Config, run_id: str) -> AdaptResult:
    started = time.monotonic()
    samples_path, vectors_path = conf.table_path("samples"), conf.table_path("vectors")
    # The versions the last completed prepare published (a killed prepare's are not).
    samples, samples_version = tables.read_published(samples_path, schemas.SAMPLES, "prepare")
    if samples_version is None or samples.num_rows == 0:
        raise InputError(
            f"samples table at {samples_path} is missing or empty; "
            "run the prepare stage first (kar prepare)"
        )
    attributes_path = conf.table_path("attributes")
    attributes, attributes_version = tables.read_published(
        attributes_path, schemas.ATTRIBUTES, "prepare"
    )
    if attributes.num_rows == 0:
        log.warning(
            "no attributes table at %s: backbones see ids and history only "
            "(rerun kar prepare to write it)",
            attributes_path,
        )
    know = usable_knowledge(conf)
    current, user_rows = embedded_knowledge(conf, know)
    # No leakage: each user's text is trained only against samples after its prompt.
    trained_on = knowledge.training_users(samples, user_rows)
    if trained_on.num_rows == 0:
        raise InputError(
            "no user knowledge ended before any of its user's CTR samples, so the adaptor has "
            "no leak-free text to train on; keep refresh.bootstrap_users unset (or > 0) so "
            "users get KAR's-cut prompts, and rerun kar prepare, generate and encode"
        )
    samples = knowledge.after_prompts(
        samples, trained_on.column("entity_id"), trained_on.column("history_end")
    )
    log.info(
        "adapt: %d users' texts against the %d samples after their prompts (no sample inside "
        "its prompt); %d entities to export",
        trained_on.num_rows,
        samples.num_rows,
        current.num_rows,
    )
    input_fp = input_fingerprint(conf, samples_version, attributes_version, current, trained_on)
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

    def build(part: pa.Table, users: EntityMatrix, items: EntityMatrix) -> ctr_data.CTRData:
        return ctr_inputs(conf, part, attributes, conf.run.seed, users, items)

    data = build(samples, entity_matrix(trained_on, "user"), entity_matrix(current, "item"))
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
    rows = vector_rows(adaptor, current, run_id, input_fp)
    live_version = tables.version(vectors_path)
    gate: dict = {"gate": "published: no live vectors version to compare with"}
    if live_version is not None and conf.adapt.gate.enabled:
        seed = conf.run.seed
        # Scored on samples after both prompts: the live vector's and the training text's.
        live_users = _vector_prompts(conf, live_version, know)
        part = knowledge.after_prompts(
            samples, live_users.column("entity_id"), live_users.column("history_end")
        )
        new_users = vector_rows(adaptor, trained_on, run_id, input_fp)
        try:
            live_data = build(part, *read_vectors(vectors_path, live_version))
            new_data = build(
                part,
                entity_matrix(new_users, "user", "vector"),
                entity_matrix(rows, "item", "vector"),
            )
        except InputError as e:
            # Few users were active since the live vectors' prompts: nothing fair to score.
            gate["gate"] = f"published: too few samples after the live vectors' prompts ({e})"
        else:
            live = train_and_evaluate(live_data, conf.adapt, seed, "frozen")
            new = train_and_evaluate(new_data, conf.adapt, seed, "frozen")
            gate = _gate(conf, live_version, live.auc, new.auc)
        if gate["gate"].startswith("kept"):
            log.warning("%s", gate["gate"])
            _remember_rejection(conf, input_fp, {**metrics, **gate})
            return AdaptResult(
                **metrics,
                **gate,
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
    faults.point("adapt:before-vectors")
    version = tables.overwrite(
        vectors_path,
        rows,
        schemas.VECTORS,
        metadata={
            "run_id": run_id,
            "input_fingerprint": input_fp,
            "adaptor_checkpoint": str(checkpoint),
            **{k: repr(v) for k, v in metrics.items()},
        },
    )
    return AdaptResult(
        **metrics,
        **gate,
        vectors_version=version,
        vectors_written=rows.num_rows,
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


def _vector_prompts(conf: Config, version: int, know: pa.Table) -> pa.Table:
    """entity_id, history_end: where the prompt behind each user vector of `version` ended,
    from `know` (usable_knowledge).

    A vector whose knowledge row is gone or predates the window columns gets an end
    past every sample, so the gate never scores it on a sample its prompt may hold.
    """
    stored = tables.open_table(conf.table_path("vectors"), version)
    users = stored.to_pyarrow_table(
        columns=["entity_id", "fingerprint"], filters=[("kind", "=", "user")]
    )
    know = know.filter(pc.equal(know.column("kind"), "user")).select(
        ["entity_id", "fingerprint", "history_end"]
    )
    ends = users.join(know, ["entity_id", "fingerprint"], join_type="left outer")
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
