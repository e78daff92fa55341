"""Generate stage on a real Delta prompts table, a real Ray actor pool and the real tiny LLM."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest
from suite_paths import ROOT
from table_rows import (
    knowledge_row,
    knowledge_table,
    prompt_row,
    prompts_table,
    sample_row,
    table_of,
)

from factors import prompts as templates
from factors.sets import load
from jobs import generate
from jobs.plumbing import tables
from jobs.plumbing.config import Config, ConfigError
from jobs.plumbing.errors import ClusterError, MissingTableError
from jobs.plumbing.schemas import KNOWLEDGE, PROMPTS, SAMPLES

OVERRIDES = [
    "llm.max_new_tokens=12",
    "llm.batch_size=2",
    "generate.commit_rows=3",
    "generate.num_actors=1",
    "generate.cpus_per_actor=2",
    "generate.torch_threads=2",
]
MODEL = "bundled:smollm2-135m-instruct"
KEYS = ["kind", "entity_id", "fingerprint"]
PROVENANCE = ["prompt", "context", "model_id", "factor_version", "template_version"]


def _prompt_rows(run_id: str = "prep-1") -> pa.Table:
    """Six prompts as prepare writes them: three users and three items of different lengths."""
    fs = load("movies")
    rows = []
    users = {
        "1": [("Toy Story (1995)", 5.0)],
        "2": [("Heat (1995)", 4.0), ("Casino (1995)", 3.0)],
        "3": [("Babe (1995)", 2.0), ("Fargo (1996)", 5.0), ("Scream (1996)", 4.0)],
    }
    for uid, history in users.items():
        context = templates.user_context(fs, history, {"age": "30", "gender": "F"})
        rows.append(("user", uid, templates.user_prompt(fs, context), context))
    for iid, title in {
        "10": "Jumanji (1995)",
        "11": "GoldenEye (1995)",
        "12": "Fargo (1996)",
    }.items():
        context = templates.item_context(fs, title)
        rows.append(("item", iid, templates.item_prompt(fs, context), context))
    return prompts_table(
        _prompt(kind, eid, prompt, context, f"fp-{kind}-{eid}", run_id=run_id)
        for kind, eid, prompt, context in rows
    )


def _prompt(kind: str, eid: str, prompt: str, context: str, fingerprint: str, **columns) -> dict:
    """A prompts row for the bundled model, movies factors and this template version."""
    return prompt_row(
        kind,
        eid,
        prompt=prompt,
        context=context,
        fingerprint=fingerprint,
        model_id=MODEL,
        factor_version=load("movies").version,
        template_version=templates.TEMPLATE_VERSION,
        created_at=datetime.now(UTC),
        **columns,
    )


def _keys(table: pa.Table) -> list[tuple[str, str, str]]:
    return list(zip(*(table.column(k).to_pylist() for k in KEYS), strict=True))


@pytest.fixture
def conf(make_config) -> Config:
    return make_config(*OVERRIDES)


def test_generate_writes_knowledge_with_provenance_then_reruns_as_noop(
    conf: Config, ray_local: None
) -> None:
    prompts = _prompt_rows()
    tables.overwrite(conf.table_path("prompts"), prompts, PROMPTS)

    result = generate.run(conf, "run-a")

    assert (result.prompts_total, result.prompts_generated) == (6, 6)
    knowledge = tables.read(conf.table_path("knowledge"), KNOWLEDGE)
    assert knowledge.num_rows == 6
    assert sorted(_keys(knowledge)) == sorted(_keys(prompts))
    by_key = {k: i for i, k in enumerate(_keys(prompts))}
    for row in knowledge.to_pylist():
        src = prompts.slice(by_key[(row["kind"], row["entity_id"], row["fingerprint"])], 1)
        for col in PROVENANCE:
            assert row[col] == src.column(col)[0].as_py(), col
        assert row["text"].strip()
        assert row["run_id"] == "run-a"
        assert row["input_tokens"] > 50  # the instruction alone is longer than that
        assert 1 <= row["output_tokens"] <= 12
        assert row["finish_reason"] in {"stop", "length"}
        # local.yaml does not retry cut answers, so each prompt is asked once.
        assert row["status"] in {"ok", "length"} and row["attempts"] == 1 and row["usable"]
        assert row["history_dropped"] == 0
        assert row["generated_at"] is not None
    assert result.input_tokens == sum(knowledge.column("input_tokens").to_pylist())
    assert result.output_tokens == sum(knowledge.column("output_tokens").to_pylist())
    assert result.requests == 6 and result.unusable == 0
    assert sum(result.statuses.values()) == 6
    assert result.generate_seconds > 0 and result.engine_start_seconds > 0
    # 6 answers in two full blocks of 3: one commit per block (versions 0, 1) whichever block
    # ends first (tasks may end out of order), not one per engine call of 2 prompts.
    assert result.knowledge_version == tables.version(conf.table_path("knowledge")) == 1
    assert tables.commit_metadata(conf.table_path("knowledge"), "run_id") == "run-a"

    # Nothing pending: no Ray, no write. Run in a fresh process to see that Ray never starts.
    script = (
        "import json, sys, ray; from jobs import generate; "
        "from jobs.plumbing.config import load_config;"
        "conf = load_config(sys.argv[1], json.loads(sys.argv[2]));"
        "r = generate.run(conf, 'run-b');"
        "print(json.dumps([r.prompts_generated, r.knowledge_version, ray.is_initialized()]))"
    )
    overrides = [f"run.output_dir={conf.run.output_dir}", f"run.cache_dir={conf.run.cache_dir}"]
    out = subprocess.run(
        [sys.executable, "-c", script, str(ROOT / "conf" / "local.yaml"), json.dumps(overrides)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [0, 1, False]
    assert tables.version(conf.table_path("knowledge")) == 1


def test_generate_after_partial_run_does_only_missing_prompts(
    conf: Config, ray_local: None
) -> None:
    prompts = _prompt_rows()
    # prepare may repeat an entity; it must still be answered once.
    prompts = pa.concat_tables([prompts, prompts.slice(5, 1)])
    tables.overwrite(conf.table_path("prompts"), prompts, PROMPTS)
    # A crashed earlier run committed the answers of the first three prompts.
    done = prompts.slice(0, 3)
    seeded = _seed_knowledge(
        done, "run-crashed", datetime.now(UTC), finish_reason="length", status="length"
    )
    tables.insert_new(conf.table_path("knowledge"), seeded, KNOWLEDGE, keys=KEYS)

    result = generate.run(conf, "run-resume")

    assert (result.prompts_total, result.prompts_generated) == (7, 3)
    knowledge = tables.read(conf.table_path("knowledge"), KNOWLEDGE)
    counts = Counter(_keys(knowledge))
    assert len(counts) == 6 and max(counts.values()) == 1
    runs = dict(zip(_keys(knowledge), knowledge.column("run_id").to_pylist(), strict=True))
    assert {k for k, r in runs.items() if r == "run-crashed"} == set(_keys(done))
    assert {k for k, r in runs.items() if r == "run-resume"} == set(_keys(prompts.slice(3, 3)))
    # Three new answers, one block of 3: one commit.
    assert result.knowledge_version == 1


def test_generate_refuses_prompts_prepared_for_another_model(make_config) -> None:
    conf = make_config(*OVERRIDES)
    tables.overwrite(conf.table_path("prompts"), _prompt_rows(), PROMPTS)
    other = make_config(*OVERRIDES, f"llm.model={conf.run.cache_dir / 'models' / 'x'}")
    with pytest.raises(ConfigError, match="run `kar prepare` with this config"):
        generate.run(other, "run-x")
    assert tables.version(conf.table_path("knowledge")) is None


def test_generate_without_prompts_table_says_to_prepare(conf: Config) -> None:
    with pytest.raises(MissingTableError, match="run `kar prepare`"):
        generate.run(conf, "run-y")


def _seed_knowledge(rows: pa.Table, run_id: str, at: datetime, **columns: object) -> pa.Table:
    """Answers an earlier run committed for these prompts."""
    return knowledge_table(
        knowledge_row(**r, text="earlier answer", input_tokens=100, output_tokens=12)
        | {"run_id": run_id, "generated_at": at, **columns}
        for r in rows.select(KEYS + PROVENANCE).to_pylist()
    )


def test_answers_still_bad_after_retries_are_unusable_and_old_knowledge_stays_current(
    make_config, ray_local: None
) -> None:
    # 12 new tokens cut every KAR answer ("length"); retried once, sampled, still cut.
    conf = make_config(*OVERRIDES, "generate.retry_statuses=[length]", "generate.max_attempts=2")
    prompts = _prompt_rows()
    tables.overwrite(conf.table_path("prompts"), prompts, PROMPTS)
    # Item 10 has a good answer from an earlier week (its inputs changed since).
    old = prompts.slice(3, 1)
    old = old.set_column(
        old.schema.get_field_index("fingerprint"), "fingerprint", pa.array(["fp-item-10-old"])
    )
    old_at = datetime(2026, 1, 5, tzinfo=UTC)
    tables.insert_new(
        conf.table_path("knowledge"), _seed_knowledge(old, "week-1", old_at), KNOWLEDGE, KEYS
    )

    result = generate.run(conf, "run-bad")

    rows = tables.read(conf.table_path("knowledge"), KNOWLEDGE).to_pylist()
    new = [r for r in rows if r["run_id"] == "run-bad"]
    assert len(new) == 6 and result.prompts_generated == 6
    for r in new:
        # Greedy attempt 1 is always cut at 12 tokens here, so each prompt was asked twice.
        assert r["attempts"] == 2
        assert r["usable"] == (r["status"] != "length")
        assert r["text"]  # the bad answer is kept as a record
    assert result.unusable == sum(not r["usable"] for r in new) >= 4
    assert result.requests == 12
    assert result.statuses.get("length", 0) == result.unusable
    # Accounting counts both attempts; each knowledge row holds only the kept answer's tokens.
    assert result.output_tokens > sum(r["output_tokens"] for r in new)

    # Readers of current knowledge skip unusable rows: item 10 keeps its earlier answer.
    from jobs.encode import pending_inputs

    current = set(_keys(pending_inputs(conf)))
    assert not next(r["usable"] for r in new if r["entity_id"] == "10")
    assert ("item", "10", "fp-item-10-old") in current
    unusable = {(r["kind"], r["entity_id"], r["fingerprint"]) for r in new if not r["usable"]}
    assert not current & unusable


# Item titles for the kill tests: enough one-prompt batches that a kill lands midway.
TITLES = [
    "Toy Story (1995)", "GoldenEye (1995)", "Four Rooms (1995)", "Get Shorty (1995)",
    "Copycat (1995)", "Twelve Monkeys (1995)", "Babe (1995)", "Dead Man Walking (1995)",
    "Richard III (1995)", "Seven (Se7en) (1995)", "Usual Suspects, The (1995)",
    "Mighty Aphrodite (1995)", "Postino, Il (1994)", "Antonia's Line (1995)",
    "Braveheart (1995)", "Taxi Driver (1976)",
]  # fmt: skip


def _item_prompts(titles: list[str]) -> pa.Table:
    """Item prompt rows as prepare writes them, one per title."""
    fs = load("movies")
    contexts = [templates.item_context(fs, t) for t in titles]
    return prompts_table(
        _prompt("item", str(100 + i), templates.item_prompt(fs, context), context, f"fp-{i}")
        for i, context in enumerate(contexts)
    )


def _kar_generate(conf: Config, *extra: str) -> list[str]:
    kar = Path(sys.executable).with_name("kar")
    overrides = [f"run.output_dir={conf.run.output_dir}", f"run.cache_dir={conf.run.cache_dir}"]
    return [str(kar), "generate", "--conf", str(ROOT / "conf" / "local.yaml"), *overrides, *extra]


@pytest.mark.e2e
def test_kill_9_of_a_running_generate_then_rerun_generates_only_the_missing_prompts(
    make_config,
) -> None:
    extra = [*OVERRIDES, "generate.commit_rows=2", "llm.max_new_tokens=8"]
    conf = make_config(*extra)
    prompts = _item_prompts(TITLES)
    tables.overwrite(conf.table_path("prompts"), prompts, PROMPTS)
    knowledge_path = conf.table_path("knowledge")

    # A new session: the driver and the local Ray it starts can all be cleaned up afterwards.
    driver = subprocess.Popen(
        _kar_generate(conf, *extra),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while tables.version(knowledge_path) is None:
            assert driver.poll() is None, (
                f"kar generate exited ({driver.returncode}) before a commit"
            )
            assert time.monotonic() < deadline, "no knowledge commit within 240 s"
            time.sleep(0.1)
        os.kill(driver.pid, signal.SIGKILL)  # the driver, midway: a commit has landed
        assert driver.wait(timeout=30) == -signal.SIGKILL
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)  # its Ray processes, if they outlived it
        driver.wait()

    # What the killed run left is whole, schema-true, and only part of the work.
    before = tables.read(knowledge_path, KNOWLEDGE)
    survived = dict(zip(_keys(before), before.column("run_id").to_pylist(), strict=True))
    assert 2 <= before.num_rows < len(TITLES) and len(survived) == before.num_rows

    rerun = subprocess.run(
        _kar_generate(conf, *extra), cwd=ROOT, capture_output=True, text=True, check=True
    )
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])

    assert summary["prompts_total"] == len(TITLES)
    assert summary["prompts_generated"] == len(TITLES) - before.num_rows
    after = tables.read(knowledge_path, KNOWLEDGE)
    counts = Counter(_keys(after))
    assert set(counts) == set(_keys(prompts)) and max(counts.values()) == 1
    runs = dict(zip(_keys(after), after.column("run_id").to_pylist(), strict=True))
    # The killed run's answers stay as they were; the rerun answered exactly the rest.
    assert {k: runs[k] for k in survived} == survived
    assert {k for k, r in runs.items() if r not in set(survived.values())} == (
        set(_keys(prompts)) - set(survived)
    )


def _workers(actor_class: str) -> list:
    """Live Ray worker processes of this test process's Ray that run `actor_class`."""
    import psutil

    found = []
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            # A process being forked or reaped can show an empty command line: not ours (yet).
            command = proc.cmdline() if proc.status() != psutil.STATUS_ZOMBIE else []
            # Ray Data names its pool actors ray::MapWorker(MapBatches(<class>)).
            if command and command[0].startswith("ray::") and actor_class in command[0]:
                found.append(proc)
    return found


