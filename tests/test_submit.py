"""spark-submit: the `make dist` zip carries every package, and the real spark-submit (from
pyspark, local mode) runs a stage file whose session keeps spark-submit's own settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from suite_paths import ROOT

from jobs.plumbing import schemas

pytestmark = pytest.mark.engines  # builds the dist zip and submits jobs

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def dist_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make dist` into a tmp dir, with this test's venv: `-o` keeps make from rebuilding the
    venv (the stamp may be older than pyproject.toml in a fresh worktree); that is setup's job."""
    out = tmp_path_factory.mktemp("dist")
    args = ["make", "-s", "-o", ".venv/.kar-installed", "dist", f"DIST_DIR={out}", f"BIN={BIN}"]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return out / "kar-job.zip"


def test_dist_zip_alone_provides_every_package(dist_zip: Path, tmp_path: Path):
    # Outside the repo and with the zip first on the path, imports must resolve into the zip,
    # and the bundled factor YAMLs must load from it (executors have nothing else).
    code = (
        "import jobs.cli, adapters.moe, encoders.inputs, factors.sets, factors.prompts;"
        "print(jobs.cli.__file__); print(len(factors.sets.load('movies').factors))"
    )
    env = {**os.environ, "PYTHONPATH": str(dist_zip)}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    module_file, n_factors = proc.stdout.split()
    assert module_file.startswith(str(dist_zip))
    assert int(n_factors) == 9


@pytest.mark.e2e
def test_spark_submit_runs_prepare_with_submitted_settings(dist_zip, ml100k, tmp_path: Path):
    out = tmp_path / "out"
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PYSPARK_PYTHON": sys.executable,
    }
    args = [
        str(BIN / "spark-submit"),
        "--master",
        "local[1]",
        "--conf",
        "spark.sql.shuffle.partitions=3",
        "--py-files",
        str(dist_zip),
        str(ROOT / "jobs" / "cli.py"),
        "prepare",
        "--conf",
        str(ROOT / "conf" / "local.yaml"),
        f"run.output_dir={out}",
        f"data.path={ml100k}",
        "data.sample.max_items=10",
        "data.sample.max_users=8",
    ]
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]

    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["users"] == 8 and result["items"] == 10
    # 8 users' production prompts, their 8 bootstrap prompts (KAR's cut) and 10 items.
    assert result["prompts_pending"] == 26 and result["bootstrap"] == 8
    # conf/local.yaml says local[*] and 8 partitions; spark-submit's values must win.
    # spark-submit merges the Python driver's stderr (our log) into its stdout.
    assert "master local[1], 3 shuffle partitions (from spark-submit:" in proc.stdout
    prompts = DeltaTable(str(out / "tables" / "prompts"))
    assert pa.schema(prompts.schema().to_arrow()).equals(schemas.PROMPTS)
    assert prompts.to_pyarrow_table().num_rows == 26
    assert DeltaTable(str(out / "tables" / "samples")).to_pyarrow_table().num_rows > 0
