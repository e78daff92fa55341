"""Run report: what one run did and how the published vectors moved, as markdown + PNGs.

Built only from the tables (runs, knowledge, vectors), so `kar run` writes it at
the end and `kar report` rebuilds it for a run whose stages ran as separate
jobs (Airflow). It lands beside the tables in
`<run.output_dir>/reports/<run_id>/`:

- report.md
- stage_seconds.png  seconds per stage
- tokens.png         input/output tokens per answer generated in this run
- statuses.png       answer-check statuses of this run's answers
- knowledge_age.png  age of each entity's live knowledge at the run's cutoff (run.as_of)
- norms.png          L2 norms of the live vectors
- drift.png          cosine between each entity's vector in the live and the previous
                     version, for entities whose knowledge is unchanged vs. changed

Drift reads: unchanged entities should stay near 1 (the adaptor was retrained, the
text was not); low cosine there means the adaptor, not the LLM, moved the vectors.

One process, by design, on bounded reads: this run's rows of `runs` and
`knowledge` (a filter on run_id: one run's work), and for the per-entity figures
(knowledge ages, norms, drift) a seeded sample of at most about
`report.max_entities` entities (knowledge.entity_sample), the same entities in the
live and the previous vectors version. Tables smaller than that are read whole.

    kar report --conf conf/local.yaml [--run-id ID]
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.plumbing import schemas, tables
from jobs.plumbing.config import Config
from jobs.plumbing.errors import InputError
from jobs.plumbing.storage import Location
from jobs.rules import knowledge, vectors

log = logging.getLogger(__name__)

PLOTS = ("stage_seconds", "tokens", "statuses", "knowledge_age", "norms", "drift")


@dataclass
class Drift:
    """Cosine of each entity's live vector with its previous one, split by knowledge change."""

    previous_version: int | None
    # kind -> "unchanged"/"changed" -> cosines
    cosines: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    note: str = ""


def _run_row(conf: Config, run_id: str | None) -> dict[str, Any]:
    """The run's `runs` rows as one: `kar run` writes one row, stages run apart (sharing
    --run-id) one each; their seconds, tokens and statuses add up. Default: the latest run."""
    runs = tables.read(conf.table_path("runs"), schemas.RUNS)
    if run_id is None and runs.num_rows:
        run_id = runs.sort_by([("finished_at", "ascending")])["run_id"][-1].as_py()
    rows = runs.filter(pc.equal(runs.column("run_id"), run_id)) if run_id else runs
    if rows.num_rows == 0:
        which = f"run {run_id!r}" if run_id else "any run"
        raise InputError(
            f"no record of {which} in {conf.table_path('runs')}; run the job first "
            "(kar run, or kar generate) or pass a --run-id listed there"
        )
    parts = rows.sort_by([("finished_at", "ascending")]).to_pylist()
    run = dict(parts[-1])
    run["started_at"] = min(p["started_at"] for p in parts)
    run["command"] = ", ".join(dict.fromkeys(p["command"] for p in parts))
    run["stage_seconds"], run["statuses"] = {}, {}
    for part in parts:
        run["stage_seconds"] |= dict(part["stage_seconds"])
        for status, n in part["statuses"]:
            run["statuses"][status] = run["statuses"].get(status, 0) + n
    added = ("prompts", "prompts_generated", "requests", "input_tokens", "output_tokens")
    for key in (*added, "unusable", "history_truncated", "gpu_hours"):
        run[key] = sum(p[key] for p in parts)
    run["output_tokens_per_s"] = max(p["output_tokens_per_s"] for p in parts)  # generate's
    return run


def _run_answers(conf: Config, run_id: str) -> pa.Table:
    """kind, status and token counts of the answers this run generated."""
    columns = ["kind", "status", "input_tokens", "output_tokens"]
    table = tables.open_table(conf.table_path("knowledge"))
    if table is None:
        return schemas.KNOWLEDGE.empty_table().select(columns)
    return table.to_pyarrow_table(columns=columns, filters=[("run_id", "=", run_id)])


