"""The real pipeline end to end through the `kar` CLI: Spark local, Ray local, the bundled
tiny LLM, the bundled encoder, Delta tables in a temp dir, on a slice of real ML-100K."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from suite_paths import CACHE, ROOT

from jobs.plumbing import schemas

KAR = str(Path(sys.executable).with_name("kar"))
pytestmark = pytest.mark.e2e

SLICE = [
    "data.sample.max_items=20",
    "data.sample.max_users=30",
    "llm.max_new_tokens=16",
    "llm.batch_size=8",
    "adapt.epochs=2",
]


def kar_run(out: Path, data: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [
        KAR,
        "run",
        "--conf",
        str(ROOT / "conf" / "local.yaml"),
        f"run.output_dir={out}",
        f"run.cache_dir={CACHE}",
        f"data.path={data}",
        *SLICE,
        *extra,
    ]
    return subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=ROOT)


def summary_of(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, ml100k: Path) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("e2e") / "out"
    return out, summary_of(kar_run(out, ml100k))


def versions(out: Path) -> dict[str, int]:
    return {p.name: DeltaTable(str(p)).version() for p in (out / "tables").iterdir()}


def test_first_run_fills_every_table(first_run):
    out, summary = first_run
    assert set(summary["tables"]) == set(schemas.TABLES)
    for name, info in summary["tables"].items():
        table = DeltaTable(info["path"])
        assert table.version() == info["version"]
        assert pa.schema(table.schema().to_arrow()).equals(schemas.TABLES[name]), name

    knowledge = DeltaTable(summary["tables"]["knowledge"]["path"]).to_pyarrow_table().to_pylist()
    windows = {}
    for r in knowledge:
        windows[r["window"]] = windows.get(r["window"], 0) + 1
    # Every user in the production window, plus KAR's cut once (the adaptor's training text).
    assert windows == {"production": 30, "evaluation": 30, "item": 20}
    assert summary["prompts_generated"] == 80 and summary["bootstrap_prompts"] == 30
    assert summary["refresh"] == {"user": {"new": 30}, "item": {"new": 20}}
    assert summary["knowledge_age_days"]["user"] == {
        "entities": 30,
        "p50": 0.0,
        "p90": 0.0,
        "max": 0.0,
    }
    for row in knowledge:
        assert row["text"].strip()
        assert row["model_id"] == "bundled:smollm2-135m-instruct"
        assert row["finish_reason"] in {"stop", "length"}
        assert 0 < row["output_tokens"] <= 16 and row["input_tokens"] > 50
        assert len(row["fingerprint"]) == 64 and row["factor_version"] and row["template_version"]
        assert row["run_id"] == summary["run_id"]

    embeddings = DeltaTable(summary["tables"]["embeddings"]["path"]).to_pyarrow_table()
    assert embeddings.num_rows == 80
    assert all(len(v) == 384 for v in embeddings.column("embedding").to_pylist())

    vectors = DeltaTable(summary["tables"]["vectors"]["path"]).to_pyarrow_table().to_pylist()
    assert len(vectors) == 50
    assert {r["version_id"] for r in vectors} == {summary["run_id"]}
    for row in vectors:
        assert row["dim"] == 32 and len(row["vector"]) == 32
        assert all(math.isfinite(x) for x in row["vector"])
        assert row["llm_model"] and row["encoder_model"] and row["input_fingerprint"]
    assert 0 < summary["auc_without"] < 1 and 0 < summary["auc_with"] < 1
    assert set(summary["stage_seconds"]) >= {"prepare", "generate", "encode", "adapt", "total"}
    report = Path(summary["report"])
    assert report == out.resolve() / "reports" / summary["run_id"] / "report.md"
    assert f"# KAR run report: {summary['run_id']}" in report.read_text()
    assert (report.parent / "drift.png").is_file()
    assert (report.parent / "knowledge_age.png").is_file()


def test_corrupted_interactions_fail_with_file_and_line(first_run, ml100k, tmp_path):
    out, _ = first_run
    bad = tmp_path / "ml-100k"
    shutil.copytree(ml100k, bad)
    inter = bad / "ml-100k.inter"
    lines = inter.read_text().splitlines(keepends=True)
    lines[41] = "196\t242\tthree\t881250949\n"  # line 42 of the file (1-based)
    inter.write_text("".join(lines))
    before = versions(out)

    proc = kar_run(out, bad)

    assert proc.returncode == 2
    assert str(inter) in proc.stderr and "line 42" in proc.stderr and "rating" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert versions(out) == before


def test_evaluate_reuses_the_knowledge_and_reports_paired_lifts(first_run, ml100k):
    """`kar evaluate` on the first run's tables: every row and ablation, no generation."""
    out, _ = first_run
    before = versions(out)
    report_dir = out.parent / "report"
    args = [
        KAR,
        "evaluate",
        "--conf",
        str(ROOT / "conf" / "local.yaml"),
        f"run.output_dir={out}",
        f"run.cache_dir={CACHE}",
        f"data.path={ml100k}",
        *SLICE,
        "evaluate.seeds=[1,2]",
        f"evaluate.out_dir={report_dir}",
    ]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=ROOT)
    result = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {}
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert result["skipped"] == {}
    # Per seed: 3 baselines + 5 text variants x (3 co-trained + 2 frozen) = 28 trainings.
    assert result["runs"] == 2 * 28
    runs = json.loads(Path(result["results"]).read_text())["runs"]
    assert {(r["backbone"], r["mode"]) for r in runs} == {
        (b, m) for b in ("din", "deepfm", "dcnv2") for m in ("none", "cotrained")
    } | {("deepfm", "frozen"), ("dcnv2", "frozen")}
    # Tiny test slices (3 users) can rank perfectly; each seed's slice holds both labels.
    assert all(0 <= r["auc"] <= 1 and r["logloss"] > 0 for r in runs)
    report = Path(result["report"]).read_text()
    assert report in proc.stdout
    assert "| DIN | cotrained | KAR: history + answer / answer |" in report
    assert "| DCNv2 | frozen | no LLM: history / title, year, genres |" in report
    assert "LLM answers for 30/30 users and 20/20 items" in report
    assert Path(result["chart"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Nothing was generated and no weekly table moved; frozen vectors went to evaluate's own table.
    assert versions(out) == before
    assert DeltaTable(str(out / "evaluate" / "tables" / "vectors")).version() == 2 * 5 - 1
