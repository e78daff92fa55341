"""The weekly job on a cluster whose nodes share no disk: every table on a real S3 server
(SeaweedFS, loopback), Spark on a standalone master and worker, Ray on two nodes, generate's
and encode's actors on the "model node" only (a custom resource). `kill -9` of the driver
and of a generation actor midway, then reruns: nothing lost, no key twice; forget, maintain
and publish on the same tables; the model node lost mid-generate."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cluster
import psutil
import pytest
from deltalake import DeltaTable
from object_store import SECRET_KEY
from suite_paths import CACHE, ROOT

from jobs.plumbing import schemas, storage, tables

pytestmark = pytest.mark.e2e

KAR = str(cluster.BIN / "kar")
KEYS = ("kind", "entity_id", "fingerprint")
SLICE = [
    "data.sample.max_items=8",
    "llm.max_new_tokens=8",
    "llm.batch_size=2",
    "generate.commit_rows=2",  # a commit every two prompts: kills land between commits
    "adapt.epochs=1",
]


@pytest.fixture(scope="module")
def nodes(s3_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[cluster.Cluster]:
    started = cluster.start(s3_server.env, tmp_path_factory.mktemp("cluster"))
    try:
        yield started
    finally:
        started.stop()


def args(nodes: cluster.Cluster, out: str, command: str, *extra: str) -> list[str]:
    resource = json.dumps({cluster.MODEL_RESOURCE: 1})
    return [
        KAR, *command.split(), "--conf", str(ROOT / "conf" / "local.yaml"),
        f"run.output_dir={out}", f"run.cache_dir={CACHE}", f"data.path={ROOT / 'data' / 'ml-100k'}",
        f"spark.master={nodes.spark_master}", f"ray.address={nodes.ray_address}",
        f"generate.resources={resource}", f"encoder.pool.resources={resource}",
        f"feature_store.repo={ROOT / 'conf' / 'feast'}", *SLICE, *extra,
    ]  # fmt: skip


def kar(nodes, out: str, command: str, *extra: str, cwd: Path) -> dict:
    """`kar <command>` against the cluster; its JSON summary (it must succeed)."""
    done = subprocess.run(
        args(nodes, out, command, *extra),
        env=nodes.env, cwd=cwd, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    assert SECRET_KEY not in done.stdout + done.stderr  # no log line carries the secret
    # The summary is the last JSON line: Ray's driver also prints the raylet's notices (an
    # actor restarted) to stdout.
    return json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])


def knowledge_keys(out: str) -> collections.Counter:
    rows = tables.read(f"{out}/tables/knowledge", schemas.KNOWLEDGE)
    return collections.Counter(zip(*(rows.column(k).to_pylist() for k in KEYS), strict=True))


def prompt_keys(out: str) -> set:
    rows = tables.read(f"{out}/tables/prompts", schemas.PROMPTS)
    return set(zip(*(rows.column(k).to_pylist() for k in KEYS), strict=True))


def wait_for(condition, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def generation_actors() -> list[psutil.Process]:
    """This machine's generation actor processes (Ray Data's pool actors are named
    ray::MapWorker(MapBatches(GenerationWorker)))."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        command = proc.info["cmdline"] or []
        if command and command[0].startswith("ray::") and "GenerationWorker" in command[0]:
            found.append(proc)
    return found


