"""bench/scale.py: its synthetic inputs have the promised shape, a failing stage is reported."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench.scale import (
    StageFigures,
    driver_rss_ratio,
    run_stage,
    store_over_disk,
    workers_rss_ratio,
    write_inputs,
)


def test_inputs_are_seeded_zipf_with_mean_history_near_30(tmp_path: Path) -> None:
    stats = write_inputs(tmp_path / "a", 5000, seed=7)
    assert (stats.users, stats.items) == (5000, 500)
    assert 26 <= stats.mean_history <= 34
    inter = pq.read_table(tmp_path / "a" / "interactions")
    assert inter.num_rows == stats.interactions
    pairs = inter.select(["user_id", "item_id"]).group_by(["user_id", "item_id"]).aggregate([])
    assert pairs.num_rows == inter.num_rows, "no item twice in a history"
    counts = np.sort(inter.group_by("item_id").aggregate([("user_id", "count")]).column(1))[::-1]
    assert counts[:5].sum() > 0.1 * inter.num_rows, "a few items hold a large share (Zipf)"
    assert (
        pc.min(inter.column("rating")).as_py() >= 1 and pc.max(inter.column("rating")).as_py() <= 5
    )
    assert pq.read_table(tmp_path / "a" / "users").num_rows == 5000
    write_inputs(tmp_path / "b", 5000, seed=7)
    assert pq.read_table(tmp_path / "b" / "interactions").equals(inter)


def test_a_failing_stage_is_reported_with_its_exit_code_and_error(tmp_path: Path) -> None:
    args = argparse.Namespace(stage_timeout=120.0, sample_interval=0.1, online=False)
    missing = tmp_path / "missing.yaml"
    figures = run_stage("prepare", missing, tmp_path, args, 10, str(tmp_path / "output"))
    assert figures.status == "failed" and figures.exit_code == 2
    assert "does not exist" in (figures.error or "")
    assert figures.driver_rss_mb and figures.driver_rss_mb > 0


def test_driver_rss_ratio_is_largest_over_smallest_size() -> None:
    stages = {
        "10000": {"prepare": StageFigures("ok", driver_rss_mb=200.0)},
        "100000": {
            "prepare": StageFigures("ok", driver_rss_mb=250.0),
            "adapt": StageFigures("failed", driver_rss_mb=300.0),
        },
    }
    assert driver_rss_ratio(stages) == 1.5
    assert driver_rss_ratio({"10000": stages["10000"]}) is None


def test_workers_rss_ratio_is_per_stage_largest_over_smallest_size() -> None:
    stages = {
        "10000": {
            "adapt": StageFigures("ok", ray_workers_rss_mb=400.0),
            "encode": StageFigures("ok", ray_workers_rss_mb=100.0),
        },
        "100000": {
            "adapt": StageFigures("ok", ray_workers_rss_mb=500.0),
            "encode": StageFigures("failed"),
        },
    }
    ratios = workers_rss_ratio(stages)
    assert (ratios["adapt"], ratios["encode"], ratios["prepare"]) == (1.25, None, None)
    assert workers_rss_ratio({"10000": stages["10000"]})["adapt"] is None


def test_store_figures_are_divided_by_the_same_stage_on_disk() -> None:
    disk = {"10": {"prepare": StageFigures(status="ok", rows_per_s=100.0)}}
    store = {
        "10": {
            "prepare": StageFigures(status="ok", rows_per_s=50.0),
            "encode": StageFigures(status="failed"),
        }
    }
    assert store_over_disk(disk, store) == {"10": {"prepare": 0.5, "encode": None}}