@pytest.mark.e2e
def test_kill_9_of_a_generation_actor_midway_restarts_it_and_loses_nothing(
    make_config, ray_local: None
) -> None:
    conf = make_config(*OVERRIDES, "generate.commit_rows=2", "llm.max_new_tokens=8")
    prompts = _item_prompts(TITLES)
    tables.overwrite(conf.table_path("prompts"), prompts, PROMPTS)
    knowledge_path = conf.table_path("knowledge")
    killed: list[int] = []
    restarted: list[int] = []

    def kill_the_actor_after_a_commit() -> None:
        deadline = time.monotonic() + 240
        while tables.version(knowledge_path) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        workers = _workers("GenerationWorker")
        while len(workers) != 1 and time.monotonic() < deadline:
            time.sleep(0.1)
            workers = _workers("GenerationWorker")
        [actor] = workers
        actor.kill()  # SIGKILL, mid-batch: it holds batches_in_flight batches
        killed.append(actor.pid)
        while not restarted and time.monotonic() < deadline:
            restarted.extend(p.pid for p in _workers("GenerationWorker") if p.pid != actor.pid)
            time.sleep(0.1)

    killer = threading.Thread(target=kill_the_actor_after_a_commit, daemon=True)
    killer.start()
    result = generate.run(conf, "run-actor-killed")
    killer.join(timeout=60)

    assert killed and restarted, "the actor was not killed midway and restarted"
    assert (result.prompts_total, result.prompts_generated) == (len(TITLES), len(TITLES))
    knowledge = tables.read(knowledge_path, KNOWLEDGE)
    counts = Counter(_keys(knowledge))
    assert set(counts) == set(_keys(prompts)) and max(counts.values()) == 1


