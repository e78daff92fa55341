"""Where data lives: one storage location type for every table and file the job writes.

A `Location` is a URI kept a string end to end (an absolute local path, `file://`, or an
object store's `s3://`, `gs://`, `abfss://`), with the non-secret storage options
(`storage.options`: object_store's keys, which delta-rs and obstore share); workers open it
through `pyarrow.fs` at the same URI. A relative path is made absolute once, in the process
that reads the config, so no worker resolves it against a working directory of its own.
Credentials never pass through here: delta-rs, obstore and pyarrow read each cloud SDK's
standard environment (AWS_*, GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*) themselves.
"""

from __future__ import annotations

import functools
import os
import posixpath
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from jobs.plumbing.errors import InputError

if TYPE_CHECKING:
    from obstore.store import ObjectStore

# Schemes every layer that touches a table (delta-rs, pyarrow.fs, Ray Data) accepts.
OBJECT_STORES = ("s3", "gs", "abfss")
SCHEMES = ("file", *OBJECT_STORES)


class StorageError(InputError):
    """A location cannot be used; the message names the URI and the setting to fix."""


# Option keys that name credentials: those come from the environment, never from YAML
# (where they would be committed, logged and copied into run reports).
_SECRET_KEY = re.compile(r"secret|token|password|access_key|account_key|sas|credential", re.I)


def check_options(options: Mapping[str, str]) -> dict[str, str]:
    """`storage.options` as strings; a credential key is refused, naming its variable."""
    for key in options:
        if _SECRET_KEY.search(key):
            raise ValueError(
                f"{key!r} is a credential: set it in the environment (AWS_*, "
                "GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*), never in a config file"
            )
    return {k: str(v) for k, v in options.items()}


@functools.cache
def _s3(endpoint: str | None, region: str | None) -> pafs.S3FileSystem:
    # By hand: pyarrow's S3 layer does not read AWS_ENDPOINT_URL (pyarrow 26), while
    # delta-rs and obstore do; without this, workers would write to AWS while the driver's
    # commits go to the configured endpoint. Credentials: the AWS SDK's own chain.
    return pafs.S3FileSystem(endpoint_override=endpoint, region=region)


@dataclass(frozen=True)
class Location:
    """A table or output location: `uri` plus delta-rs `storage_options` (non-secret)."""

    uri: str
    options: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        return self.uri

    def __truediv__(self, part: str) -> Location:
        return Location(posixpath.join(self.uri, part), self.options)

    @property
    def name(self) -> str:
        return posixpath.basename(self.uri.rstrip("/"))

    @property
    def parent(self) -> Location:
        return Location(posixpath.dirname(self.uri.rstrip("/")), self.options)

    @property
    def is_local(self) -> bool:
        return urlsplit(self.uri).scheme in ("", "file")

    def storage_options(self) -> dict[str, str] | None:
        """delta-rs `storage_options` (None when there are none)."""
        return dict(self.options) or None

    @property
    def scheme(self) -> str:
        return urlsplit(self.uri).scheme or "file"

    def _option(self, *keys: str, env: tuple[str, ...] = ()) -> str | None:
        """The first of `keys` set in the options, else the first of `env` set."""
        opts = dict(self.options)
        found = [opts[k] for k in keys if opts.get(k)] + [
            os.environ[e] for e in env if os.environ.get(e)
        ]
        return found[0] if found else None

    def filesystem(self) -> tuple[pafs.FileSystem, str]:
        """(pyarrow file system, path inside it) for workers that read and write files here."""
        if self.scheme == "s3":
            endpoint = self._option(
                "aws_endpoint", "aws_endpoint_url", env=("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
            )
            region = self._option("aws_region", env=("AWS_REGION", "AWS_DEFAULT_REGION"))
            return _s3(endpoint, region), self.uri.removeprefix("s3://").rstrip("/")
        return pafs.FileSystem.from_uri(self.uri)

    def store(self) -> ObjectStore:
        """An obstore store rooted here (conditional puts, which pyarrow.fs lacks)."""
        from obstore.store import from_url

        return from_url(self.uri, config=dict(self.options) or None)

    def write_bytes(self, data: bytes) -> None:
        """Write a whole file here: readers see the old file or the new one, never half.
        (An object store's PUT is atomic; on a disk, a temp file is moved into place.)"""
        fs, path = self.filesystem()
        parent = posixpath.dirname(path)
        fs.create_dir(parent, recursive=True)  # a no-op on object stores
        temp = path if not self.is_local else f"{parent}/.{uuid.uuid4().hex}.tmp"
        with fs.open_output_stream(temp) as out:
            out.write(data)
        if temp != path:
            fs.move(temp, path)

    def exists(self) -> bool:
        """Whether a file or folder is here."""
        fs, path = self.filesystem()
        return fs.get_file_info(path).type != pafs.FileType.NotFound

    def read_bytes(self) -> bytes | None:
        """The file's bytes, or None if there is none."""
        fs, path = self.filesystem()
        try:
            with fs.open_input_stream(path) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def upload(self, folder: Path) -> None:
        """Copy a local folder's files here (node-local scratch -> this location)."""
        fs, path = self.filesystem()
        fs.create_dir(path, recursive=True)
        pafs.copy_files(str(folder), path, destination_filesystem=fs)

    def local_path(self) -> Path:
        """The location as a local directory, for outputs that only go to local disk."""
        if not self.is_local:
            raise StorageError(f"{self.uri} is not on local disk; this output needs a local path")
        return Path(self.uri.removeprefix("file://"))


def location(
    value: str | os.PathLike[str] | Location, options: Mapping[str, str] | None = None
) -> Location:
    """`value` as a Location: a URI is checked, a relative path made absolute (here, once)."""
    if isinstance(value, Location):
        return value
    text = os.fspath(value)
    scheme = urlsplit(text).scheme
    if scheme and len(scheme) > 1 and scheme not in SCHEMES:
        hint = " (use abfss://container@account.dfs.core.windows.net/...)" if scheme == "az" else ""
        raise StorageError(
            f"{text}: unknown storage scheme {scheme!r}; use a path or one of "
            f"{', '.join(s + '://' for s in SCHEMES)}{hint}"
        )
    if not scheme or len(scheme) == 1:  # a plain path (a Windows drive letter included)
        text = os.path.abspath(text)
    return Location(text, tuple(sorted(check_options(options or {}).items())))
