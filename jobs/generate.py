"""Generate stage: ask the LLM every pending prompt, commit answers to `knowledge` as they land.

Pending = rows of the `prompts` table (only entities whose inputs changed)
whose (kind, entity_id, fingerprint) is not in `knowledge` yet, so a rerun
after a crash only asks what is missing. Batches go to a Ray actor pool, one
engine per actor; the driver MERGEs results into Delta in chunks, so a crash
loses at most one chunk and no key is ever written twice.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import ray

from jobs import tables
from jobs.actors import actor_pool, ensure_ray, map_unordered
from jobs.config import Config, ConfigError, LLMConf
from jobs.llm import Generation, build_engine, resolve_model
from jobs.llm.model import BUNDLED_PREFIX
from jobs.schemas import KNOWLEDGE, PROMPTS

log = logging.getLogger(__name__)

KEYS = ["kind", "entity_id", "fingerprint"]
# Commit to Delta once this many answers are buffered (and at the end): few commits, small loss.
COMMIT_ROWS = 256

# Columns copied from the prompt row into its knowledge row.
_FROM_PROMPT = [
    "kind",
    "entity_id",
    "fingerprint",
    "prompt",
    "context",
    "model_id",
    "factor_version",
    "template_version",
]


@dataclass
class GenerateResult:
    prompts_total: int
    prompts_generated: int
    input_tokens: int
    output_tokens: int
    seconds: float
    knowledge_version: int | None


class GenerationWorker:
    """One Ray actor = one loaded engine; it answers batches of prompts."""

    def __init__(self, llm: LLMConf, cache_dir: Path, threads: int | None) -> None:
        self.engine = build_engine(llm, resolve_model(llm.model, cache_dir), threads)

    def generate(self, batch: tuple[int, list[str]]) -> tuple[int, list[Generation]]:
        batch_id, prompts = batch
        return batch_id, self.engine.generate(prompts)


def pending_prompts(conf: Config) -> tuple[int, pa.Table]:
    """(rows in the prompts table, the de-duplicated prompts not yet answered), sorted for batching.

    Sorted by kind then prompt length so each batch pads little.
    """
    prompts_path = conf.table_path("prompts")
    if tables.open_table(prompts_path) is None:
        raise FileNotFoundError(
            f"no prompts table at {prompts_path}; run `kar prepare` with the same config first"
        )
    prompts = tables.read(prompts_path, PROMPTS)
    total = prompts.num_rows
    indexed = prompts.append_column("_row", pa.array(range(total), pa.int64()))
    first = indexed.group_by(KEYS).aggregate([("_row", "min")]).column("_row_min")
    prompts = indexed.take(first)
    known = tables.open_table(conf.table_path("knowledge"))
    if known is not None:
        key_schema = pa.schema([KNOWLEDGE.field(k) for k in KEYS])
        done = tables.conform(
            pa.table(known.to_pyarrow_table(columns=KEYS)), key_schema, "knowledge"
        )
        prompts = prompts.join(done, keys=KEYS, join_type="left anti")
    prompts = prompts.append_column("_len", pc.utf8_length(prompts.column("prompt")))
    prompts = prompts.sort_by([("kind", "ascending"), ("_len", "ascending"), ("_row", "ascending")])
    return total, prompts.drop_columns(["_row", "_len"])


def _check_model(pending: pa.Table, llm: LLMConf) -> None:
    models = set(pc.unique(pending.column("model_id")).to_pylist())
    if models - {llm.model}:
        raise ConfigError(
            f"the prompts table was prepared for llm.model {sorted(models)} but this config has "
            f"llm.model={llm.model!r}; run `kar prepare` with this config first, or set llm.model "
            f"back so the knowledge rows' model_id matches the model that answered"
        )


def _engine_conf(llm: LLMConf) -> LLMConf:
    """Absolute local model path: Ray workers need not share the driver's working directory."""
    if llm.model.startswith(BUNDLED_PREFIX) or not Path(llm.model).exists():
        return llm
    return llm.model_copy(update={"model": str(Path(llm.model).resolve())})