def test_since_selects_the_entities_active_since_that_day(make_config, ray_local) -> None:
    """`--since`: prompts of users and items with a sample at or after the day, per `samples`
    (read as a Ray Dataset: that table grows with interactions)."""
    conf = make_config()
    rows = [prompt_row("user", u) for u in ("u1", "u2")] + [prompt_row("item", "i1")]
    tables.overwrite(conf.table_path("prompts"), prompts_table(rows), PROMPTS)
    day = datetime(2026, 11, 1, tzinfo=UTC)
    samples = [
        sample_row("u1", "i1", timestamp=int(day.timestamp()) + 60),  # on the day
        sample_row("u2", "i9", timestamp=int(day.timestamp()) - 60),  # the day before
    ]
    tables.overwrite(conf.table_path("samples"), table_of("samples", samples), SAMPLES)

    total, pending = generate.pending_prompts(conf, generate.Selection(since=day))

    kinds, ids = pending.column("kind").to_pylist(), pending.column("entity_id").to_pylist()
    got = sorted(zip(kinds, ids, strict=True))
    assert (total, got) == (2, [("item", "i1"), ("user", "u1")])


def test_a_pool_no_node_can_host_stops_after_the_configured_wait(make_config, ray_local) -> None:
    """No node ever offers the pool's resource (the GPU pool is gone): the stage stops after
    ray.unschedulable_wait_s, naming the resource, instead of waiting forever."""
    conf = make_config(
        *OVERRIDES, 'generate.resources={"no_such_pool": 1}', "ray.unschedulable_wait_s=3"
    )
    tables.overwrite(conf.table_path("prompts"), _item_prompts(TITLES[:2]), PROMPTS)
    started = time.monotonic()
    with pytest.raises(ClusterError, match="offers CPU=.*no_such_pool=1.*waited 3 s"):
        generate.run(conf, "run-nowhere")
    assert time.monotonic() - started < 120
    assert tables.version(conf.table_path("knowledge")) is None  # nothing half-written
