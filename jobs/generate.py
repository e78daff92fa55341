"""Generate stage: ask the LLM every pending prompt, commit answers to `knowledge` as they land.

Pending = rows of the `prompts` table (only entities whose inputs changed)
whose (kind, entity_id, fingerprint) is not in `knowledge` yet, so a rerun
after a crash only asks what is missing. Work is cut into batches by a token
budget and pulled by a Ray actor pool, one engine per actor; each answer is
checked (jobs/llm/checks.py) and a bad one is asked again with a new seed.
The driver MERGEs results into Delta in chunks, so a crash loses at most the
chunks in flight and no key is ever written twice. An answer that stays bad
is stored with usable=false: readers skip it and the entity keeps its
previous knowledge.

Backfills answer a slice of the pending prompts: `--kind`, `--ids-file` and
`--since` (entities with an interaction at or after a date, per `samples`).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from datetime import time as dtime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from jobs import knowledge, tables
from jobs.actors import ActorStage
from jobs.config import Config, ConfigError, GenerateConf, LLMConf, Status
from jobs.llm import Engine, Generation, build_engine, resolve_model
from jobs.llm.checks import NEVER_USABLE, AnswerChecks
from jobs.llm.model import BUNDLED_PREFIX
from jobs.schemas import KINDS, KNOWLEDGE, PROMPTS, SAMPLES

log = logging.getLogger(__name__)

KEYS = knowledge.KEYS
# Batch sizing estimate (the driver does not tokenize): English text runs ~4 characters a token.
CHARS_PER_TOKEN = 4

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
    "window",
    "as_of",
    "history_end",
    "settings",
]


@dataclass(frozen=True)
class Selection:
    """A backfill's slice of the pending prompts; the default selects all of them."""

    kind: str | None = None  # "user" | "item"
    ids: frozenset[str] | None = None
    since: datetime | None = None

    def describe(self) -> str:
        parts = [f"kind={self.kind}"] if self.kind else []
        parts += [f"{len(self.ids)} ids"] if self.ids is not None else []
        parts += [f"since {self.since:%Y-%m-%d}"] if self.since else []
        return ", ".join(parts) or "all"


@dataclass
class GenerateResult:
    prompts_total: int
    prompts_generated: int
    # Tokens of every LLM request, retries included (what the run cost).
    input_tokens: int
    output_tokens: int
    seconds: float
    knowledge_version: int | None
    requests: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    unusable: int = 0
    history_truncated: int = 0
    # Seconds to start the engines, and of generation proper (first batch sent to last commit).
    engine_start_seconds: float = 0.0
    generate_seconds: float = 0.0

    @property
    def output_tokens_per_s(self) -> float:
        return self.output_tokens / self.generate_seconds if self.generate_seconds else 0.0


@dataclass(frozen=True)
class Answer:
    """One prompt's final answer after retries, with what all its attempts cost."""

    generation: Generation
    status: Status
    attempts: int
    usable: bool
    input_tokens: int
    output_tokens: int


def answer(
    engine: Engine, checks: AnswerChecks, prompts: list[str], llm: LLMConf, gen: GenerateConf
) -> list[Answer]:
    """Generate, check, and re-ask bad answers with a new seed up to gen.max_attempts in all."""
    gens = engine.generate(prompts)
    statuses = checks.statuses(gens, prompts)
    attempts = [1] * len(prompts)
    spent_in = [g.input_tokens for g in gens]
    spent_out = [g.output_tokens for g in gens]
    retry = set(gen.retry_statuses)
    # Greedy decoding would give the same answer again: retries sample.
    temperature = llm.temperature if llm.temperature > 0 else gen.retry_temperature
    for attempt in range(1, gen.max_attempts):
        todo = [i for i, s in enumerate(statuses) if s in retry]
        if not todo:
            break
        again = engine.generate(
            [prompts[i] for i in todo], seed=llm.seed + attempt, temperature=temperature
        )
        for i, g in zip(todo, again, strict=True):
            gens[i], statuses[i] = g, checks.status(g, prompts[i])
            attempts[i] += 1
            spent_in[i] += g.input_tokens
            spent_out[i] += g.output_tokens
    return [
        Answer(g, s, a, s not in retry and s not in NEVER_USABLE, i, o)
        for g, s, a, i, o in zip(gens, statuses, attempts, spent_in, spent_out, strict=True)
    ]


class GenerationWorker:
    """One Ray actor = one loaded engine; it answers batches of prompts."""

    def __init__(self, llm: LLMConf, gen: GenerateConf, cache_dir: Path) -> None:
        self.llm, self.gen = llm, gen
        if llm.engine == "vllm":
            # Ray sets OMP_NUM_THREADS to the actor's CPUs. vLLM pins its own OpenMP threads
            # to cores and, given that variable, keeps that many torch threads on them: on CPU
            # hosts they spin against each other (bench/generation.py: 0.81 of a bare engine).
            os.environ.pop("OMP_NUM_THREADS", None)
        self.engine = build_engine(llm, resolve_model(llm.model, cache_dir), gen.torch_threads)
        self.checks = AnswerChecks.from_conf(gen)

    def generate(self, prompts: list[str]) -> list[Answer]:
        return answer(self.engine, self.checks, prompts, self.llm, self.gen)


