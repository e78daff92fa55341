"""The weekly schedules run for real: `airflow dags test kar_weekly` twice (Airflow 3 in its
own venv, `make airflow`) against a Ray head with token auth that the test starts, with
spark-submit in local mode through an Airflow connection variable; then the cron line of
conf/cron/kar-weekly under cron's own environment. KAR_HOME is an unpacked copy of the
checkout (packages, conf, the `make dist` zip), so nothing is written into the checkout."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pytest
import yaml
from suite_paths import CACHE, ROOT

from jobs.plumbing import schemas, tables
from jobs.plumbing.config import load_config
from jobs.rules import vectors

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
AIRFLOW = ROOT / ".venv-airflow" / "bin" / "airflow"
TASKS = {"prepare", "generate_encode", "adapt", "publish", "report", "maintain"}
DATA_TABLES = ("prompts", "samples", "attributes", "knowledge", "embeddings", "vectors")
# A slice small enough for two DAG runs and a cron run on 2 cores.
SLICE = {
    ("data", "sample", "max_users"): 8,
    ("data", "sample", "max_items"): 8,
    ("llm", "max_new_tokens"): 8,
    ("llm", "batch_size"): 8,
    ("adapt", "epochs"): 1,
}


@pytest.fixture(scope="module")
def kar_home(tmp_path_factory: pytest.TempPathFactory, dist_zip: Path) -> Path:
    """An unpacked release: the packages, conf/ and dist/kar-job.zip (`make dist`)."""
    home = tmp_path_factory.mktemp("kar-home")
    skip = shutil.ignore_patterns("__pycache__")
    for name in ("jobs", "factors", "encoders", "adapters", "conf"):
        shutil.copytree(ROOT / name, home / name, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, home / name)
    (home / "dist").mkdir()
    shutil.copy(dist_zip, home / "dist" / "kar-job.zip")
    return home


def write_conf(path: Path, out: Path, ml100k: Path, **changes: object) -> Path:
    """conf/local.yaml with absolute paths (as a deployment's config has), the slice and
    `changes` (dotted key -> value)."""
    doc = yaml.safe_load((ROOT / "conf" / "local.yaml").read_text())
    settings = {("run", "output_dir"): str(out), ("run", "cache_dir"): str(CACHE)}
    settings |= {("data", "path"): str(ml100k), **SLICE}
    settings |= {tuple(k.split(".")): v for k, v in changes.items()}
    for keys, value in settings.items():
        node = doc
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    path.write_text(yaml.safe_dump(doc))
    load_config(path)  # the config validates
    return path


def task_states(airflow_home: Path) -> dict[str, dict[str, str]]:
    """run_id -> task_id -> state, from Airflow's metadata database."""
    with sqlite3.connect(airflow_home / "airflow.db") as db:
        rows = db.execute(
            "SELECT run_id, task_id, state FROM task_instance WHERE dag_id = 'kar_weekly'"
        ).fetchall()
    states: dict[str, dict[str, str]] = {}
    for run_id, task_id, state in rows:
        states.setdefault(run_id, {})[task_id] = state
    return states


def content_versions(conf) -> dict[str, int | None]:
    return {n: tables.content_version(conf.table_path(n)) for n in DATA_TABLES}


FEATURE_TABLES = (
    ("user", "features_user", "user_id", schemas.USER_FEATURES),
    ("item", "features_item", "item_id", schemas.ITEM_FEATURES),
)


def assert_one_feature_row_per_entity_and_version(conf) -> None:
    """features_user / features_item hold each entity of the live version once, and no
    entity twice in any version."""
    published = vectors.resolve(conf.table_path("vectors"))
    live = vectors.read(published)
    for kind, name, id_col, schema in FEATURE_TABLES:
        rows = tables.read(conf.table_path(name), schema)
        mine = rows.filter(pc.equal(rows.column("vectors_version"), published.version))
        expected = live.filter(pc.equal(live.column("kind"), kind)).column("entity_id")
        assert sorted(mine.column(id_col).to_pylist()) == sorted(expected.to_pylist()), name
        keys = rows.group_by([id_col, "vectors_version"]).aggregate([([], "count_all")])
        assert pc.max(keys.column("count_all")).as_py() == 1, name


@pytest.fixture(scope="module")
def weeks(ray_head, kar_home: Path, ml100k: Path, tmp_path_factory: pytest.TempPathFactory):
    """Two weekly DAG runs on unchanged input; yields what the assertions need."""
    if not AIRFLOW.exists():
        pytest.skip(f"{AIRFLOW} missing: `make airflow` builds Airflow's own venv")
    address, ray_env = ray_head
    work = tmp_path_factory.mktemp("airflow")
    # Retention 0: each week's maintain vacuums every file the newest versions do not use, so
    # the next week reads its pinned versions past a vacuum.
    conf_file = write_conf(work / "kar.yaml", work / "out", ml100k, **{"run.retain_hours": 0})
    home = work / "home"
    env = {
        **ray_env,  # RAY_AUTH_MODE=token and RAY_AUTH_TOKEN: the worker's environment
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",  # ray, spark-submit, python3
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "conf" / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # spark-submit --master local[2] (a JSON connection: a URI's host takes no brackets)
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": "local[2]"}),
        "PYSPARK_PYTHON": sys.executable,
        "KAR_HOME": str(kar_home),
        "KAR_CONF": str(conf_file),
        "KAR_RAY_ADDRESS": address,
        "KAR_RETRIES": "0",  # a failure fails now instead of after a 10-minute retry delay
    }

    def airflow(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [str(AIRFLOW), *args], env=env, capture_output=True, text=True, timeout=900
        )
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
        return proc

    conf = load_config(conf_file)
    airflow("db", "migrate")
    outputs = [airflow("dags", "test", "kar_weekly", "2026-11-30")]
    first = content_versions(conf)
    outputs.append(airflow("dags", "test", "kar_weekly", "2026-12-07"))
    return {
        "conf": conf,
        "conf_file": conf_file,
        "home": home,
        "states": task_states(home),
        "first": first,
        "second": content_versions(conf),
        # Each week's `dags test` output (the tasks' logs included).
        "logs": [proc.stdout + proc.stderr for proc in outputs],
        "token": ray_env["RAY_AUTH_TOKEN"],
    }


def test_both_weekly_dag_runs_succeed_on_the_ray_cluster(weeks):
    states = weeks["states"]
    assert len(states) == 2, states
    for run_id, tasks in states.items():
        assert tasks == dict.fromkeys(TASKS, "success"), run_id
    # prepare ran under spark-submit with the connection's master, which wins over the
    # config's spark.master (local[*]); spark-submit merges the driver's log into its output.
    first_week = weeks["logs"][0]
    assert "spark session: master local[2]" in first_week
    assert "(from spark-submit: spark.master" in first_week
    conf = weeks["conf"]
    # The first week generated and published; each task ran under the DAG run's id.
    runs = tables.read(conf.table_path("runs"), schemas.RUNS).to_pylist()
    by_run = {r["run_id"]: r for r in runs if r["command"] == "generate"}
    assert set(by_run) == set(states)
    first_run, second_run = sorted(by_run, key=lambda r: by_run[r]["started_at"])
    assert by_run[first_run]["prompts_generated"] > 0
    assert vectors.resolve(conf.table_path("vectors")).metadata["run_id"] == first_run


def test_a_week_with_nothing_new_writes_nothing_but_maintenance(weeks):
    conf = weeks["conf"]
    # The first week's maintain compacted and vacuumed, so the checks below can fail.
    first_week = weeks["logs"][0]
    deleted = [
        int(n) for n in re.findall(r"maintain: compacted \d+ files, deleted (\d+)", first_week)
    ]
    assert deleted and deleted[0] > 0, "maintain vacuumed nothing"
    latest = {n: tables.open_table(conf.table_path(n)).version() for n in DATA_TABLES}
    assert any(latest[n] > weeks["first"][n] for n in DATA_TABLES), "no maintenance commit"
    runs = tables.read(conf.table_path("runs"), schemas.RUNS).to_pylist()
    last = max((r for r in runs if r["command"] == "generate"), key=lambda r: r["started_at"])
    assert last["prompts"] == 0 and last["prompts_generated"] == 0
    # No data table changed in the second week (its maintenance commits are not changes).
    assert weeks["second"] == weeks["first"]
    assert_one_feature_row_per_entity_and_version(conf)


def test_the_ray_token_is_in_no_log_or_command(weeks):
    token = weeks["token"]
    # `dags test` runs the tasks in its own process: their logs are its output.
    logs = "".join(weeks["logs"])
    assert "ray job submit" in logs and "succeeded" in logs  # so the check can fail
    assert token not in logs
    with sqlite3.connect(weeks["home"] / "airflow.db") as db:
        query = "SELECT rendered_fields FROM rendered_task_instance_fields"
        rendered = db.execute(query).fetchall()
    assert len(rendered) == 2 * len(TASKS)
    assert all("--run-id" in text and token not in text for (text,) in rendered)


def cron_line() -> tuple[dict[str, str], str]:
    """(the variables conf/cron/kar-weekly sets, its command without the schedule)."""
    variables, command = {}, None
    for line in (ROOT / "conf" / "cron" / "kar-weekly").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if m := re.fullmatch(r"([A-Z_]+)=(.*)", line):
            variables[m[1]] = m[2]
        else:
            assert command is None, "one cron line"
            command = line.split(None, 5)[5]
    assert command is not None
    return variables, command


def test_cron_line_runs_the_week_under_crons_environment_and_publishes(weeks, kar_home):
    """The cron line as cron runs it (env -i, cron's PATH, the command through SHELL), with
    the variables its comment tells a user to set. A changed adapt setting and an open gate
    make it publish a new vectors version, which it serves."""
    conf = weeks["conf"]
    live = vectors.resolve(conf.table_path("vectors")).version
    cron_conf = write_conf(
        weeks["conf_file"].with_name("cron.yaml"),
        conf.run.output_dir,
        Path(conf.data.path),
        **{"adapt.epochs": 2, "adapt.gate.enabled": False},
    )
    variables, command = cron_line()
    assert set(variables) >= {"SHELL", "KAR_HOME", "KAR_CONF", "KAR_SPARK_MASTER"}
    variables |= {"KAR_HOME": str(kar_home), "KAR_CONF": str(cron_conf)}
    variables |= {"KAR_SPARK_MASTER": "local[2]"}
    shutil.rmtree(kar_home / ".venv", ignore_errors=True)
    (kar_home / ".venv").symlink_to(ROOT / ".venv")  # the release's venv (`make setup`)
    cron_env = ["PATH=/usr/bin:/bin", f"HOME={os.environ.get('HOME', '/root')}", "LOGNAME=kar"]
    cron_env += [f"{k}={v}" for k, v in variables.items()]
    proc = subprocess.run(
        ["env", "-i", *cron_env, variables["SHELL"], "-c", command],
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = kar_home / "logs" / "kar-weekly.log"
    assert proc.returncode == 0, log.read_text()[-6000:] if log.exists() else proc.stderr
    published = vectors.resolve(conf.table_path("vectors"))
    assert published.version > live
    # `jobs/cli.py run` on unchanged input asked nothing and rewrote no input of adapt.
    summaries = [
        json.loads(s) for s in re.findall(r"^\{.*\"prompts_generated\".*\}$", log.read_text(), re.M)
    ]
    assert summaries and summaries[-1]["prompts_generated"] == 0
    unchanged = {n: v for n, v in content_versions(conf).items() if n != "vectors"}
    assert unchanged == {n: v for n, v in weeks["second"].items() if n != "vectors"}
    assert_one_feature_row_per_entity_and_version(conf)
    assert f'"vectors_version": {published.version}' in log.read_text()  # kar publish ran
