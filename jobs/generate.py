"""Generate stage: ask the LLM every pending prompt, commit answers to `knowledge` as they land.

Pending = rows of the `prompts` table (only entities whose inputs changed)
whose (kind, entity_id, fingerprint) is not in `knowledge` yet, so a rerun
after a crash only asks what is missing. The pending set is a Ray Dataset
(a distributed anti-join) streamed through a Ray Data actor pool, one engine
per actor; each answer is checked (jobs/llm/checks.py) and a bad one is asked
again with a new seed. Actors write their answers as Parquet parts of the
`knowledge` table and the driver commits those files in chunks, so no answer
passes through the driver, a crash loses at most the parts not committed yet,
and no key is ever committed twice. An answer that stays bad is stored with
usable=false: readers skip it and the entity keeps its previous knowledge.

Backfills answer a slice of the pending prompts: `--kind`, `--ids-file` and
`--since` (entities with an interaction at or after a date, per `samples`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime
from datetime import time as dtime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.data

from jobs.llm import Engine, Generation
from jobs.llm.checks import NEVER_USABLE, AnswerChecks
from jobs.llm.config import Status
from jobs.plumbing import tables
from jobs.plumbing.accounting import GenerateResult
from jobs.plumbing.config import Config, ConfigError, GenerateConf, LLMConf
from jobs.plumbing.errors import InputError, MissingTableError
from jobs.plumbing.models import BUNDLED_PREFIX, load_engine
from jobs.plumbing.ray_data import actor_pool, blocks, ensure_ray, outputs
from jobs.plumbing.schemas import KINDS, KNOWLEDGE, PROMPTS, SAMPLES
from jobs.plumbing.storage import Location
from jobs.rules import knowledge

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
    """A Ray Data actor: one loaded engine; each call answers one block of prompt rows and
    writes their knowledge rows as one Parquet part of the `knowledge` table.

    Returns one row per part (tables.PART plus what the answers cost), so no answer
    passes through the driver. Within a block, prompts are sorted by length and cut by
    the token budget, so each engine call pads little.
    """

    def __init__(
        self, llm: LLMConf, gen: GenerateConf, cache_dir: Path, path: Location, run_id: str
    ) -> None:
        started = time.monotonic()
        self.llm, self.gen, self.path, self.run_id = llm, gen, path, run_id
        if llm.engine == "vllm":
            # Ray sets OMP_NUM_THREADS to the actor's CPUs. vLLM pins its own OpenMP threads
            # to cores and, given that variable, keeps that many torch threads on them: on CPU
            # hosts they spin against each other (bench/generation.py: 0.81 of a bare engine).
            os.environ.pop("OMP_NUM_THREADS", None)
        self.engine = load_engine(llm, cache_dir, gen.torch_threads)
        self.checks = AnswerChecks.from_conf(gen)
        self.load_seconds = time.monotonic() - started
        self.ready_at = time.time()  # wall clock: comparable across actors and the driver

    def __call__(self, rows: pa.Table) -> pa.Table:
        started = time.monotonic()
        rows = rows.take(pc.sort_indices(pc.utf8_length(rows.column("prompt"))))
        texts = rows.column("prompt").to_pylist()
        answers: list[Answer] = []
        for a, b in token_batches(texts, self.gen.batch_tokens, self.llm.max_new_tokens):
            answers += answer(self.engine, self.checks, texts[a:b], self.llm, self.gen)
        part = tables.write_part(self.path, _knowledge_rows(rows, answers, self.run_id), KNOWLEDGE)
        statuses = Counter(a.status for a in answers)
        return pa.Table.from_pylist(
            [
                part
                | {
                    "requests": sum(a.attempts for a in answers),
                    "input_tokens": sum(a.input_tokens for a in answers),
                    "output_tokens": sum(a.output_tokens for a in answers),
                    "unusable": sum(not a.usable for a in answers),
                    "truncated": sum(a.generation.history_dropped > 0 for a in answers),
                    "statuses": json.dumps(statuses),
                    "load_seconds": self.load_seconds,
                    "ready_at": self.ready_at,
                    "busy_seconds": time.monotonic() - started,
                }
            ]
        )


def read_ids_file(path: Path) -> frozenset[str]:
    """Entity ids, one per line; blank lines and `#` comments are skipped."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise InputError(f"--ids-file {path} does not exist") from None
    ids = frozenset(s for line in lines if (s := line.split("#", 1)[0].strip()))
    if not ids:
        raise InputError(f"--ids-file {path} lists no ids (expected one entity id per line)")
    return ids


