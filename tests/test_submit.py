"""spark-submit's zip: `make dist` carries every package and the factor files. (The real
spark-submit of prepare with it, whose session keeps spark-submit's own settings, runs in
tests/test_schedules.py, through the DAG's SparkSubmitOperator.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.engines  # builds the dist zip


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
