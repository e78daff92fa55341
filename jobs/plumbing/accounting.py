"""Accounting: one row per run and command in the `runs` Delta table, and the JSON it prints.

`kar run` writes one row for the whole run; stages run apart (an orchestrator's tasks,
sharing one --run-id) write one row each, which the run report adds up. Generation is
where the GPU-hours go, so its row records what it asked
(prompts, requests incl. retries, tokens), how fast (output tokens/s, seconds
per stage), what came back (statuses), and what it would cost on the cluster:
output tokens / generate.cluster_tokens_per_gpu_s, in hours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from jobs.plumbing import tables
from jobs.plumbing.config import Config
from jobs.plumbing.schemas import RUNS

KEYS = ["run_id", "command"]


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


def gpu_hours(output_tokens: int, tokens_per_gpu_s: float) -> float:
    return output_tokens / tokens_per_gpu_s / 3600


def runs_row(
    conf: Config,
    run_id: str,
    command: str,
    gen: GenerateResult | None,
    stage_seconds: dict[str, float],
    started_at: datetime,
) -> dict[str, Any]:
    """The `runs` row of one run (or of one stage of it), as plain values; `gen`: what
    generation did, None for a stage that asks no LLM."""
    throughput = conf.generate.cluster_tokens_per_gpu_s
    gen = gen or GenerateResult(0, 0, 0, 0, 0.0, None)
    return {
        "run_id": run_id,
        "command": command,
        "started_at": started_at,
        "finished_at": datetime.now(UTC),
        "engine": conf.llm.engine,
        "model_id": conf.llm.model,
        "prompts": gen.prompts_total,
        "prompts_generated": gen.prompts_generated,
        "requests": gen.requests,
        "input_tokens": gen.input_tokens,
        "output_tokens": gen.output_tokens,
        "output_tokens_per_s": round(gen.output_tokens_per_s, 2),
        "stage_seconds": {k: round(v, 2) for k, v in stage_seconds.items()},
        "statuses": gen.statuses,
        "unusable": gen.unusable,
        "history_truncated": gen.history_truncated,
        "cluster_tokens_per_gpu_s": throughput,
        "gpu_hours": gpu_hours(gen.output_tokens, throughput),
    }


def record(conf: Config, row: dict[str, Any]) -> dict[str, Any]:
    """Append `row` to `runs` (once per run id and command) and return it JSON-ready."""
    # Arrow map columns take (key, value) pairs.
    maps = {k: list(row[k].items()) for k in ("stage_seconds", "statuses")}
    data = pa.Table.from_pylist([{**row, **maps}], schema=RUNS)
    tables.insert_new(
        conf.table_path("runs"), data, RUNS, keys=KEYS, metadata={"run_id": row["run_id"]}
    )
    return {
        **row,
        "started_at": row["started_at"].isoformat(),
        "finished_at": row["finished_at"].isoformat(),
    }


def generate_seconds(gen: GenerateResult) -> dict[str, float]:
    """The generate stage's own split: engine start, generation, the rest (reads, commits)."""
    return {
        "generate_engine_start": gen.engine_start_seconds,
        "generate_llm": gen.generate_seconds,
        "generate": gen.seconds,
    }
