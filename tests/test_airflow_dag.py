"""The weekly Airflow DAG loads in a real DagBag (Airflow 3 in its own venv, `make airflow`),
its spark-submit line is the one the real SparkSubmitHook builds, and the Ray job commands
name stage scripts and a config that exist."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest
from suite_paths import ROOT

from jobs import cli
from jobs.plumbing.config import load_config

pytestmark = pytest.mark.engines  # loads the DAG in Airflow's own venv

AIRFLOW_PYTHON = ROOT / ".venv-airflow" / "bin" / "python"
DAG_FOLDER = ROOT / "conf" / "airflow"
AIRFLOW_RUN_ID = "scheduled__2026-11-30T03:00:00+00:00"

# Runs inside the Airflow venv: load the folder, describe the DAG as JSON.
PROBE = """
import json, sys
from airflow.dag_processing.dagbag import DagBag

bag = DagBag(dag_folder=sys.argv[1])
dag = bag.dags.get("kar_weekly")
out = {"import_errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": list(bag.dags)}
if dag is not None:
    prepare = dag.get_task("prepare")
    hook = prepare._get_hook()  # the hook the task would submit with
    out |= {
        "schedule": dag.schedule,
        "max_active_runs": dag.max_active_runs,
        "tasks": {t.task_id: {"operator": type(t).__name__,
                              "upstream": sorted(t.upstream_task_ids),
                              "bash": getattr(t, "bash_command", None)} for t in dag.tasks},
        "spark_submit": hook._build_spark_submit_command(prepare.application),
    }
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def dag_info(tmp_path_factory: pytest.TempPathFactory) -> dict:
    if not AIRFLOW_PYTHON.exists():
        pytest.skip(f"{AIRFLOW_PYTHON} missing: `make airflow` builds Airflow's own venv")
    home = tmp_path_factory.mktemp("airflow-home")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
        # The deployment's settings, as the dag-processor would see them.
        "KAR_HOME": str(ROOT),
        "KAR_CONF": "conf/cluster.yaml",
        "KAR_RAY_ADDRESS": "http://ray-head:8265",
        "AIRFLOW_CONN_SPARK_DEFAULT": "spark://spark-master:7077",
    }
    proc = subprocess.run(
        [str(AIRFLOW_PYTHON), "-c", PROBE, str(DAG_FOLDER)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_dag_loads_with_spark_then_ray_stages(dag_info: dict):
    assert dag_info["import_errors"] == {}
    assert dag_info["dags"] == ["kar_weekly"]
    assert dag_info["schedule"] == "0 3 * * 1"
    assert dag_info["max_active_runs"] == 1
    tasks = dag_info["tasks"]
    assert {t: (v["operator"], v["upstream"]) for t, v in tasks.items()} == {
        "prepare": ("SparkSubmitOperator", []),
        "generate_encode": ("BashOperator", ["prepare"]),
        "adapt": ("BashOperator", ["generate_encode"]),
        "publish": ("BashOperator", ["adapt"]),
        "report": ("BashOperator", ["publish"]),
        "maintain": ("BashOperator", ["report"]),
    }


def test_spark_submit_command_from_the_real_hook(dag_info: dict):
    command = dag_info["spark_submit"]
    assert command[:3] == ["spark-submit", "--master", "spark://spark-master:7077"]
    assert command[command.index("--py-files") + 1] == f"{ROOT}/dist/kar-job.zip"
    assert command[-5:] == [
        f"{ROOT}/jobs/prepare.py",
        *("--conf", f"{ROOT}/conf/cluster.yaml"),
        *("--run-id", "{{ run_id }}"),
    ]
    load_config(command[-3])  # the config the DAG submits validates


def test_ray_jobs_run_existing_stage_scripts_with_valid_arguments(dag_info: dict):
    parser = cli.build_parser()
    stages = []
    for task_id in ("generate_encode", "adapt", "publish", "report", "maintain"):
        # As bash will split it: the whole chain must reach Ray as one entrypoint.
        *submit, dashdash, entrypoint = shlex.split(dag_info["tasks"][task_id]["bash"])
        assert submit == [
            "ray",
            *("job", "submit", "--address", "http://ray-head:8265", "--working-dir", str(ROOT)),
        ]
        assert dashdash == "--"
        for command in entrypoint.split(" && "):
            python, script, *args = shlex.split(command)
            assert python == "python" and (ROOT / script).is_file(), script
            stage = Path(script).stem
            # Every stage records under the DAG run's id, as Airflow renders it.
            assert args[args.index("--run-id") + 1] == "{{ run_id }}"
            args = [AIRFLOW_RUN_ID if a == "{{ run_id }}" else a for a in args]
            parsed = parser.parse_args([stage, *args])  # exits (fails the test) on a bad flag
            assert parsed.run_id == AIRFLOW_RUN_ID
            load_config(ROOT / parsed.conf, parsed.overrides)
            stages.append(stage)
    assert stages == ["generate", "encode", "adapt", "publish", "report", "maintain"]


def test_cron_example_runs_on_the_dag_schedule(dag_info: dict):
    line = next(
        s
        for s in (ROOT / "conf" / "cron" / "kar-weekly").read_text().splitlines()
        if s and not s.startswith(("#", "SHELL", "PATH", "KAR_"))
    )
    assert " ".join(line.split()[:5]) == dag_info["schedule"]
    assert "jobs/run.py" in line and "--py-files" in line
