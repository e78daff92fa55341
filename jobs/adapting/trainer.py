"""adapt's training, run in one Ray worker (jobs/plumbing/ray_data.run_task): draw the
sample, train the backbone alone and with the co-trained adaptor, gate the new vectors
against the live ones, and save the adaptor for the export.

This is the only part of adapt that needs torch: the driver that starts it coordinates
(fingerprints, commits) and never imports it, and the export's workers load the adaptor
from the checkpoint written here (`load_adaptor`) and apply it (`knowledge_vectors`).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from adapters import gate
from adapters.data import EntityMatrix
from adapters.moe import HybridExpertAdaptor, Tower
from adapters.train import train_and_evaluate
from adapters.vectors import export
from jobs.adapting import training
from jobs.plumbing import schemas, tables
from jobs.plumbing.config import Config
from jobs.plumbing.errors import InputError
from jobs.plumbing.storage import Location
from jobs.rules import ctr, knowledge, vectors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What the training worker hands back to the driver: small values only."""

    metrics: dict[str, float]  # auc_without, auc_with, logloss_without, logloss_with
    drawn: dict  # train_rows, samples_total, sampled: the AdaptResult fields of the sample
    gate: dict  # the AdaptResult gate fields (gate, gate_live_auc, gate_new_auc)
    publish: bool  # the gate passed: the adaptor is saved at the checkpoint


def train_and_gate(
    conf: Config,
    versions: dict[str, int | None],
    total: int,
    live: vectors.Snapshot | None,
    checkpoint: Location,
    checkpoint_meta: dict[str, str],
) -> Outcome:
    """Train, gate, and (when the gate passes) save the adaptor at `checkpoint`."""
    if conf.adapt.worker.torch_threads:
        torch.set_num_threads(conf.adapt.worker.torch_threads)
    trained = _train(conf, versions, total)
    publish, gate_fields = _gate(conf, live, trained)
    if publish:
        buffer = io.BytesIO()
        trained.adaptor.save(buffer, **checkpoint_meta)
        checkpoint.write_bytes(buffer.getvalue())
    return Outcome(trained.metrics, trained.drawn, gate_fields, publish)


def load_adaptor(checkpoint: Location) -> HybridExpertAdaptor:
    """The adaptor saved at `checkpoint` (in eval mode, as `load` gives it)."""
    data = checkpoint.read_bytes()
    if data is None:
        raise FileNotFoundError(f"no adaptor checkpoint at {checkpoint}")
    return HybridExpertAdaptor.load(io.BytesIO(data))


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


def knowledge_vectors(
    adaptor: HybridExpertAdaptor,
    current: pa.Table,
    version_id: str,
    input_fp: str,
    created_at: datetime,
) -> pa.Table:
    """The VECTORS rows of embedded entities (`current`: knowledge rows with their text
    embedding): each embedding through its own tower, with the knowledge it came from."""
    parts = []
    for kind, values in export(adaptor, ctr.embedding_matrices(current)).items():
        meta = current.filter(pc.equal(current.column("kind"), kind))
        parts.append(
            ctr.vector_rows(
                kind,
                values,
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
