"""Run ids, and one writer per output directory: a second run fails fast and names the holder.

The lock is `<run.output_dir>/.kar.lock`; it records who holds it (host, pid, run id,
command, start time) for the message a second run prints (exit 2).

- On a local disk: an OS file lock (flock) on that file, so it dies with its process,
  `kill -9` included; a record left by a process that is gone is taken over with a warning.
  flock works on local disks and NFSv4.
- On an object store (no flock): a lock object created only if absent (a conditional put,
  obstore's create mode; the store must honour `If-None-Match: *`, as delta-rs's commits
  need too), with a lease its holder renews every third of `storage.lock_lease_s` (a put
  conditional on the object's ETag, `If-Match`). A holder whose lease ran out (its node
  lost) is taken over with a warning, one on this host whose pid is dead at once (a rerun
  after `kill -9` does not wait a lease); a takeover is itself conditional, so of two takers
  one wins. A holder that finds its lock taken over stops (KeyboardInterrupt in the main
  thread): two writers are never left running.
"""

from __future__ import annotations

import _thread
import argparse
import fcntl
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TextIO

from jobs.plumbing.config import Config
from jobs.plumbing.errors import InputError
from jobs.plumbing.storage import Location, StorageError

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


def _taking_over(holder: dict, why: str) -> None:
    log.warning(
        "taking over the lock of %s, %s (it did not finish: this run redoes what it left)",
        _describe(holder),
        why,
    )


def _in_use(out: object, holder: dict) -> LockedError:
    return LockedError(
        f"{out} is in use by {_describe(holder)}; wait for it to finish, or give this run "
        "another run.output_dir"
    )


def _me(command: str, run_id: str) -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "run_id": run_id,
        "command": command,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


@contextmanager
def hold(conf: Config, command: str, run_id: str) -> Iterator[str]:
    """Hold the output directory's lock for the block; LockedError if a live run holds it.
    Yields the lock's URI."""
    out = conf.output()
    if out.is_local:
        with _flock(out, _me(command, run_id)) as held:
            yield held
    else:
        with _Lease(out, _me(command, run_id), conf.storage.lock_lease_s) as held:
            yield held


@contextmanager
def _flock(where: Location, me: dict) -> Iterator[str]:
    out = where.local_path()
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
            raise _in_use(out, _holder(f)) from None
        previous = _read(f)
        if previous:
            _taking_over(previous, "whose process is gone")
        _write(f, me)
        try:
            yield str(path)
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


def _pid_alive(pid: object) -> bool:
    try:
        os.kill(int(pid), 0)  # type: ignore[arg-type]
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError):
        return True  # someone else's process, or no pid recorded: assume alive
    return True


class _Lease:
    """The lock object on an object store (see the module docstring)."""

    KEY = LOCK_FILE

    def __init__(self, out: Location, me: dict, lease_s: int) -> None:
        self.out, self.lease_s = out, lease_s
        self.me = {**me, "lease_s": lease_s}
        self.uri = (out / self.KEY).uri
        self.store = out.store()
        self.etag: str | None = None
        self.stop = threading.Event()
        self.renewer = threading.Thread(target=self._renew, name="kar-lock-lease", daemon=True)

    def __enter__(self) -> str:
        self._acquire()
        self.renewer.start()
        return self.uri

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.renewer.join()
        import obstore

        try:
            if obstore.head(self.store, self.KEY)["e_tag"] == self.etag:
                obstore.delete(self.store, self.KEY)
        except Exception as e:  # the run's outcome stands; the lease lapses by itself
            log.warning(
                "could not release the lock %s (%s); it lapses in %d s", self.uri, e, self.lease_s
            )

    def _body(self) -> bytes:
        return json.dumps(self.me).encode()

    def _acquire(self) -> None:
        import obstore
        from obstore.exceptions import AlreadyExistsError, NotFoundError, PreconditionError

        holder: dict = _UNKNOWN
        for _ in range(5):
            try:
                self.etag = obstore.put(self.store, self.KEY, self._body(), mode="create")["e_tag"]
                return
            except AlreadyExistsError:
                pass
            except Exception as e:  # a racing put (409), or the store cannot be used
                if not self._exists():
                    raise self._unusable(e) from None
            try:
                found = obstore.get(self.store, self.KEY)
            except NotFoundError:
                continue  # released meanwhile: create it again
            holder = _parse(bytes(found.bytes()))
            why = self._gone(holder, found.meta["last_modified"])
            if why is None:
                raise _in_use(self.out, holder)
            _taking_over(holder, why)
            try:
                self.etag = obstore.put(
                    self.store, self.KEY, self._body(), mode={"e_tag": found.meta["e_tag"]}
                )["e_tag"]
                return
            except (PreconditionError, NotFoundError):
                continue  # another run took it (or released it) first: look again
        raise _in_use(self.out, holder)

    def _exists(self) -> bool:
        import obstore

        try:
            obstore.head(self.store, self.KEY)
        except Exception:
            return False
        return True

    def _unusable(self, error: Exception) -> StorageError:
        """The store refused the lock's first write: say which setting to fix."""
        from obstore.exceptions import (
            NotFoundError,
            PermissionDeniedError,
            UnauthenticatedError,
        )

        full = str(error)
        text = full.split("\n")[0]
        if isinstance(error, UnauthenticatedError | PermissionDeniedError) or "403" in text:
            fix = (
                "no write permission, or wrong credentials: check AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY (or the instance role, GOOGLE_APPLICATION_CREDENTIALS, "
                "AZURE_STORAGE_*)"
            )
        elif isinstance(error, NotFoundError) or "NoSuchBucket" in text or "404" in text:
            fix = "the bucket does not exist: create it, or fix run.output_dir"
        elif "connect" in full.lower() or "dns" in full.lower():
            fix = (
                "the endpoint cannot be reached: check AWS_ENDPOINT_URL (or "
                "storage.options.aws_endpoint) and that the store is up"
            )
        else:
            fix = "check run.output_dir, storage.options and the store's credentials"
        return StorageError(f"run.output_dir {self.out.uri} cannot be written ({fix}): {text}")

    def _gone(self, holder: dict, renewed: datetime) -> str | None:
        """Why the holder no longer holds the lock, or None while it does."""
        if holder.get("host") == socket.gethostname() and not _pid_alive(holder.get("pid")):
            return "whose process is gone"
        lease = float(holder.get("lease_s") or self.lease_s)
        silent = (datetime.now(UTC) - renewed).total_seconds()
        if silent > lease:
            return f"whose lease ran out ({silent:.0f} s without a renewal, lease {lease:.0f} s)"
        return None

    def _renew(self) -> None:
        import obstore
        from obstore.exceptions import NotFoundError, PreconditionError

        while not self.stop.wait(self.lease_s / 3):
            try:
                self.etag = obstore.put(
                    self.store, self.KEY, self._body(), mode={"e_tag": self.etag}
                )["e_tag"]
            except (PreconditionError, NotFoundError):
                log.error("the lock %s was taken over by another run: stopping this one", self.uri)
                _thread.interrupt_main()
                return
            except Exception as e:  # a blip: the lease outlives two missed renewals
                log.warning("could not renew the lock %s (%s); retrying", self.uri, e)


def _parse(data: bytes) -> dict:
    try:
        holder = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _UNKNOWN
    return holder if isinstance(holder, dict) else _UNKNOWN