def _by_entity(rows: pa.Table) -> dict[tuple[str, str], tuple[str, np.ndarray]]:
    return {
        (r["kind"], r["entity_id"]): (r["fingerprint"], np.asarray(r["vector"], np.float32))
        for r in rows.select(["kind", "entity_id", "fingerprint", "vector"]).to_pylist()
    }


def sample(conf: Config, snapshot: vectors.Snapshot) -> pa.Table:
    """The vectors of that version for the report's seeded sample of entities."""
    return knowledge.entity_sample(
        snapshot.path,
        schemas.VECTORS,
        conf.report.max_entities,
        conf.run.seed,
        snapshot.rows_version,
    )


def drift(conf: Config, live: vectors.Snapshot, live_rows: pa.Table) -> Drift:
    """Cosines between the live version (`live_rows`, its sample read once by the caller)
    and the previous one, for the sampled entities present in both."""
    before = vectors.previous(live)
    if before is None:
        return Drift(None, note="first published version: nothing to compare with")
    old, new = _by_entity(sample(conf, before)), _by_entity(live_rows)
    cosines: dict[str, dict[str, list[float]]] = {}
    for (kind, entity_id), (fingerprint, vec) in new.items():
        if (kind, entity_id) not in old:
            continue
        old_fp, old_vec = old[kind, entity_id]
        if old_vec.shape != vec.shape:
            return Drift(before.version, note="vector size changed: versions are not comparable")
        norm = float(np.linalg.norm(vec) * np.linalg.norm(old_vec)) or 1.0
        group = "unchanged" if fingerprint == old_fp else "changed"
        cosines.setdefault(kind, {}).setdefault(group, []).append(float(vec @ old_vec) / norm)
    arrays = {k: {g: np.asarray(v) for g, v in groups.items()} for k, groups in cosines.items()}
    return Drift(before.version, arrays, "" if arrays else "no entity is in both versions")


def _norms(rows: pa.Table) -> dict[str, np.ndarray]:
    out = {}
    for kind in schemas.KINDS:
        part = rows.filter(pc.equal(rows.column("kind"), kind)).column("vector").to_pylist()
        if part:
            out[kind] = np.linalg.norm(np.asarray(part, np.float32), axis=1)
    return out


@dataclass
class Ages:
    """Age in days of each (sampled) entity's live knowledge at the run's data cutoff."""

    as_of: datetime
    by_kind: dict[str, np.ndarray]
    # report.max_entities when the knowledge table outgrew it and a sample was read.
    sample_limit: int | None = None


def knowledge_ages(conf: Config) -> Ages:
    """Ages at the cutoff the last prepare recorded (now, for tables of older releases)."""
    record = tables.last_record(conf.table_path("stages"), "prepare") or {}
    as_of = record.get("as_of") or datetime.now(UTC)
    path, limit = conf.table_path("knowledge"), conf.report.max_entities
    ages = knowledge.live_ages(path, as_of, limit, conf.run.seed)
    return Ages(as_of, ages, limit if tables.count(path) > limit else None)