def _active_since(conf: Config, since: datetime) -> ray.data.Dataset:
    """(kind, entity_id) of users and items with an interaction at or after `since`,
    per the samples table (streamed; may repeat)."""
    path = conf.table_path("samples")
    if tables.open_table(path) is None:
        raise MissingTableError(
            f"--since needs the samples table at {path}; "
            f"run `kar prepare` with the same config first"
        )
    ensure_ray(conf.ray)  # a Ray Dataset: the samples table grows with interactions
    recent = pc.field("timestamp") >= int(since.timestamp())
    samples = tables.dataset(path, SAMPLES, columns=["user_id", "item_id"], where=recent)

    def entities(batch: pa.Table) -> pa.Table:
        return pa.concat_tables(
            pa.table(
                {
                    "kind": pa.array([kind] * batch.num_rows, pa.string()),
                    "entity_id": batch.column(f"{kind}_id").cast(pa.string()),
                }
            )
            for kind in KINDS
        )

    return samples.map_batches(entities, batch_format="pyarrow")


def _select(rows: pa.Table, sel: Selection) -> pa.Table:
    """The rows of one batch that `sel`'s kind and ids allow (`--since` joins, below)."""
    if sel.kind is not None:
        rows = rows.filter(pc.equal(rows.column("kind"), sel.kind))
    if sel.ids is not None:
        rows = rows.filter(pc.is_in(rows.column("entity_id"), pa.array(sorted(sel.ids))))
    return rows


def pending_prompts(
    conf: Config, selection: Selection = Selection()
) -> tuple[int, pa.Table | ray.data.Dataset]:
    """(selected rows of the prompts table, those not yet answered); (0, none) when the
    last prepare found no prompt due.

    Pending = no `knowledge` row has the prompt's (kind, entity_id, fingerprint). Prompts
    are read at the version the last completed prepare published. When both tables are
    small (ray.local_rows) this is an Arrow anti-join here, so a no-change rerun needs no
    Ray at all; otherwise a Ray Dataset (a distributed anti-join that workers stream).
    """
    prompts_path = conf.table_path("prompts")
    if tables.open_table(prompts_path) is None:
        raise MissingTableError(
            f"no prompts table at {prompts_path}; run `kar prepare` with the same config first"
        )
    record = tables.last_record(conf.table_path("stages"), "prepare")
    if record is not None and record.get("prompts_due") == 0:
        # The queue prepare kept is all answered: nothing to read, no Ray to start.
        return 0, PROMPTS.empty_table()
    version = tables.pinned(conf.table_path("stages"), "prepare", "prompts")
    knowledge_path = conf.table_path("knowledge")
    total = tables.count(prompts_path, version)
    if total + tables.count(knowledge_path) <= conf.ray.local_rows:
        prompts = _select(tables.read(prompts_path, PROMPTS, version), selection)
        if selection.since is not None:
            # Ray Data may hand back empty blocks without columns: only rows are concatenated.
            refs = _active_since(conf, selection.since).to_arrow_refs()
            found = [block for block in ray.get(refs) if block.num_rows]
            active = (
                pa.concat_tables(found)
                if found
                else pa.table(
                    {"kind": pa.array([], pa.string()), "entity_id": pa.array([], pa.string())}
                )
            )
            prompts = prompts.join(active, knowledge.ENTITY, join_type="left semi")
        total = prompts.num_rows
        # One answer per key even if the table repeats a prompt (prepare writes each once:
        # the stream path relies on that).
        indexed = prompts.append_column("_row", pa.array(range(total), pa.int64()))
        first = indexed.group_by(KEYS, use_threads=False).aggregate([("_row", "min")])
        prompts = prompts.take(first.column("_row_min"))
        done = knowledge.read_keys(knowledge_path)
        return total, prompts.join(done, keys=KEYS, join_type="left anti")
    ensure_ray(conf.ray)
    prompts = tables.dataset(prompts_path, PROMPTS, version)
    if selection != Selection():
        prompts = prompts.map_batches(_select, fn_args=(selection,), batch_format="pyarrow")
        if selection.since is not None:
            active = _active_since(conf, selection.since)
            prompts = prompts.join(active, "left_semi", knowledge.partitions(), on=knowledge.ENTITY)
        prompts = prompts.materialize()  # the selected slice, held by Ray, counted once
        total = prompts.count()
    if total == 0 or tables.open_table(knowledge_path) is None:
        return total, prompts
    done = tables.dataset(knowledge_path, KNOWLEDGE, columns=KEYS)
    return total, knowledge.without(prompts, done, KEYS)


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


