"""adapt: train the hybrid-expert adaptor against a backbone and publish reasoning / fact vectors.

Reads `samples`, `attributes`, `knowledge` (each entity's current answer, the
LLM that gave it, and the window its prompt covered) and `embeddings` (the text
vectors of those answers). Trains the backbone (adapt.backbone, DIN by default)
alone and with the co-trained adaptor on the same split, seed and epochs, logs
both AUCs, then runs every entity's current text through its adaptor tower.

Where it runs: training and the gate run in one Ray worker that reserves adapt.worker
(on a cluster, a GPU node; jobs/adapting/trainer.py); the driver reads versions and
commit metadata, starts the worker, waits, and commits, and never imports torch.

Scale: training and the gate read a bounded, seeded sample of at most
adapt.max_train_rows CTR samples and only the knowledge, embeddings, attributes and
live vectors of the sample's entities (jobs/adapting/training.py). The export of every
entity's vector is a Ray Data map over each entity's current knowledge joined with its
embedding (jobs/adapting/vector_export.py): workers write `vectors` files, the driver
commits them all in one overwrite. The sample's size is in the result and the commit
metadata.

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
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jobs.adapting import training, vector_export
from jobs.plumbing import faults, logs, schemas, tables
from jobs.plumbing.config import Config
from jobs.plumbing.errors import MissingTableError
from jobs.plumbing.ray_data import ensure_ray, run_task
from jobs.plumbing.storage import Location
from jobs.rules import vectors

if TYPE_CHECKING:
    from jobs.adapting import trainer

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


def adaptor_checkpoint(conf: Config, version_id: str) -> Location:
    """Where the adaptor behind vectors version `version_id` is saved (for new entities)."""
    return conf.output("models", f"adaptor-{version_id}.pt")


def input_fingerprint(conf: Config, versions: dict[str, int | None], samples_total: int) -> str:
    """Hash of everything that changes the trained adaptor and its vectors: equal hash ->
    nothing to redo. Bounded: the content versions of the tables read (samples, attributes,
    knowledge, embeddings: the last change of each, `tables.content_version`, so `kar
    maintain`'s compactions and `kar forget`'s erasures change nothing), how many samples
    there were (the sample's size follows from it and adapt.max_train_rows), the adapt
    config (not where it runs: adapt.worker) and the seed; no entity keys."""
    contents = {
        name: None if at is None else tables.content_version(conf.table_path(name), at)
        for name, at in versions.items()
    }
    payload = {
        "versions": contents,
        "samples_total": samples_total,
        "adapt": conf.adapt.model_dump(mode="json", exclude={"worker"}),
        "seed": conf.run.seed,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _published_metrics(live: vectors.Snapshot | None, fingerprint: str) -> dict | None:
    """The live version's metrics (and sample size) if it was built from `fingerprint`,
    else None; from the commit metadata of the publish behind it, so no vector is read."""
    commit = None if live is None else live.metadata
    if commit is None or commit.get("input_fingerprint") != fingerprint:
        return None
    values = {k: commit.get(k) for k in METRICS}
    if any(v is None for v in values.values()):
        log.warning("vectors at %s lack metrics in their last publish; retraining", live.path)
        return None
    out: dict = {k: float(v) for k, v in values.items()}
    if commit.get("train_rows") is not None:
        out |= {
            "train_rows": int(commit["train_rows"]),
            "sampled": commit["train_sampled"] == "True",
        }
    return out


def _versions(conf: Config) -> tuple[dict[str, int | None], int]:
    """(versions of the tables adapt reads, samples at the published version); an
    InputError naming the stage to run when one is missing or empty."""
    samples_path = conf.table_path("samples")
    versions = {
        n: training.published_version(conf.table_path(n)) for n in ("samples", "attributes")
    }
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
    # The live version, read once: the unchanged check, the gate and a rejection name it.
    live = vectors.latest(conf.table_path("vectors"))
    unchanged = _unchanged(conf, live, input_fp, total)
    if unchanged is not None:
        return AdaptResult(
            **unchanged, vectors_written=0, skipped=True, seconds=time.monotonic() - started
        )
    checkpoint = adaptor_checkpoint(conf, run_id)
    ensure_ray(conf.ray)
    outcome = run_task(
        _train_in_worker,
        conf,
        versions,
        total,
        live,
        checkpoint,
        {"input_fingerprint": input_fp, "version_id": run_id},
        pool=conf.adapt.worker,
        wait_s=conf.ray.unschedulable_wait_s,
    )
    log.log(logging.INFO if outcome.publish else logging.WARNING, "%s", outcome.gate["gate"])
    result = {**outcome.metrics, **outcome.gate, **outcome.drawn}
    if not outcome.publish:
        _remember_rejection(conf, input_fp, result)
        return AdaptResult(
            **result,
            vectors_version=None if live is None else live.version,
            vectors_written=0,
            skipped=True,
            seconds=time.monotonic() - started,
        )
    version, written = _publish(conf, outcome, checkpoint, versions, run_id, input_fp)
    return AdaptResult(
        **result,
        vectors_version=version,
        vectors_written=written,
        skipped=False,
        seconds=time.monotonic() - started,
    )


def _unchanged(
    conf: Config, live: vectors.Snapshot | None, input_fp: str, total: int
) -> dict | None:
    """AdaptResult fields of the last decision on these very inputs (the live version built
    from them, or the gate's rejection of them), so a rerun repeats it; None: train."""
    previous = _published_metrics(live, input_fp)
    if previous is not None:
        version = live.version
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
        return {**rejected, "vectors_version": None if live is None else live.version}
    return None


def _train_in_worker(conf: Config, *args: object) -> trainer.Outcome:
    """trainer.train_and_gate, imported in the Ray worker: the driver never loads torch."""
    from jobs.adapting import trainer

    logs.setup(conf.run.log_level)  # a Ray worker starts with Python's default logging
    return trainer.train_and_gate(conf, *args)


def _publish(
    conf: Config,
    outcome: trainer.Outcome,
    checkpoint: Location,
    versions: dict[str, int | None],
    run_id: str,
    input_fp: str,
) -> tuple[int, int]:
    """(vectors version, vectors written): export every entity's vector through the saved
    adaptor and commit them all in one overwrite: the vectors table is one version per
    adapt, and a run killed before the commit leaves the live version as it was."""
    parts = vector_export.export_vectors(conf, checkpoint, versions, run_id, input_fp)
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
            **{k: repr(v) for k, v in outcome.metrics.items()},
            # Provenance of the training data: how many samples, and whether sampled.
            "train_rows": str(outcome.drawn["train_rows"]),
            "samples_total": str(outcome.drawn["samples_total"]),
            "train_sampled": str(outcome.drawn["sampled"]),
        },
    )
    return version, sum(p["rows"] for p in parts)


def _rejection_path(conf: Config, input_fp: str) -> Location:
    return conf.output("models", f"gate-rejected-{input_fp[:16]}.json")


def _remember_rejection(conf: Config, input_fp: str, result: dict) -> None:
    """So a rerun with the same inputs repeats the decision instead of retraining."""
    _rejection_path(conf, input_fp).write_bytes(json.dumps(result).encode())


def _rejection(conf: Config, input_fp: str) -> dict | None:
    data = _rejection_path(conf, input_fp).read_bytes()
    return None if data is None else json.loads(data)
