"""Where data lives: one storage location type for every table the job writes.

A `Location` is a URI kept a string end to end (an absolute local path, `file://`, or an
object store's `s3://`, `gs://`, `abfss://`), with the non-secret storage options delta-rs
takes; workers open it through `pyarrow.fs` at the same URI. A relative path is made
absolute once, in the process that reads the config, so no worker resolves it against a
working directory of its own. Credentials never pass through here: delta-rs and pyarrow
read each cloud SDK's standard environment (AWS_*, GOOGLE_APPLICATION_CREDENTIALS,
AZURE_STORAGE_*) themselves.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from jobs.plumbing.errors import InputError

# Schemes every layer that touches a table (delta-rs, pyarrow.fs, Ray Data) accepts.
OBJECT_STORES = ("s3", "gs", "abfss")
SCHEMES = ("file", *OBJECT_STORES)


class StorageError(InputError):
    """A location cannot be used; the message names the URI and the setting to fix."""


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

    def filesystem(self) -> tuple[pafs.FileSystem, str]:
        """(pyarrow file system, path inside it) for workers that write files here."""
        return pafs.FileSystem.from_uri(self.uri)

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
    return Location(text, tuple(sorted((options or {}).items())))
