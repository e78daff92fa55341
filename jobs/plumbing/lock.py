"""Run ids, and one writer per output directory: a second run fails fast and names the holder.

The lock is an OS file lock (flock) on `<run.output_dir>/.kar.lock`, so it dies
with its process, `kill -9` included; the file also records who holds it (host,
pid, run id, command, start time) for the message a second run prints. A lock
file left by a process that is gone is taken over with a warning. flock works
on local disks and NFSv4; on storage without it, serialize runs in the
scheduler (the Airflow DAG runs one at a time).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from jobs.plumbing.config import Config
from jobs.plumbing.errors import InputError

log = logging.getLogger(__name__)

LOCK_FILE = ".kar.lock"
# A holder whose record cannot be read (not yet written, or garbled).
_UNKNOWN = {"run_id": "unknown", "command": "?", "pid": "?", "host": "?", "started_at": "?"}


# A run id names a folder (reports/<run_id>/) and rows: no path separators. Airflow's own
# ids (scheduled__2026-11-30T00:00:00+00:00) fit.
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}$")


def run_id_arg(text: str) -> str:
    """`--run-id`'s check: an argparse type, so a bad id fails before any stage starts."""
    if not _RUN_ID.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a usable run id: 1-128 letters, digits and . _ : + - "
            "(starting with a letter or digit)"
        )
    return text


def new_run_id() -> str:
    """Sortable and unique: UTC time to the second plus a short random suffix."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


class LockedError(InputError):
    """Another live run writes to this output directory (exit 2: run later or elsewhere)."""


def _describe(holder: dict) -> str:
    return (
        f"run {holder.get('run_id')!r} (`kar {holder.get('command')}`, pid {holder.get('pid')} "
        f"on {holder.get('host')}, started {holder.get('started_at')})"
    )


@contextmanager
def hold(conf: Config, command: str, run_id: str) -> Iterator[Path]:
    """Hold the output directory's lock for the block; LockedError if a live run holds it."""
    out = conf.local_output()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(
            f"run.output_dir {out} cannot be used as a directory ({e.strerror}); set it to a "
            "writable directory"
        ) from None
    path = out / LOCK_FILE
    try:
        handle = path.open("a+")
    except OSError as e:
        raise InputError(
            f"run.output_dir {out} is not writable ({e.strerror}); set it to a directory this "
            "user may write"
        ) from None
    with handle as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(
                f"{out} is in use by {_describe(_holder(f))}; wait for it to finish, or give "
                "this run another run.output_dir"
            ) from None
        previous = _read(f)
        if previous:
            log.warning(
                "taking over the lock of %s, whose process is gone (it did not finish: this "
                "run redoes what it left)",
                _describe(previous),
            )
        _write(
            f,
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "run_id": run_id,
                "command": command,
                "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        )
        try:
            yield path
        finally:
            _write(f, None)  # emptied before release: the next run sees a clean hand-over


def _write(f: TextIO, holder: dict | None) -> None:
    f.seek(0)
    f.truncate()
    if holder:
        f.write(json.dumps(holder))
    f.flush()


def _holder(f: TextIO, wait_s: float = 5.0) -> dict:
    """The holder's record; a holder that has just taken the lock writes it a moment later."""
    deadline = time.monotonic() + wait_s
    while not (holder := _read(f)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return holder or _UNKNOWN


def _read(f: TextIO) -> dict:
    f.seek(0)
    text = f.read().strip()
    try:
        return json.loads(text) if text else {}
    except json.JSONDecodeError:
        return _UNKNOWN
