"""Airflow DAG for the weekly KAR run: Spark where the stage is Spark, Ray jobs where it is Ray.

    prepare (spark-submit) -> generate_encode (ray job) -> adapt (ray job)
        -> publish (ray job: kar publish --online) -> report (ray job: kar report)
        -> maintain (ray job: kar maintain)

Each stage skips work whose inputs did not change, so a retried or re-run task
is safe, and a week with nothing new writes nothing but maintenance commits. The
deployment is described by environment variables of the Airflow scheduler,
dag-processor and workers (read when the DAG is parsed):

    KAR_HOME          checkout (or unpacked release) with jobs/, conf/ and dist/kar-job.zip
    KAR_CONF          job config: relative to KAR_HOME, or absolute (default conf/cluster.yaml);
                      its paths or URIs must be reachable from every Ray node, not relative
                      to KAR_HOME (`ray job submit --working-dir` uploads the checkout
                      without its git-ignored files: no data, models or outputs)
    KAR_RAY_ADDRESS   Ray dashboard address for `ray job submit` (default http://127.0.0.1:8265)
    KAR_RAY           `ray` executable on the Airflow worker (default: ray on PATH)
    KAR_SPARK_CONN    Airflow connection for spark-submit (default spark_default); the
                      worker needs `spark-submit` on its PATH with pyspark's python3 beside
                      it (pyspark's spark-submit finds Spark through the python3 on PATH)
    KAR_RETRIES       retries of a failed task, 10 minutes apart (default 1)

Ray's token authentication (which `ray start --head` turns on in Ray 2.60) reaches
`ray job submit` from the Airflow worker's environment, as Ray documents: RAY_AUTH_MODE=token
and RAY_AUTH_TOKEN (or the token file ~/.ray/auth_token), set by the deployment (a secret
mounted into the worker's environment). The token never enters a command line, so it is in
no rendered template and no task log.

Copy (or symlink) this file into Airflow's dags folder.
"""

from __future__ import annotations

import os
import shlex
from datetime import datetime, timedelta

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

KAR_HOME = os.environ.get("KAR_HOME", "/opt/kar")
KAR_CONF = os.environ.get("KAR_CONF", "conf/cluster.yaml")
RAY_ADDRESS = os.environ.get("KAR_RAY_ADDRESS", "http://127.0.0.1:8265")
RAY = os.environ.get("KAR_RAY", "ray")
SPARK_CONN = os.environ.get("KAR_SPARK_CONN", "spark_default")
RETRIES = int(os.environ.get("KAR_RETRIES", "1"))
# Mondays 03:00 UTC; the cron example in conf/cron/kar-weekly uses the same line.
SCHEDULE = "0 3 * * 1"
# Every task passes the DAG run's id (rendered by Airflow): one run id for the whole run,
# so `runs` holds each stage's row under it, the report shows every stage and the vectors
# version is named after the run.
RUN_ID = ["--run-id", "{{ run_id }}"]


def stage(name: str, *args: str) -> str:
    """One stage through the job's entry file with the job config and the run's id;
    `ray.address=auto` joins the job's Ray cluster."""
    command = ["python", "jobs/cli.py", name, "--conf", KAR_CONF, *RUN_ID, *args]
    return shlex.join([*command, "ray.address=auto"])


def ray_job(*commands: str) -> str:
    """`ray job submit` of `commands` (run in order) with KAR_HOME as the working dir.

    The submitter waits for the job and exits non-zero when it fails (Ray >= 2.7),
    which fails the Airflow task. `ray job submit` rebuilds its entrypoint from the
    words after `--` with `shlex.join` and runs it in /bin/sh, so a chain passed as one
    word would reach the shell as a single command name: it goes as `bash -c CHAIN`,
    three words that survive the round trip. generate and encode share one job: the
    GPU-side stages of a run, on one working-dir upload and one cluster connection.
    """
    submit = [RAY, "job", "submit", "--address", RAY_ADDRESS, "--working-dir", KAR_HOME]
    return shlex.join([*submit, "--", "bash", "-c", " && ".join(commands)])


with DAG(
    dag_id="kar_weekly",
    description="KAR: LLM knowledge -> reasoning/fact vectors in Delta, published to Feast",
    schedule=SCHEDULE,
    start_date=datetime(2026, 1, 5),
    catchup=False,
    max_active_runs=1,  # two runs would race on the same Delta tables
    default_args={"retries": RETRIES, "retry_delay": timedelta(minutes=10)},
    tags=["kar"],
) as dag:
    prepare = SparkSubmitOperator(
        task_id="prepare",
        conn_id=SPARK_CONN,
        application=f"{KAR_HOME}/jobs/cli.py",
        py_files=f"{KAR_HOME}/dist/kar-job.zip",
        application_args=["prepare", "--conf", os.path.join(KAR_HOME, KAR_CONF), *RUN_ID],
        name="kar-prepare",
    )
    generate_encode = BashOperator(
        task_id="generate_encode",
        bash_command=ray_job(stage("generate"), stage("encode")),
        execution_timeout=timedelta(hours=24),
    )
    adapt = BashOperator(task_id="adapt", bash_command=ray_job(stage("adapt")))
    publish = BashOperator(task_id="publish", bash_command=ray_job(stage("publish", "--online")))
    # The run report, from the tables, beside them (<run.output_dir>/reports/<run_id>/).
    report = BashOperator(task_id="report", bash_command=ray_job(stage("report")))
    # Last: compact the small files the stages appended, vacuum files no version needs.
    maintain = BashOperator(task_id="maintain", bash_command=ray_job(stage("maintain")))

    prepare >> generate_encode >> adapt >> publish >> report >> maintain
