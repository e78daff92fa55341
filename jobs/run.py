"""The weekly KAR run: prepare -> generate -> encode -> adapt, ending in one line of JSON.

Each stage commits its own Delta table and skips work whose inputs have not
changed, so a rerun with unchanged input generates nothing and publishes no
new vectors version, and a rerun after a crash continues where it stopped.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

from jobs import adapt, encode, generate, prepare, report
from jobs.plumbing import accounting, lock, schemas, tables
from jobs.plumbing.config import Config
from jobs.rules import knowledge

log = logging.getLogger(__name__)

TABLE_NAMES = tuple(schemas.TABLES)


def _table_info(conf: Config, name: str) -> dict[str, Any]:
    path = conf.table_path(name)
    return {"path": str(path), "version": tables.version(path)}


def run(conf: Config, run_id: str | None = None) -> dict[str, Any]:
    """Run all stages and return the summary that `kar run` prints."""
    run_id = run_id or lock.new_run_id()
    started_at = datetime.now(UTC)
    # One cutoff for every stage of the run (run.as_of; now when unset).
    conf = conf.model_copy(update={"run": conf.run.model_copy(update={"as_of": conf.run.cutoff()})})
    log.info("run %s: outputs under %s", run_id, conf.run.output_dir)
    started = time.monotonic()
    prep = prepare.run(conf, run_id)
    gen = generate.run(conf, run_id)
    enc = encode.run(conf, run_id)
    ad = adapt.run(conf, run_id)
    seconds = {"prepare": prep.seconds, "encode": enc.seconds, "adapt": ad.seconds}
    seconds |= accounting.generate_seconds(gen) | {"total": time.monotonic() - started}
    # Recorded before the summary lists table versions, so `runs` shows this run's version.
    cost = accounting.record(
        conf, accounting.runs_row(conf, run_id, "run", gen, seconds, started_at)
    )
    # Read once: the summary's age figures and the report's plot.
    ages = report.knowledge_ages(conf)
    summary = {
        "run_id": run_id,
        "prompts_generated": gen.prompts_generated,
        "output_tokens": gen.output_tokens,
        "embeddings_written": enc.encoded,
        "vectors_published": not ad.skipped,
        "publish_gate": ad.gate,
        # The CTR samples adapt trained on: all of them, or a seeded adapt.max_train_rows sample.
        "adapt_samples": {"rows": ad.train_rows, "of": ad.samples_total, "sampled": ad.sampled},
        "as_of": conf.run.as_of.isoformat(),
        # Entities per refresh state (fresh/new/refreshed/stale) and the bootstrap prompts.
        "refresh": prep.refresh,
        "bootstrap_prompts": prep.bootstrap,
        # Input text cleaned at ingest: markers and invisible characters removed, values cut.
        "sanitized": prep.sanitized,
        # Documented input repairs (exact duplicates dropped, entities without interactions).
        "repairs": prep.repairs,
        "knowledge_age_days": {
            kind: knowledge.age_summary(values) for kind, values in ages.by_kind.items()
        },
        "tables": {name: _table_info(conf, name) for name in TABLE_NAMES},
        "auc_without": round(ad.auc_without, 4),
        "auc_with": round(ad.auc_with, 4),
        "logloss_without": round(ad.logloss_without, 4),
        "logloss_with": round(ad.logloss_with, 4),
        "stage_seconds": {
            "prepare": round(prep.seconds, 1),
            "generate": round(gen.seconds, 1),
            "encode": round(enc.seconds, 1),
            "adapt": round(ad.seconds, 1),
            "total": round(seconds["total"], 1),
        },
        "accounting": cost,
        "report": str(report.write(conf, run_id, ages)),
    }
    log.info("run %s done in %.0f s", run_id, summary["stage_seconds"]["total"])
    return summary