def test_the_weekly_job_runs_across_nodes_on_s3_and_resumes_after_kills(nodes, s3, tmp_path):
    out = s3.uri("weekly")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    first = ["data.sample.max_users=8"]

    # 1. kill -9 of the driver midway through generate, once a commit has landed.
    driver = subprocess.Popen(
        args(nodes, out, "run", *first), env=nodes.env, cwd=cwd, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: tables.version(f"{out}/tables/knowledge") is not None, "a commit")
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and its Spark JVM, no cleanup
        assert driver.wait(timeout=30) == -signal.SIGKILL
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)
    survived, due = knowledge_keys(out), prompt_keys(out)  # the queue the killed run kept
    assert survived and len(survived) < len(due)

    # The rerun takes the dead driver's lock at once and does only the rest.
    summary = kar(nodes, out, "run", *first, cwd=cwd)
    assert summary["prompts_generated"] == len(due) - len(survived)
    answered = knowledge_keys(out)
    assert max(answered.values()) == 1 and set(answered) >= due

    # What ran where: model actors on the model node only, Spark tasks on the worker.
    for actor in ("GenerationWorker", "EncoderWorker"):
        assert cluster.actor_nodes(nodes.model_node_dir, actor), f"{actor} not on the model node"
    executors = list(nodes.spark_work_dir.glob("app-*/*/stderr"))
    assert executors and any("Finished task" in p.read_text() for p in executors)

    # Every table opens from the server with deltalake itself; the report is there too.
    for name in ("prompts", "samples", "attributes", "knowledge", "embeddings", "vectors", "runs"):
        assert DeltaTable(f"{out}/tables/{name}").to_pyarrow_table().num_rows > 0, name
    fs, root = storage.location(summary["report"]).filesystem()
    with fs.open_input_stream(root) as f:
        report = f.read().decode()
    assert summary["run_id"] in report and SECRET_KEY not in report
    runs = DeltaTable(f"{out}/tables/runs").to_pyarrow_table()
    assert SECRET_KEY not in json.dumps(runs.to_pylist(), default=str)
    assert list(cwd.iterdir()) == []  # nothing on local disk but run.cache_dir

    # 2. kill -9 of a generation actor midway (new users: new prompts); Ray restarts it.
    more = ["data.sample.max_users=12"]
    before = tables.version(f"{out}/tables/knowledge")
    killed: list[int] = []

    def kill_an_actor_after_a_commit() -> None:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and not killed:
            if (tables.version(f"{out}/tables/knowledge") or 0) > before:
                for actor in generation_actors():
                    actor.kill()  # SIGKILL, mid-batch
                    killed.append(actor.pid)
            time.sleep(0.2)

    killer = threading.Thread(target=kill_an_actor_after_a_commit, daemon=True)
    killer.start()
    summary = kar(nodes, out, "run", *more, cwd=cwd)
    killer.join(timeout=60)
    assert killed, "no generation actor was killed midway"
    answered = knowledge_keys(out)
    assert max(answered.values()) == 1 and set(answered) >= prompt_keys(out)
    assert summary["prompts_generated"] > 0

    # 3. Generate again on the same queue: nothing left to ask (`kar generate` alone: a whole
    # `kar run` would add a prepare, the slowest stage on this one-machine cluster).
    assert kar(nodes, out, "generate", *more, cwd=cwd)["prompts_generated"] == 0

    # 4. forget, maintain and publish on the same tables.
    user = next(e for k, e, _ in answered if k == "user")
    feast = f"feature_store.dir={tmp_path / 'feast'}"  # Feast's files: the publisher's disk
    kar(nodes, out, f"forget --user {user}", *more, feast, cwd=cwd)
    assert not [key for key in knowledge_keys(out) if key[:2] == ("user", user)]
    kar(nodes, out, "maintain", *more, cwd=cwd)
    kar(nodes, out, "publish --online", *more, feast, cwd=cwd)
    assert (tmp_path / "feast" / "registry.db").is_file()
    assert (tmp_path / "feast" / "online.db").is_file()
    features = DeltaTable(f"{out}/tables/features_user").to_pyarrow_table()
    assert user not in features.column("user_id").to_pylist() and features.num_rows > 0
    assert list(cwd.iterdir()) == []


def test_losing_the_model_node_mid_generate_stops_the_job_and_a_rerun_finishes(nodes, s3, tmp_path):
    out = s3.uri("spot")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    week = ["data.sample.max_users=8", "ray.unschedulable_wait_s=45"]
    kar(nodes, out, "prepare", *week, cwd=cwd)
    log = tmp_path / "driver.log"
    with log.open("w") as sink:
        driver = subprocess.Popen(
            args(nodes, out, "generate", *week), env=nodes.env, cwd=cwd, start_new_session=True,
            stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_for(lambda: tables.version(f"{out}/tables/knowledge") is not None, "a commit")
            nodes.kill_model_node()  # as a spot node is reclaimed: not brought back yet
            killed_at = time.monotonic()
            assert driver.wait(timeout=300) == 1
            stopped_after = time.monotonic() - killed_at
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(driver.pid, signal.SIGKILL)
    text = log.read_text()
    # The job's own error, no traceback through it (Ray Data logs the actor's error itself).
    assert "ERROR kar: an actor of the pool was lost" in text and "jobs/cli.py" not in text
    assert "no live Ray node offers CPU=" in text and f"{cluster.MODEL_RESOURCE}=1" in text
    assert "lost: node" in text
    assert stopped_after < 45 + 120  # the configured wait, plus Ray noticing the node died
    survived, due = knowledge_keys(out), prompt_keys(out)

    nodes.start_model_node()
    nodes.wait_nodes(2)
    assert kar(nodes, out, "generate", *week, cwd=cwd)["prompts_generated"] == len(due) - len(
        survived
    )
    answered = knowledge_keys(out)
    assert max(answered.values()) == 1 and set(answered) >= due
    assert set(survived) <= set(answered)
