"""One writer per output directory: real processes contend for it, and `kill -9` frees it."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
from pathlib import Path

from suite_paths import ROOT

from jobs.plumbing import lock
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


def holder(tmp: Path, out: Path, run_id: str) -> tuple[subprocess.Popen, Path]:
    held = tmp / f"{run_id}.held"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out), run_id, str(held), str(tmp / "release")],
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


def test_two_runs_started_at_once_one_holds_the_other_names_it(tmp_path):
    out = tmp_path / "out"
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


def test_kar_fails_fast_on_a_held_directory_without_touching_it(tmp_path):
    out = tmp_path / "out"
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
    assert not (out / "tables").exists()


def test_a_lock_left_by_a_killed_run_is_taken_over_with_a_warning(tmp_path, caplog):
    out = tmp_path / "out"
    proc, held = holder(tmp_path, out, "killed-run")
    wait_for(held.exists, "the holder")
    proc.kill()  # SIGKILL: no cleanup runs, the lock file still names it
    proc.wait(timeout=60)
    assert "killed-run" in (out / lock.LOCK_FILE).read_text()
    conf = load_config(None, [f"run.output_dir={out}"])
    with caplog.at_level(logging.WARNING), lock.hold(conf, "prepare", "next-run"):
        assert "next-run" in (out / lock.LOCK_FILE).read_text()
    assert "taking over the lock of run 'killed-run'" in caplog.text
    assert (out / lock.LOCK_FILE).read_text() == ""  # released cleanly
