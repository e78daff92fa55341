"""adapt: train the hybrid-expert adaptor against DIN and publish reasoning / fact vectors.

Reads `samples`, `knowledge` (each entity's current fingerprint = its latest
answer, and the LLM that gave it) and `embeddings` (the text vectors of those
answers). Trains DIN alone and DIN + adaptor on the same split, seed and epochs,
logs both AUCs, then runs every embedded entity through its adaptor tower and
overwrites `vectors` in one commit. If nothing the stage reads has changed since
the last published version, it trains nothing and writes nothing.
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
from jobs import schemas, tables
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


class InputError(DataError):
    """An upstream table is missing, empty or too small; names the stage or key that fixes it.

    A readers.DataError, so the CLI reports it as a bad input (exit 2, no traceback).
    """


def adaptor_checkpoint(conf: Config, version_id: str) -> Path:
    """Where the adaptor behind vectors version `version_id` is saved (for new entities)."""
    return conf.run.output_dir / "models" / f"adaptor-{version_id}.pt"


def _latest(table: pa.Table, keys: list[str], order: list[str]) -> pa.Table:
    """Per `keys`, the one row that sorts last by `order` (latest time, then tie-breakers)."""
    indexed = table.append_column("_row", pa.array(np.arange(table.num_rows)))
    ordered = indexed.sort_by([(c, "ascending") for c in [*keys, *order]])
    last = ordered.group_by(keys, use_threads=False).aggregate([("_row", "last")])
    return table.take(last.column("_row_last"))


def current_embeddings(conf: Config) -> pa.Table:
    """kind, entity_id, fingerprint, llm_model, encoder_model, embedding: one row per entity.

    An entity's current knowledge is its latest answer; an embedding counts only
    if it was computed from that answer (older answers' vectors are stale).
    """
    know = tables.open_table(conf.table_path("knowledge"))
    if know is None or know.to_pyarrow_table(columns=["kind"]).num_rows == 0:
        raise InputError(
            f"knowledge table at {conf.table_path('knowledge')} is missing or empty; "
            "run the generate stage first (kar generate)"
        )
    cols = ["kind", "entity_id", "fingerprint", "model_id", "generated_at"]
    latest = _latest(
        know.to_pyarrow_table(columns=cols, filters=schemas.USABLE_KNOWLEDGE),
        ["kind", "entity_id"],
        ["generated_at", "fingerprint"],
    ).select(["kind", "entity_id", "fingerprint", "model_id"])
    latest = latest.rename_columns({"model_id": "llm_model"})

    emb = tables.read(conf.table_path("embeddings"), schemas.EMBEDDINGS)
    if emb.num_rows == 0:
        raise InputError(
            f"embeddings table at {conf.table_path('embeddings')} is missing or empty; "
            "run the encode stage first (kar encode)"
        )
    keys = ["kind", "entity_id", "fingerprint"]
    # Re-encoding the same answer (e.g. a new encoder) adds a row; the newest one wins.
    newest = _latest(emb, keys, ["encoded_at", "encoder_model"]).select(
        [*keys, "encoder_model", "dim", "embedding"]
    )
    # Arrow joins cannot carry list columns: join row numbers, then take the vectors.
    slim = newest.drop_columns(["embedding"]).append_column(
        "_row", pa.array(np.arange(newest.num_rows))
    )
    joined = slim.join(latest, keys, join_type="inner").sort_by(
        [("kind", "ascending"), ("entity_id", "ascending")]
    )
    joined = joined.append_column(
        "embedding", newest.column("embedding").take(joined.column("_row"))
    ).drop_columns(["_row"])
    stale = latest.num_rows - joined.num_rows
    if stale:
        log.warning(
            "%d of %d entities have no embedding of their latest knowledge; "
            "they get no vector (run kar encode to cover them)",
            stale,
            latest.num_rows,
        )
    return joined


def _matrix(current: pa.Table, kind: Tower) -> EntityMatrix:
    rows = current.filter(pc.equal(current.column("kind"), kind))
    if rows.num_rows == 0:
        raise InputError(f"no {kind} embeddings of current knowledge; run kar generate and encode")
    dims = set(rows.column("dim").to_pylist())
    if len(dims) != 1:
        raise InputError(
            f"{kind} embeddings have mixed sizes {sorted(dims)}; re-encode every {kind} with "
            "one encoder (kar encode)"
        )
    flat = pc.list_flatten(rows.column("embedding").combine_chunks())
    values = flat.to_numpy(zero_copy_only=False).astype(np.float32).reshape(rows.num_rows, -1)
    return EntityMatrix(rows.column("entity_id").to_pylist(), values)


def input_fingerprint(conf: Config, samples_version: int, current: pa.Table) -> str:
    """Hash of everything that changes the trained adaptor: equal hash -> nothing to redo."""
    used = sorted(
        zip(
            current.column("kind").to_pylist(),
            current.column("entity_id").to_pylist(),
            current.column("fingerprint").to_pylist(),
            strict=True,
        )
    )
    payload = {
        "samples_version": samples_version,
        "entities": used,
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
    for kind in TOWERS:
        matrix = _matrix(current, kind)
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
    samples_version = tables.version(samples_path)
    samples = tables.read(samples_path, schemas.SAMPLES)
    if samples_version is None or samples.num_rows == 0:
        raise InputError(
            f"samples table at {samples_path} is missing or empty; "
            "run the prepare stage first (kar prepare)"
        )
    current = current_embeddings(conf)
    input_fp = input_fingerprint(conf, samples_version, current)
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
        )

    try:
        data = ctr_data.build(
            samples,
            history_length=conf.prepare.ctr_history_length,
            like_threshold=conf.prepare.label_threshold,
            validation_fraction=conf.adapt.validation_fraction,
            seed=conf.run.seed,
            users=_matrix(current, "user"),
            items=_matrix(current, "item"),
        )
    except ctr_data.DataError as e:
        raise InputError(str(e)) from e
    without = train_and_evaluate(data, conf.adapt, conf.run.seed, with_kar=False)
    with_kar = train_and_evaluate(data, conf.adapt, conf.run.seed, with_kar=True)
    log.info(
        "test AUC %.4f -> %.4f with KAR (%+.4f); LogLoss %.4f -> %.4f",
        without.auc,
        with_kar.auc,
        with_kar.auc - without.auc,
        without.logloss,
        with_kar.logloss,
    )

    adaptor = with_kar.model.adaptor.cpu()
    checkpoint = adaptor_checkpoint(conf, run_id)
    adaptor.save(checkpoint, input_fingerprint=input_fp, version_id=run_id)
    rows = vector_rows(adaptor, current, run_id, input_fp)
    metrics = {
        "auc_without": without.auc,
        "auc_with": with_kar.auc,
        "logloss_without": without.logloss,
        "logloss_with": with_kar.logloss,
    }
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
        vectors_version=version,
        vectors_written=rows.num_rows,
        skipped=False,
        seconds=time.monotonic() - started,
    )


if __name__ == "__main__":
    from jobs import cli

    cli.main(["adapt", *sys.argv[1:]])
