"""`ray job submit` of a stage, as the README and the Airflow DAG do it: a real Ray head
(`ray start --head`, private temp dir and ports so no other Ray on the machine finds it), the
repo as working dir, and the encode stage joining that cluster with `ray.address=auto`."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from deltalake import DeltaTable
from suite_paths import ROOT
from table_writes import write_answers

BIN = Path(sys.executable).parent


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture
def ray_head() -> Iterator[tuple[str, dict[str, str]]]:
    """A blocking `ray start --head` in its own process group; the whole group ends after."""
    gcs, dashboard, agent, agent_grpc, env_agent, metrics = _free_ports(6)
    # Short path: Ray's Unix sockets live under the temp dir (108-byte limit).
    temp_dir = tempfile.mkdtemp(prefix="kr-", dir="/tmp")
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        # Ray's token auth (on by default), with a token of this test's own; head and CLI
        # read it from the environment, so nothing is written to ~/.ray.
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
    }
    env.pop("RAY_ADDRESS", None)
    # fmt: off
    args = [
        str(BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats",
        "--num-cpus", "2", "--port", str(gcs), "--temp-dir", temp_dir,
        "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
        "--dashboard-port", str(dashboard), "--dashboard-agent-listen-port", str(agent),
        "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port",
        str(env_agent), "--metrics-export-port", str(metrics),
    ]
    # fmt: on
    proc = subprocess.Popen(args, env=env, start_new_session=True, stdout=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 120
        while subprocess.run(
            [str(BIN / "ray"), "job", "list", "--address", address], env=env, capture_output=True
        ).returncode:
            assert proc.poll() is None, "ray start --head exited"
            assert time.monotonic() < deadline, "Ray's job server did not come up in 120 s"
            time.sleep(2)
        yield address, env
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.e2e
def test_ray_job_submit_runs_encode_on_the_cluster(ray_head, make_config, tmp_path):
    address, env = ray_head
    conf = make_config()
    write_answers(conf, "run-1", [("user", "ok")] * 3 + [("item", "ok")] * 2)
    entrypoint = [
        "python", "jobs/encode.py", "--conf", "conf/local.yaml",
        f"run.output_dir={conf.run.output_dir}", f"run.cache_dir={conf.run.cache_dir}",
        "ray.address=auto",
    ]  # fmt: skip
    submit = [
        str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(ROOT),
        "--", *entrypoint,
    ]  # fmt: skip
    proc = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "succeeded" in proc.stdout
    embeddings = DeltaTable(str(conf.table_path("embeddings"))).to_pyarrow_table()
    assert embeddings.num_rows == 5
    assert set(embeddings.column("dim").to_pylist()) == {384}

    # A failing job fails the submitter too (what fails the Airflow task).
    bad = [*submit[: submit.index("--") + 1], "python", "jobs/encode.py", "llm.nope=1"]
    failed = subprocess.run(bad, env=env, capture_output=True, text=True, timeout=600)
    assert failed.returncode != 0
    assert "llm.nope: unknown key" in failed.stdout + failed.stderr