def read_ids_file(path: Path) -> frozenset[str]:
    """Entity ids, one per line; blank lines and `#` comments are skipped."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError as e:
        raise FileNotFoundError(f"--ids-file {path} does not exist") from e
    ids = frozenset(s for line in lines if (s := line.split("#", 1)[0].strip()))
    if not ids:
        raise ConfigError(f"--ids-file {path} lists no ids (expected one entity id per line)")
    return ids


def _active_since(conf: Config, kind: str, since: datetime) -> pa.Array:
    """Ids of users (or items) with an interaction at or after `since`, per the samples table."""
    samples = tables.read(conf.table_path("samples"), SAMPLES)
    if samples.num_rows == 0:
        raise FileNotFoundError(
            f"--since needs the samples table at {conf.table_path('samples')}; "
            f"run `kar prepare` with the same config first"
        )
    recent = samples.filter(pc.greater_equal(samples.column("timestamp"), int(since.timestamp())))
    return pc.unique(recent.column(f"{kind}_id"))


def _select(conf: Config, prompts: pa.Table, sel: Selection) -> pa.Table:
    if sel.kind is not None:
        prompts = prompts.filter(pc.equal(prompts.column("kind"), sel.kind))
    if sel.ids is not None:
        prompts = prompts.filter(pc.is_in(prompts.column("entity_id"), pa.array(sorted(sel.ids))))
    if sel.since is not None:
        keep = [
            pc.and_(
                pc.equal(prompts.column("kind"), kind),
                pc.is_in(prompts.column("entity_id"), _active_since(conf, kind, sel.since)),
            )
            for kind in KINDS
        ]
        prompts = prompts.filter(pc.or_(*keep))
    return prompts


def pending_prompts(conf: Config, selection: Selection = Selection()) -> tuple[int, pa.Table]:
    """(selected rows of the prompts table, the de-duplicated ones not yet answered), sorted.

    Sorted by kind then prompt length so each batch pads little.
    """
    prompts_path = conf.table_path("prompts")
    if tables.open_table(prompts_path) is None:
        raise FileNotFoundError(
            f"no prompts table at {prompts_path}; run `kar prepare` with the same config first"
        )
    published, _ = tables.read_published(prompts_path, PROMPTS, "prepare")
    prompts = _select(conf, published, selection)
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


def token_batches(prompts: list[str], budget: int, max_new_tokens: int) -> list[tuple[int, int]]:
    """(start, stop) row ranges whose estimated prompt + answer tokens fit `budget` each.

    Equal work per batch, not equal prompt counts: an actor pulling a batch of long
    prompts does not hold far more work than one pulling short ones. A prompt
    larger than the budget gets a batch of its own.
    """
    ranges: list[tuple[int, int]] = []
    start, used = 0, 0
    for i, text in enumerate(prompts):
        cost = math.ceil(len(text) / CHARS_PER_TOKEN) + max_new_tokens
        if i > start and used + cost > budget:
            ranges.append((start, i))
            start, used = i, 0
        used += cost
    if start < len(prompts):
        ranges.append((start, len(prompts)))
    return ranges


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


def _knowledge_rows(rows: pa.Table, answers: list[Answer], run_id: str) -> pa.Table:
    n = len(answers)
    gens = [a.generation for a in answers]
    columns = {name: rows.column(name) for name in _FROM_PROMPT}
    columns |= {
        "text": pa.array([g.text for g in gens], pa.string()),
        "input_tokens": pa.array([g.input_tokens for g in gens], pa.int32()),
        "output_tokens": pa.array([g.output_tokens for g in gens], pa.int32()),
        "finish_reason": pa.array([g.finish_reason for g in gens], pa.string()),
        "status": pa.array([a.status for a in answers], pa.string()),
        "attempts": pa.array([a.attempts for a in answers], pa.int32()),
        "usable": pa.array([a.usable for a in answers], pa.bool_()),
        "history_dropped": pa.array([g.history_dropped for g in gens], pa.int32()),
        "run_id": pa.array([run_id] * n, pa.string()),
        "generated_at": pa.array([datetime.now(UTC)] * n, KNOWLEDGE.field("generated_at").type),
    }
    return pa.table(columns)


def _answers(
    conf: Config, pending: pa.Table, result: GenerateResult
) -> Iterator[tuple[pa.Table, list[Answer]]]:
    """(prompt rows, their answers) per batch, as the actors finish them."""
    texts = pending.column("prompt").to_pylist()
    ranges = token_batches(texts, conf.generate.batch_tokens, conf.llm.max_new_tokens)
    engine_conf, cache_dir = _engine_conf(conf.llm), conf.run.cache_dir.resolve()
    with ActorStage(
        conf.ray, GenerationWorker, conf.generate, engine_conf, conf.generate, cache_dir
    ) as stage:
        result.engine_start_seconds = stage.start_seconds
        log.info(
            "generate: %d engine(s) ready in %.1f s; %d batches of <= %d tokens",
            len(stage.actors),
            stage.start_seconds,
            len(ranges),
            conf.generate.batch_tokens,
        )
        started = time.monotonic()
        for a, b, answers in stage.map_ranges(
            lambda actor, batch: actor.generate.remote(batch),
            texts,
            ranges,
            in_flight=conf.generate.batches_in_flight,
            desc="generate",
        ):
            yield pending.slice(a, b - a), answers
        result.generate_seconds = time.monotonic() - started


def run(conf: Config, run_id: str, selection: Selection = Selection()) -> GenerateResult:
    """Answer every pending (selected) prompt and MERGE the answers into `knowledge` in chunks."""
    started = time.monotonic()
    knowledge_path = conf.table_path("knowledge")
    total, pending = pending_prompts(conf, selection)
    log.info(
        "generate (%s): %d prompts selected, %d pending",
        selection.describe(),
        total,
        pending.num_rows,
    )
    result = GenerateResult(total, 0, 0, 0, 0.0, tables.version(knowledge_path))
    if pending.num_rows == 0:
        result.seconds = time.monotonic() - started
        return result
    _check_model(pending, conf.llm)

    buffer: list[pa.Table] = []
    statuses: Counter[str] = Counter()

    def flush() -> None:
        chunk = pa.concat_tables(buffer)
        result.knowledge_version = tables.insert_new(
            knowledge_path, chunk, KNOWLEDGE, keys=KEYS, metadata={"run_id": run_id}
        )
        log.info(
            "knowledge: committed %d answers (version %d)",
            chunk.num_rows,
            result.knowledge_version,
        )
        buffer.clear()

    for rows, answers in _answers(conf, pending, result):
        buffer.append(_knowledge_rows(rows, answers, run_id))
        result.prompts_generated += len(answers)
        result.requests += sum(a.attempts for a in answers)
        result.input_tokens += sum(a.input_tokens for a in answers)
        result.output_tokens += sum(a.output_tokens for a in answers)
        result.unusable += sum(not a.usable for a in answers)
        result.history_truncated += sum(a.generation.history_dropped > 0 for a in answers)
        statuses.update(a.status for a in answers)
        if sum(t.num_rows for t in buffer) >= conf.generate.commit_rows:
            flush()
    if buffer:
        # Generation time runs until the last answer is committed.
        flushed = time.monotonic()
        flush()
        result.generate_seconds += time.monotonic() - flushed

    result.statuses = dict(sorted(statuses.items()))
    result.seconds = time.monotonic() - started
    log.info(
        "generate: %d prompts (%d requests), %d input / %d output tokens, %.1f output tokens/s; "
        "statuses %s, %d unusable, %d shortened to fit the context",
        result.prompts_generated,
        result.requests,
        result.input_tokens,
        result.output_tokens,
        result.output_tokens_per_s,
        result.statuses,
        result.unusable,
        result.history_truncated,
    )
    if result.unusable:
        log.warning(
            "generate: %d answers stayed bad after %d attempts; stored with usable=false, "
            "so those entities keep their previous knowledge",
            result.unusable,
            conf.generate.max_attempts,
        )
    return result


def add_backfill_args(parser: argparse.ArgumentParser) -> None:
    """`kar generate` options that answer only a slice of the pending prompts."""
    parser.add_argument(
        "--kind", choices=["users", "items"], default=None, help="only users' or items' prompts"
    )
    parser.add_argument(
        "--ids-file", type=Path, default=None, help="only these entity ids (one per line)"
    )
    parser.add_argument(
        "--since",
        type=date.fromisoformat,
        default=None,
        metavar="YYYY-MM-DD",
        help="only entities with an interaction on or after this day (UTC), per `samples`",
    )


def run_command(conf: Config, args: argparse.Namespace, run_id: str) -> dict[str, Any]:
    """`kar generate`: run the stage on the selected slice, record it in `runs`, return both."""
    from jobs import accounting

    selection = Selection(
        kind=args.kind and args.kind.removesuffix("s"),
        ids=read_ids_file(args.ids_file) if args.ids_file else None,
        since=datetime.combine(args.since, dtime(), UTC) if args.since else None,
    )
    started_at = datetime.now(UTC)
    result = run(conf, run_id, selection)
    row = accounting.runs_row(
        conf, run_id, "generate", result, accounting.generate_seconds(result), started_at
    )
    return {**asdict(result), "accounting": accounting.record(conf, row)}


if __name__ == "__main__":
    from jobs import cli

    cli.main(["generate", *sys.argv[1:]])
