"""A cluster whose nodes share no disk, on this machine: two Ray nodes (a head, and a
"model node" that alone offers the custom resource the model pools require, each with its
own temp dir) and a Spark standalone master and worker (the pyspark wheel's
`bin/spark-class`: it ships no sbin/start-*.sh). Every process starts in its own process
group with the S3 server's environment, and `stop` ends them all.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyspark
from loopback import free_ports, stop_group

BIN = Path(sys.executable).parent
SPARK_CLASS = Path(pyspark.__file__).parent / "bin" / "spark-class"
# The custom resource generate's and encode's actors require: only the model node has it.
MODEL_RESOURCE = "kar_model_node"


@dataclass
class Cluster:
    env: dict[str, str]  # what a driver needs: S3 and Ray token, nothing else of ours
    ray_address: str
    spark_master: str
    model_node_dir: Path  # the model node's Ray temp dir (its workers' logs)
    spark_work_dir: Path  # the Spark worker's work dir (its executors' logs)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start_model_node(self) -> None:
        """The node that alone offers MODEL_RESOURCE (fresh ports: a restart must not wait
        for the lost node's to be released)."""
        extra = ["--address", self.ray_address, "--resources", json.dumps({MODEL_RESOURCE: 4})]
        self.procs["model-node"] = _spawn(_ray_node(self.model_node_dir, 2, *extra), self.env)

    def wait_nodes(self, count: int, timeout: float = 180) -> None:
        """Until `count` Ray nodes are alive (a node's raylet registers seconds after start)."""
        probe = (
            "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
            "print(sum(n['Alive'] for n in ray.nodes()))"
        )
        deadline = time.monotonic() + timeout
        while True:
            done = subprocess.run(
                [sys.executable, "-c", probe, self.ray_address],
                env=self.env,
                capture_output=True,
                text=True,
            )
            if done.returncode == 0 and int(done.stdout.split()[-1]) >= count:
                return
            for name, proc in self.procs.items():
                assert proc.poll() is None, f"{name} exited ({proc.returncode})"
            assert time.monotonic() < deadline, f"{count} Ray nodes not up in {timeout} s"
            time.sleep(2)

    def kill_model_node(self) -> None:
        """As a spot node is reclaimed: its raylet and workers SIGKILLed, no drain."""
        proc = self.procs.pop("model-node")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        # Anything of the node's that left its process group (a pattern without leading dashes:
        # pkill would read one as its own option).
        subprocess.run(["pkill", "-9", "-f", f"temp-dir={self.model_node_dir}"], check=False)

    def stop(self) -> None:
        for proc in self.procs.values():
            stop_group(proc)


def _spawn(args: list[str], env: dict[str, str], log: Path | None = None) -> subprocess.Popen:
    out = log.open("w") if log else subprocess.DEVNULL
    return subprocess.Popen(args, env=env, start_new_session=True, stdout=out, stderr=out)


def _ray_node(temp_dir: Path, cpus: int, *extra: str) -> list[str]:
    node_manager, object_manager, agent, agent_grpc, env_agent, metrics = free_ports(6)
    # fmt: off
    return [
        str(BIN / "ray"), "start", "--block", "--disable-usage-stats", "--num-cpus", str(cpus),
        f"--temp-dir={temp_dir}", "--node-ip-address", "127.0.0.1",
        "--node-manager-port", str(node_manager), "--object-manager-port", str(object_manager),
        "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port",
        str(agent_grpc), "--runtime-env-agent-port", str(env_agent),
        "--metrics-export-port", str(metrics), *extra,
    ]
    # fmt: on


def start(s3_env: dict[str, str], workdir: Path) -> Cluster:
    """Start both Ray nodes and the Spark master and worker; wait until they serve."""
    env = {
        **os.environ,
        **s3_env,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_PYTHON": sys.executable,
    }
    env.pop("RAY_ADDRESS", None)
    gcs, master_port, master_ui, worker_port, worker_ui = free_ports(5)
    # Short paths: Ray's Unix sockets live under the temp dir (108-byte limit).
    head_dir = Path(tempfile.mkdtemp(prefix="kh-", dir="/tmp"))
    model_dir = Path(tempfile.mkdtemp(prefix="km-", dir="/tmp"))
    spark_work = workdir / "spark-worker"
    spark_work.mkdir()
    cluster = Cluster(
        env,
        f"127.0.0.1:{gcs}",
        f"spark://127.0.0.1:{master_port}",
        model_dir,
        spark_work,
    )
    try:
        head = _ray_node(head_dir, 2, "--head", "--port", str(gcs), "--include-dashboard=false")
        cluster.procs["ray-head"] = _spawn(head, env)
        cluster.wait_nodes(1)
        cluster.start_model_node()
        cluster.procs["spark-master"] = _spawn(
            [str(SPARK_CLASS), "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
             "--port", str(master_port), "--webui-port", str(master_ui)],
            env, workdir / "spark-master.log",
        )  # fmt: skip
        cluster.procs["spark-worker"] = _spawn(
            [str(SPARK_CLASS), "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
             "--port", str(worker_port), "--webui-port", str(worker_ui), "--cores", "2",
             "--memory", "3g", "--work-dir", str(spark_work), cluster.spark_master],
            env, workdir / "spark-worker.log",
        )  # fmt: skip
        cluster.wait_nodes(2)
        _wait_for_log(workdir / "spark-worker.log", "Successfully registered with master")
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait_for_log(path: Path, line: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while line not in (path.read_text() if path.exists() else ""):
        assert time.monotonic() < deadline, f"{path.name}: no {line!r} in {timeout} s"
        time.sleep(0.5)


def actor_nodes(temp_dir: Path, actor_class: str) -> list[Path]:
    """The worker logs under a node's Ray temp dir of processes that ran `actor_class`."""
    logs = temp_dir.glob("session_2*/logs/worker-*.out")  # not session_latest, a link
    return [p for p in logs if actor_class in p.read_text(errors="replace")]
