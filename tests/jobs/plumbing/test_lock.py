"""One writer per output directory: real processes contend for it, and `kill -9` frees it.

The same tests run on a local disk (flock) and on a real S3-compatible server (the lease
lock object), with the same messages.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from suite_paths import ROOT

from jobs.plumbing import lock, storage
from jobs.plumbing.config import load_config

# Holds the lock of argv[1] as run argv[2], says so in argv[3], waits for argv[4] to exist.
HOLDER = """
import sys, time, pathlib
from jobs.plumbing import lock
from jobs.plumbing.config import load_config
conf = load_config(None, [f"run.output_dir={sys.argv[1]}"])
with lock.hold(conf, "run", sys.argv[2]):
    pathlib.Path(sys.argv[3]).write_text("held")
    while not pathlib.Path(sys.argv[4]).exists():
        time.sleep(0.05)
"""


@pytest.fixture(params=["disk", pytest.param("s3", marks=pytest.mark.engines)])
def out(request, tmp_path) -> str:
    """An output directory on a local disk, or on the suite's S3 server."""
    if request.param == "disk":
        return str(tmp_path / "out")
    return request.getfixturevalue("s3").uri("lock")


def record(out: str) -> str | None:
    """The lock's record as stored (None: no lock object)."""
    data = (storage.location(out) / lock.LOCK_FILE).read_bytes()
    return None if data is None else data.decode()


def holder(tmp: Path, out: str, run_id: str) -> tuple[subprocess.Popen, Path]:
    held = tmp / f"{run_id}.held"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, out, run_id, str(held), str(tmp / "release")],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, held


def wait_for(condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_two_runs_started_at_once_one_holds_the_other_names_it(tmp_path, out):
    (a, a_held), (b, b_held) = holder(tmp_path, out, "run-a"), holder(tmp_path, out, "run-b")
    # The winner holds until released, so the loser cannot slip in after it: no race left.
    wait_for(lambda: (a_held.exists() or b_held.exists()) and (a.poll() or b.poll()), "a loser")
    winner, loser = (a, b) if a_held.exists() else (b, a)
    assert not (a_held.exists() and b_held.exists())
    err = loser.stderr.read()
    assert "LockedError" in err and f"pid {winner.pid} on {socket.gethostname()}" in err
    assert ("'run-a'" if winner is a else "'run-b'") in err and "started 20" in err
    (tmp_path / "release").write_text("")
    assert winner.wait(timeout=60) == 0


def test_kar_fails_fast_on_a_held_directory_without_touching_it(tmp_path, out):
    proc, held = holder(tmp_path, out, "weekly-1")
    wait_for(held.exists, "the holder")
    kar = Path(sys.executable).with_name("kar")
    result = subprocess.run(
        [str(kar), "prepare", "--conf", str(ROOT / "conf" / "local.yaml"), f"run.output_dir={out}"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    (tmp_path / "release").write_text("")
    assert proc.wait(timeout=60) == 0
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"in use by run 'weekly-1' (`kar run`, pid {proc.pid}" in result.stderr
    assert "log4j" not in result.stderr  # failed before Spark started
    fs, root = storage.location(out).filesystem()
    assert fs.get_file_info(f"{root}/tables").type.name == "NotFound"


def test_a_lock_left_by_a_killed_run_is_taken_over_with_a_warning(tmp_path, out, caplog):
    proc, held = holder(tmp_path, out, "killed-run")
    wait_for(held.exists, "the holder")
    proc.kill()  # SIGKILL: no cleanup runs, the lock still names it
    proc.wait(timeout=60)
    assert "killed-run" in record(out)
    conf = load_config(None, [f"run.output_dir={out}"])
    started = time.monotonic()
    with caplog.at_level(logging.WARNING), lock.hold(conf, "prepare", "next-run"):
        assert "next-run" in record(out)
    # At once, not after a lease (300 s by default): the holder was on this host and is gone.
    assert time.monotonic() - started < 60
    assert "taking over the lock of run 'killed-run'" in caplog.text
    assert record(out) in ("", None)  # released cleanly


def _plant(out: str, host: str, lease_s: int) -> None:
    """A lock record as a run on another node leaves it when that node is lost."""
    body = {"host": host, "pid": 1, "run_id": "lost-node", "command": "run", "lease_s": lease_s}
    (storage.location(out) / lock.LOCK_FILE).write_bytes(json.dumps(body).encode())


def test_an_expired_lease_is_taken_over_by_one_of_two_racing_runs(s3, caplog):
    out = s3.uri("lease")
    _plant(out, "gone-node", lease_s=1)
    time.sleep(1.5)  # the record is older than its lease: it may be taken over
    conf = load_config(None, [f"run.output_dir={out}"])
    results: dict[str, object] = {}
    release = threading.Event()
    start = threading.Barrier(2)

    def take(run_id: str) -> None:
        start.wait()
        try:
            with lock.hold(conf, "run", run_id):
                results[run_id] = "held"
                release.wait(60)
        except lock.LockedError as e:
            results[run_id] = e

    threads = [threading.Thread(target=take, args=(r,)) for r in ("racer-a", "racer-b")]
    with caplog.at_level(logging.WARNING):
        for t in threads:
            t.start()
        wait_for(lambda: len(results) == 2, "both takers")  # the loser answers while held
        release.set()
        for t in threads:
            t.join(60)
    held = [r for r, v in results.items() if v == "held"]
    lost = [v for v in results.values() if isinstance(v, lock.LockedError)]
    assert len(held) == 1 and len(lost) == 1, results
    assert f"in use by run '{held[0]}'" in str(lost[0])
    assert "taking over the lock of run 'lost-node'" in caplog.text
    assert "lease ran out" in caplog.text


def refused(conf, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match), lock.hold(conf, "run", "refused"):
        pass


def test_a_live_holder_renews_its_lease_and_keeps_the_lock(s3):
    out = s3.uri("renew")
    conf = load_config(None, [f"run.output_dir={out}", "storage.lock_lease_s=3"])
    fs, root = storage.location(out).filesystem()
    with lock.hold(conf, "run", "long-run"):
        first = fs.get_file_info(f"{root}/{lock.LOCK_FILE}").mtime
        wait_for(
            lambda: fs.get_file_info(f"{root}/{lock.LOCK_FILE}").mtime > first, "a renewal", 30
        )
        time.sleep(3.5)  # longer than the lease: only renewals keep it
        refused(conf, lock.LockedError, "in use by run 'long-run'")


def test_a_store_that_cannot_be_written_is_named_before_any_work(s3, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    missing = load_config(None, ["run.output_dir=s3://no-such-bucket/out"])
    refused(missing, storage.StorageError, "s3://no-such-bucket/out.*bucket")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    ours = load_config(None, [f"run.output_dir={s3.uri('denied')}"])
    refused(ours, storage.StorageError, "AWS_SECRET_ACCESS_KEY")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # a port nothing listens on
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed.getsockname()[1]}")
        refused(ours, storage.StorageError, "cannot be reached: check AWS_ENDPOINT_URL")
    assert list(tmp_path.iterdir()) == []  # no local folder named after the URI