def _by_length(rows: pa.Table) -> pa.Table:
    """Rows sorted by kind, then prompt length: each engine batch pads its prompts to its
    longest, and a block mixing short item prompts with long user prompts pads the most.

    The stream path cannot afford this global sort (a shuffle); its actors sort each block.
    """
    order = pc.sort_indices(
        pa.table({"kind": rows.column("kind"), "chars": pc.utf8_length(rows.column("prompt"))}),
        sort_keys=[("kind", "ascending"), ("chars", "ascending")],
    )
    return rows.take(order)


def _check_model(models: set[str], llm: LLMConf) -> None:
    """The pending prompts were prepared for this config's model."""
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


def run(conf: Config, run_id: str, selection: Selection = Selection()) -> GenerateResult:
    """Answer every pending (selected) prompt; commit the parts the actors write in chunks.

    A crash loses at most the parts not committed yet; a rerun asks only what is missing.
    """
    started = time.monotonic()
    knowledge_path = conf.table_path("knowledge")
    total, pending = pending_prompts(conf, selection)
    result = GenerateResult(total, 0, 0, 0, 0.0, tables.version(knowledge_path))
    if isinstance(pending, pa.Table):
        log.info(
            "generate (%s): %d prompts selected, %d pending",
            selection.describe(),
            total,
            pending.num_rows,
        )
        if pending.num_rows == 0:
            result.seconds = time.monotonic() - started
            return result
        _check_model(set(pc.unique(pending.column("model_id")).to_pylist()), conf.llm)
        ensure_ray(conf.ray)
        pending = blocks(_by_length(pending), conf.generate.commit_rows)
    else:
        log.info("generate (%s): %d prompts selected", selection.describe(), total)
        if total == 0:
            result.seconds = time.monotonic() - started
            return result
        # Distinct models of the pending stream: a bounded aggregate.
        _check_model(set(pending.unique("model_id")), conf.llm)
        pending = pending.repartition(target_num_rows_per_block=conf.generate.commit_rows)
    tables.evolve(knowledge_path, KNOWLEDGE)

    committer = tables.PartCommitter(
        knowledge_path,
        KNOWLEDGE,
        conf.generate.commit_rows,
        metadata={"run_id": run_id},
        after=lambda v: log.info("knowledge: committed answers (version %d)", v),
    )
    gen = conf.generate
    # `pending` comes in blocks of commit_rows prompts (above): a task's output reaches the
    # driver when the task ends, so each task is one commit's worth (and a kill's loss).
    parts = pending.map_batches(
        GenerationWorker,
        fn_constructor_args=(
            _engine_conf(conf.llm),
            gen,
            conf.run.cache_dir.resolve(),
            knowledge_path,
            run_id,
        ),
        batch_size=None,  # one call per block: one Parquet part per commit's worth
        batch_format="pyarrow",
        **actor_pool(gen, in_flight=gen.batches_in_flight),
    )
    statuses: Counter[str] = Counter()
    loads: list[float] = []
    ready: list[float] = []
    for batch in outputs(parts, gen, conf.ray.unschedulable_wait_s):
        for row in batch.to_pylist():
            committer.add(row)
            result.prompts_generated += row["rows"]
            result.requests += row["requests"]
            result.input_tokens += row["input_tokens"]
            result.output_tokens += row["output_tokens"]
            result.unusable += row["unusable"]
            result.history_truncated += row["truncated"]
            statuses.update(json.loads(row["statuses"]))
            loads.append(row["load_seconds"])
            ready.append(row["ready_at"])
    committer.flush()
    result.knowledge_version = committer.version
    result.engine_start_seconds = max(loads, default=0.0)
    # Generation proper: from the first engine ready to the last answer committed.
    result.generate_seconds = max(time.time() - min(ready, default=time.time()), 1e-9)
    result.seconds = time.monotonic() - started
    result.statuses = dict(sorted(statuses.items()))
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


def selection_of(args: argparse.Namespace) -> Selection:
    """The slice `kar generate`'s backfill options (add_backfill_args) select."""
    return Selection(
        kind=args.kind and args.kind.removesuffix("s"),
        ids=read_ids_file(args.ids_file) if args.ids_file else None,
        since=datetime.combine(args.since, dtime(), UTC) if args.since else None,
    )
