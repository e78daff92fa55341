"""Run report over real Delta tables: drift splits unchanged from changed entities, every plot
is a real PNG, the CLI prints where the report is, and a missing run names the fix."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from table_rows import run_row, vectors_table
from table_writes import write_answers

from jobs import cli, report
from jobs.plumbing import accounting, schemas, tables
from jobs.plumbing.accounting import GenerateResult
from jobs.plumbing.config import Config
from jobs.plumbing.errors import InputError

DIM = 16
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def record_run(conf: Config, run_id: str) -> None:
    """A `kar run` that just finished: its stage seconds and one answer cut at max tokens."""
    now = datetime.now(UTC)
    accounting.record(
        conf,
        run_row(
            run_id,
            started_at=now - timedelta(minutes=5),
            finished_at=now,
            stage_seconds={"prepare": 12.0, "generate": 30.5, "encode": 4.0, "total": 50.0},
            statuses={"ok": 5, "length": 1},
        ),
    )


def publish(conf: Config, vectors: dict[tuple[str, str], tuple[str, np.ndarray]]) -> None:
    """A new vectors version: (kind, id) -> (knowledge fingerprint, vector)."""
    rows = vectors_table(
        {k: v for k, (_, v) in vectors.items()},
        "v",
        fingerprints={k: fp for k, (fp, _) in vectors.items()},
        created_at=datetime.now(UTC),
    )
    tables.overwrite(conf.table_path("vectors"), rows, schemas.VECTORS)


def test_report_drift_splits_unchanged_from_changed(make_config, capsys):
    conf = make_config()
    rng = np.random.default_rng(0)
    week1 = {
        (kind, str(i)): (f"fp-{kind}{i}", rng.normal(size=DIM))
        for kind in ("user", "item")
        for i in range(10)
    }
    publish(conf, week1)
    # Week 2: users 0-5 keep their knowledge (vector nudged by the retrained adaptor), users
    # 6-9 got new answers (new vectors); items are unchanged; item 9 is gone.
    week2 = {}
    for (kind, i), (fp, vec) in week1.items():
        if kind == "user" and int(i) >= 6:
            week2[kind, i] = (fp + "-new", rng.normal(size=DIM))
        elif (kind, i) != ("item", "9"):
            week2[kind, i] = (fp, vec + 0.05 * rng.normal(size=DIM))
    publish(conf, week2)
    record_run(conf, "run-2")
    write_answers(conf, "run-2", [("user", "ok")] * 4 + [("item", "length")])

    path = Path(report.write(conf).uri)
    assert path == Path(conf.run.output_dir) / "reports" / "run-2" / "report.md"
    for name in report.PLOTS:
        png = (path.parent / f"{name}.png").read_bytes()
        assert png.startswith(PNG_MAGIC) and len(png) > 5000, name
    assert not [p for p in path.parent.parent.iterdir() if p.name.startswith(".")]

    live = report.vectors.resolve(conf.table_path("vectors"))
    d = report.drift(conf, live, report.vectors.read(live))
    assert d.previous_version == 0
    assert {k: {g: len(v) for g, v in gs.items()} for k, gs in d.cosines.items()} == {
        "user": {"unchanged": 6, "changed": 4},
        "item": {"unchanged": 9},
    }
    assert d.cosines["user"]["unchanged"].min() > 0.95
    assert d.cosines["user"]["changed"].max() < 0.9

    text = path.read_text()
    assert "# KAR run report: run-2" in text
    assert "| user | unchanged | 6 |" in text and "| user | changed | 4 |" in text
    assert "| generate | 30.5 |" in text and "| length | 1 |" in text
    assert "Live version 1" in text
    assert "## Knowledge age" in text and "| user | 4 |" in text and "| item | 1 |" in text

    # Rebuilding (kar report) replaces the folder whole and prints where it is.
    conf_file = Path(conf.run.output_dir) / "conf.yaml"
    conf_file.write_text(json.dumps({"run": {"output_dir": str(conf.run.output_dir)}}))
    cli.main(["report", "--conf", str(conf_file), "--run-id", "run-2"])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["report"] == str(path)
    assert [p.rsplit("/", 1)[1] for p in printed["plots"]] == [f"{n}.png" for n in report.PLOTS]


def test_first_version_has_no_drift_and_unknown_run_names_the_fix(make_config):
    conf = make_config()
    publish(conf, {("user", "1"): ("fp", np.ones(DIM))})
    record_run(conf, "run-1")
    path = Path(report.write(conf, "run-1").uri)
    assert "First published version: nothing to compare with." in path.read_text()
    with pytest.raises(InputError, match="--run-id"):
        report.write(conf, "no-such-run")


def test_stages_run_apart_under_one_run_id_make_one_report(make_config):
    """An orchestrator runs each stage as its own task with the DAG run's --run-id: each
    stage appends its `runs` row and the report adds them up (another run stays out)."""
    conf = make_config()
    publish(conf, {("user", "1"): ("fp", np.ones(DIM))})
    record_run(conf, "other-run")
    started = datetime.now(UTC)
    generated = GenerateResult(4, 4, 900, 256, 30.0, 0, requests=5, statuses={"ok": 4})
    for command, gen, seconds in [
        ("prepare", None, {"prepare": 20.0}),
        ("generate", generated, {"generate_llm": 25.0, "generate": 30.0}),
        ("encode", None, {"encode": 3.5}),
        ("adapt", None, {"adapt": 2.0}),
    ]:
        row = accounting.runs_row(conf, "dag-run-7", command, gen, seconds, started)
        accounting.record(conf, row)

    text = report.write(conf, "dag-run-7").read_bytes().decode()
    assert "`kar prepare, generate, encode, adapt`" in text
    for stage, seconds in [("prepare", 20.0), ("generate", 30.0), ("encode", 3.5), ("adapt", 2.0)]:
        assert f"| {stage} | {seconds:.1f} |" in text
    assert "4 of 4 pending prompts answered with 5 LLM requests; 900 input" in text
    assert "| ok | 4 |" in text and "| length |" not in text  # other-run's statuses stay out
