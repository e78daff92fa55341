"""adapt: train the hybrid-expert adaptor against a backbone and publish reasoning / fact vectors.

Reads `samples`, `attributes`, `knowledge` (each entity's current answer, the
LLM that gave it, and the window its prompt covered) and `embeddings` (the text
vectors of those answers). Trains the backbone (adapt.backbone, DIN by default)
alone and with the co-trained adaptor on the same split, seed and epochs, logs
both AUCs, then runs every entity's current text through its adaptor tower.

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
import io
import json
import logging
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from adapters import gate
from adapters.data import EntityMatrix
from adapters.moe import HybridExpertAdaptor, Tower
from adapters.train import train_and_evaluate
from adapters.vectors import export
from jobs.adapting import training, vector_export
from jobs.plumbing import faults, schemas, tables
from jobs.plumbing.config import Config
from jobs.plumbing.errors import InputError, MissingTableError
from jobs.plumbing.storage import Location
from jobs.rules import ctr, knowledge, vectors

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
    config and the seed; no entity keys."""
    contents = {
        name: None if at is None else tables.content_version(conf.table_path(name), at)
        for name, at in versions.items()
    }
    payload = {
        "versions": contents,
        "samples_total": samples_total,
        "adapt": conf.adapt.model_dump(mode="json"),
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
    trained = _train(conf, versions, total)
    publish, gate_fields = _gate(conf, live, trained)
    log.log(logging.INFO if publish else logging.WARNING, "%s", gate_fields["gate"])
    result = {**trained.metrics, **gate_fields, **trained.drawn}
    if not publish:
        _remember_rejection(conf, input_fp, result)
        return AdaptResult(
            **result,
            vectors_version=None if live is None else live.version,
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
    sample = training.train_sample(conf, conf.table_path("samples"), versions["samples"])
    attributes = training.sample_attributes(conf, sample, versions["attributes"])
    items, user_rows, user_knowledge = training.sample_knowledge(conf, sample.rows, versions)
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


def _gate(conf: Config, live: vectors.Snapshot | None, trained: _Trained) -> tuple[bool, dict]:
    """(publish?, AdaptResult's gate fields): the new vectors against the live version's,
    both frozen (adapters.gate), on the sample's samples after both prompts: the live
    vector's and the training text's. Only the sample's entities' vectors are read."""
    vectors_path = conf.table_path("vectors")
    if live is None:
        return True, {"gate": "published: no live vectors version to compare with"}
    live_version = live.version
    if not conf.adapt.gate.enabled:
        return True, {"gate": "published: adapt.gate.enabled is false"}
    samples, seed = trained.samples, conf.run.seed
    sample_users = pc.unique(samples.column("user_id"))
    live_users = _vector_prompts(conf, live.rows_version, trained.user_knowledge, sample_users)
    part = knowledge.after_prompts(
        samples, live_users.column("entity_id"), live_users.column("history_end")
    )
    new = export(trained.adaptor, trained.texts)
    only = (sample_users, pc.unique(samples.column("item_id")))
    try:
        live_vectors = ctr.read_vectors(vectors_path, live.rows_version, only=only)
        live_data = ctr.ctr_inputs(conf, part, trained.attributes, seed, *live_vectors)
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
    buffer = io.BytesIO()
    trained.adaptor.save(buffer, input_fingerprint=input_fp, version_id=run_id)
    checkpoint.write_bytes(buffer.getvalue())
    parts = vector_export.export_vectors(conf, trained.adaptor, versions, run_id, input_fp)
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
    where = knowledge.of_entities("user", users)
    columns = ["entity_id", "fingerprint"]
    stored = tables.read_where(conf.table_path("vectors"), schemas.VECTORS, where, version, columns)
    know = know.select(["entity_id", "fingerprint", "history_end"])
    ends = stored.join(know, ["entity_id", "fingerprint"], join_type="left outer")
    unknown = pa.scalar(np.iinfo(np.int32).max, pa.int32())
    return pa.table(
        {
            "entity_id": ends.column("entity_id"),
            "history_end": pc.fill_null(ends.column("history_end"), unknown),
        }
    )


def _rejection_path(conf: Config, input_fp: str) -> Location:
    return conf.output("models", f"gate-rejected-{input_fp[:16]}.json")


def _remember_rejection(conf: Config, input_fp: str, result: dict) -> None:
    """So a rerun with the same inputs repeats the decision instead of retraining."""
    _rejection_path(conf, input_fp).write_bytes(json.dumps(result).encode())


def _rejection(conf: Config, input_fp: str) -> dict | None:
    data = _rejection_path(conf, input_fp).read_bytes()
    return None if data is None else json.loads(data)