def _knowledge_rows(rows: pa.Table, gens: list[Generation], run_id: str) -> pa.Table:
    n = len(gens)
    columns = {name: rows.column(name) for name in _FROM_PROMPT}
    columns |= {
        "text": pa.array([g.text for g in gens], pa.string()),
        "input_tokens": pa.array([g.input_tokens for g in gens], pa.int32()),
        "output_tokens": pa.array([g.output_tokens for g in gens], pa.int32()),
        "finish_reason": pa.array([g.finish_reason for g in gens], pa.string()),
        "run_id": pa.array([run_id] * n, pa.string()),
        "generated_at": pa.array([datetime.now(UTC)] * n, KNOWLEDGE.field("generated_at").type),
    }
    return pa.table(columns)


def _answers(conf: Config, pending: pa.Table) -> Iterator[tuple[pa.Table, list[Generation]]]:
    """(prompt rows, their generations) per batch, as the actor pool finishes them."""
    size = conf.llm.batch_size
    starts = list(range(0, pending.num_rows, size))
    texts = pending.column("prompt").to_pylist()
    ensure_ray(conf.ray)
    pool = actor_pool(
        GenerationWorker,
        conf.generate,
        _engine_conf(conf.llm),
        conf.run.cache_dir.resolve(),
        conf.generate.torch_threads,
    )
    try:
        results = map_unordered(
            pool,
            lambda actor, batch: actor.generate.remote(batch),
            ((i, texts[start : start + size]) for i, start in enumerate(starts)),
            total=len(starts),
            desc="generate",
        )
        for batch_id, gens in results:
            rows = pending.slice(starts[batch_id], len(gens))
            yield rows, gens
    finally:
        # Free the CPUs/GPUs now: the encode stage's actors need them next.
        while (actor := pool.pop_idle()) is not None:
            ray.kill(actor)


def run(conf: Config, run_id: str, commit_rows: int = COMMIT_ROWS) -> GenerateResult:
    """Answer every pending prompt and MERGE the answers into `knowledge` in chunks."""
    started = time.monotonic()
    knowledge_path = conf.table_path("knowledge")
    total, pending = pending_prompts(conf)
    log.info("generate: %d prompts in table, %d pending", total, pending.num_rows)
    if pending.num_rows == 0:
        return GenerateResult(
            total, 0, 0, 0, time.monotonic() - started, tables.version(knowledge_path)
        )
    _check_model(pending, conf.llm)

    buffer: list[pa.Table] = []
    buffered = done = tokens_in = tokens_out = 0
    version: int | None = None

    def flush() -> None:
        nonlocal buffered, version
        chunk = pa.concat_tables(buffer)
        version = tables.insert_new(
            knowledge_path, chunk, KNOWLEDGE, keys=KEYS, metadata={"run_id": run_id}
        )
        log.info("knowledge: committed %d answers (version %d)", chunk.num_rows, version)
        buffer.clear()
        buffered = 0

    for rows, gens in _answers(conf, pending):
        buffer.append(_knowledge_rows(rows, gens, run_id))
        buffered += len(gens)
        done += len(gens)
        tokens_in += sum(g.input_tokens for g in gens)
        tokens_out += sum(g.output_tokens for g in gens)
        if buffered >= commit_rows:
            flush()
    if buffer:
        flush()

    seconds = time.monotonic() - started
    log.info(
        "generate: %d prompts, %d input / %d output tokens in %.1f s (%.1f output tokens/s)",
        done,
        tokens_in,
        tokens_out,
        seconds,
        tokens_out / seconds,
    )
    return GenerateResult(total, done, tokens_in, tokens_out, seconds, version)


if __name__ == "__main__":
    from jobs import cli

    cli.main(["generate", *sys.argv[1:]])