def _plots(
    folder: Path,
    run: dict[str, Any],
    answers: pa.Table,
    ages: Ages,
    norms: dict[str, np.ndarray],
    d: Drift,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(folder / f"{name}.png", dpi=100)
        plt.close(fig)

    def empty(ax: Any, text: str) -> None:
        ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()

    stages = {k: v for k, v in run["stage_seconds"].items() if k != "total"}
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(stages) + 1.5))
    names = list(stages)[::-1]
    ax.barh(names, [stages[n] for n in names], color="tab:blue")
    for i, n in enumerate(names):
        ax.text(stages[n], i, f" {stages[n]:.1f}", va="center", fontsize=8)
    total = run["stage_seconds"].get("total")
    ax.set_xlabel("seconds")
    ax.set_title(f"Seconds per stage (total {total:.0f} s)" if total else "Seconds per stage")
    save(fig, "stage_seconds")

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, column in zip(axes, ("input_tokens", "output_tokens"), strict=True):
        if answers.num_rows == 0:
            empty(ax, "no answers generated in this run")
            continue
        for kind in schemas.KINDS:
            part = answers.filter(pc.equal(answers.column("kind"), kind)).column(column)
            if len(part):
                ax.hist(part.to_numpy(), bins=30, alpha=0.6, label=f"{kind}s ({len(part)})")
        ax.set_xlabel(f"{column.replace('_', ' ')} per answer")
        ax.set_ylabel("answers")
        ax.legend(fontsize=8)
    fig.suptitle(f"Tokens: {run['input_tokens']:,} in, {run['output_tokens']:,} out (all requests)")
    save(fig, "tokens")

    fig, ax = plt.subplots(figsize=(7, 3.5))
    if answers.num_rows == 0:
        empty(ax, "no answers generated in this run")
    else:
        counts = answers.group_by(["kind", "status"]).aggregate([("status", "count")]).to_pylist()
        statuses = sorted({c["status"] for c in counts})
        x = np.arange(len(statuses))
        for i, kind in enumerate(schemas.KINDS):
            n = {c["status"]: c["status_count"] for c in counts if c["kind"] == kind}
            ax.bar(x + (i - 0.5) * 0.4, [n.get(s, 0) for s in statuses], 0.4, label=f"{kind}s")
        ax.set_xticks(x, statuses)
        ax.set_ylabel("answers kept")
        ax.legend(fontsize=8)
    ax.set_title(f"Answer statuses ({run['unusable']} unusable after retries)")
    save(fig, "statuses")

    fig, ax = plt.subplots(figsize=(7, 3.5))
    if not any(v.size for v in ages.by_kind.values()):
        empty(ax, "no live knowledge with a recorded cutoff")
    else:
        top = max(float(v.max()) for v in ages.by_kind.values() if v.size)
        bins = np.linspace(0, max(top, 1.0), 30)
        for kind, values in ages.by_kind.items():
            if values.size:
                ax.hist(values, bins=bins, alpha=0.6, label=f"{kind}s ({values.size})")
        ax.set_xlabel("days between the knowledge's data cutoff and this run's")
        ax.set_ylabel("entities")
        ax.legend(fontsize=8)
    ax.set_title(f"Age of live knowledge at {ages.as_of:%Y-%m-%d %H:%M} UTC")
    save(fig, "knowledge_age")

    fig, ax = plt.subplots(figsize=(7, 3.5))
    if not norms:
        empty(ax, "no vectors published yet")
    for kind, values in norms.items():
        ax.hist(values, bins=30, alpha=0.6, label=f"{kind}s ({len(values)})")
    if norms:
        ax.set_xlabel("L2 norm of the live vector")
        ax.set_ylabel("entities")
        ax.legend(fontsize=8)
    ax.set_title("Vector norms")
    save(fig, "norms")

    fig, ax = plt.subplots(figsize=(7, 3.5))
    groups = [(k, g, v) for k, gs in sorted(d.cosines.items()) for g, v in sorted(gs.items())]
    if not groups:
        empty(ax, d.note or "no entity is in both versions")
    else:
        ax.boxplot([v for _, _, v in groups], vert=False)
        ax.set_yticks(
            range(1, len(groups) + 1), [f"{k}s, {g} text (n={len(v)})" for k, g, v in groups]
        )
        ax.set_xlabel(f"cosine(live vector, version {d.previous_version} vector)")
        ax.axvline(1.0, color="grey", linewidth=0.8)
    ax.set_title("Drift against the previous published version")
    save(fig, "drift")


def _markdown(
    run: dict[str, Any],
    ages: Ages,
    live: vectors.Snapshot | None,
    norms: dict[str, np.ndarray],
    d: Drift,
) -> str:
    lines = [
        f"# KAR run report: {run['run_id']}",
        "",
        f"`kar {run['command']}`, {run['started_at']:%Y-%m-%d %H:%M:%S} to "
        f"{run['finished_at']:%H:%M:%S} UTC; engine {run['engine']}, model `{run['model_id']}`.",
        "",
        "## Stages",
        "",
        "| stage | seconds |",
        "|---|---|",
        *(f"| {k} | {v:.1f} |" for k, v in run["stage_seconds"].items()),
        "",
        "![seconds per stage](stage_seconds.png)",
        "",
        "## Generation",
        "",
        f"{run['prompts_generated']} of {run['prompts']} pending prompts answered with "
        f"{run['requests']} LLM requests; {run['input_tokens']:,} input and "
        f"{run['output_tokens']:,} output tokens ({run['output_tokens_per_s']:.1f} output "
        f"tokens/s); {run['unusable']} answers unusable after retries; "
        f"{run['history_truncated']} prompts lost history to fit the context; "
        f"{run['gpu_hours']:.4f} GPU-hours at {run['cluster_tokens_per_gpu_s']:.0f} tokens/s "
        "per GPU.",
        "",
        "| status | answers |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in sorted(run["statuses"].items())),
        "",
        "![tokens](tokens.png)",
        "",
        "![statuses](statuses.png)",
        "",
        "## Knowledge age",
        "",
        f"Days between each entity's live knowledge and the run's data cutoff "
        f"{ages.as_of:%Y-%m-%d %H:%M} UTC (run.as_of): what the refresh policy left stale."
        + (
            f" A seeded sample of at most about {ages.sample_limit} entities (report.max_entities)."
            if ages.sample_limit
            else ""
        ),
        "",
        "| kind | entities | median | p90 | max |",
        "|---|---|---|---|---|",
        *(
            f"| {k} | {s['entities']} | {s.get('p50', '-')} | {s.get('p90', '-')} | "
            f"{s.get('max', '-')} |"
            for k, s in ((k, knowledge.age_summary(v)) for k, v in ages.by_kind.items())
        ),
        "",
        "![knowledge age](knowledge_age.png)",
        "",
        "## Vectors",
        "",
    ]
    if live is None:
        lines += ["No vectors published yet.", ""]
    else:
        lines += [
            f"Live version {live.version}, committed {live.committed_at:%Y-%m-%d %H:%M:%S} UTC.",
            "",
            "| kind | entities | mean norm | p5 | p95 |",
            "|---|---|---|---|---|",
            *(
                f"| {k} | {len(v)} | {v.mean():.3f} | {np.percentile(v, 5):.3f} | "
                f"{np.percentile(v, 95):.3f} |"
                for k, v in norms.items()
            ),
            "",
            "![norms](norms.png)",
            "",
        ]
    lines += ["## Drift against the previous version", ""]
    if d.note:
        lines += [d.note[0].upper() + d.note[1:] + ".", ""]
    if d.cosines:
        lines += [
            f"Cosine between each entity's vector in version {live.version if live else '?'} "
            f"and version {d.previous_version}; knowledge unchanged = same LLM answer.",
            "",
            "| kind | knowledge | entities | mean cosine | p5 |",
            "|---|---|---|---|---|",
            *(
                f"| {k} | {g} | {len(v)} | {v.mean():.3f} | {np.percentile(v, 5):.3f} |"
                for k, gs in sorted(d.cosines.items())
                for g, v in sorted(gs.items())
            ),
            "",
        ]
    lines += ["![drift](drift.png)", ""]
    return "\n".join(lines)


def folder(conf: Config, run_id: str) -> Location:
    return conf.output("reports", run_id)


def write(conf: Config, run_id: str | None = None, ages: Ages | None = None) -> Location:
    """Build the report of `run_id` (default: the latest run) and return its report.md.

    `ages`: the live knowledge's ages when the caller has read them (knowledge_ages).
    Drawn in node-local scratch, then copied to the output location with report.md last,
    so a reader who opens report.md finds its plots in place.
    """
    run = _run_row(conf, run_id)
    answers = _run_answers(conf, run["run_id"])
    live = None
    if tables.open_table(conf.table_path("vectors")) is not None:
        live = vectors.resolve(conf.table_path("vectors"))
    if live is None:
        norms, d = {}, Drift(None, note="no vectors published yet")
    else:
        rows = sample(conf, live)
        norms, d = _norms(rows), drift(conf, live, rows)
    ages = ages or knowledge_ages(conf)
    target = folder(conf, run["run_id"])
    with tempfile.TemporaryDirectory(prefix="kar-report-") as scratch:
        _plots(Path(scratch), run, answers, ages, norms, d)
        target.upload(Path(scratch))
    (target / "report.md").write_bytes(_markdown(run, ages, live, norms, d).encode())
    log.info("run report: %s", target / "report.md")
    return target / "report.md"
