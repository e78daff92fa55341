"""Data-plane scale: the whole job on synthetic data at growing user counts, stage by stage.

Writes synthetic inputs in the generic layout (Parquet: interactions, items,
users) with Zipf item popularity and lognormal history lengths (mean ~30), then
runs `kar prepare`, `generate`, `encode`, `adapt` and `publish` on each size,
each stage as its own process, with the LLM and the encoder replaced by the
instant stand-ins of bench/standins.py (named in the output): what is measured
is the job around the models, whose own cost is bench/generation.py's.

Per size and stage: wall seconds, rows (the stage's unit: interactions for
prepare, prompts for generate, vectors for encode and adapt, entities for
publish) and rows/s, the peak RSS of the stage's Python driver process (its own,
children excluded), of Spark's JVM (in local mode it also executes) and of the
Ray worker processes (their summed proportional set size at the fullest sample: pages
of the shared object store count once, not once per worker that maps them). A stage that
fails or runs past --stage-timeout is reported with its exit code and last error
line; the size's later stages are skipped and the next size runs. The last line
is one JSON object: sizes, stages, standins, data, driver_rss_ratio (peak driver
RSS over all stages at the largest size / at the smallest) and workers_rss_ratio (per
stage, the same for its Ray workers' summed peak).

    .venv/bin/python bench/scale.py                              # 10k and 100k users
    .venv/bin/python bench/scale.py --sizes 10000 100000 1000000 --spark-driver-memory 8g
    .venv/bin/python bench/scale.py --output-dir s3://bucket/bench   # disk, then the store
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: `jobs` and `bench` from this checkout

from jobs.plumbing import logs  # noqa: E402
from jobs.plumbing.config import load_config  # noqa: E402

log = logging.getLogger("bench.scale")

STANDINS = {
    "llm.engine": "bench.standins:InstantLLM",
    "encoder.engine": "bench.standins:InstantEncoder",
}
STAGES = ("prepare", "generate", "encode", "adapt", "publish")
# Where a stage's row count comes from when its JSON output lacks the field: the table it
# adds rows to (row counts from Delta metadata, before and after the stage).
RESULT_ROWS = {
    "generate": ("prompts_generated",),
    "encode": ("encoded",),
    "adapt": ("vectors_written",),
    "publish": ("users", "items"),
}
STAGE_TABLE = {"generate": "knowledge", "encode": "embeddings", "adapt": "vectors"}
# Data cutoff of every size: fixed, so the same seed gives the same run.
AS_OF = datetime(2026, 11, 1, tzinfo=UTC)
HISTORY_MEAN = 30.0
HISTORY_SIGMA = 1.0  # lognormal shape: median ~18, 99th percentile ~185
ZIPF_EXPONENT = 1.0
OVERDRAW = 3  # Zipf draws per history item wanted (repeats are dropped)
MAX_ITEMS = 200_000  # items = users / 10, capped (catalogues grow slower than audiences)
USER_CHUNK = 100_000  # users generated and written per Parquet part
MB = 1 << 20

# fmt: off
_WORDS = [
    "silent", "golden", "broken", "last", "hidden", "northern", "midnight", "little", "wild",
    "crimson", "paper", "glass", "river", "city", "garden", "empire", "summer", "winter",
    "letter", "station", "harbor", "mirror", "shadow", "kingdom", "road", "dream", "island",
    "signal", "orchard", "machine", "comet", "ladder", "lantern",
]
_GENRES = [
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
]
_OCCUPATIONS = [
    "administrator", "artist", "doctor", "educator", "engineer", "entertainment", "executive",
    "healthcare", "homemaker", "lawyer", "librarian", "marketing", "none", "other", "programmer",
    "retired", "salesman", "scientist", "student", "technician", "writer",
]
# fmt: on
_RATING_P = [0.06, 0.11, 0.27, 0.34, 0.22]


@dataclass
class DataStats:
    users: int
    items: int
    interactions: int
    mean_history: float
    seconds: float


@dataclass
class StageFigures:
    status: str  # ok | failed | timeout | interrupted | skipped
    wall_s: float | None = None
    rows: int | None = None
    rows_per_s: float | None = None
    driver_rss_mb: float | None = None
    jvm_rss_mb: float | None = None
    ray_workers_rss_mb: float | None = None
    exit_code: int | None = None
    error: str | None = None


# --- synthetic inputs ------------------------------------------------------------------------


def n_items_for(users: int) -> int:
    return max(100, min(users // 10, MAX_ITEMS))


def _items_table(n_items: int, rng: np.random.Generator) -> pa.Table:
    words = np.array(_WORDS)
    a, b = rng.integers(0, len(words), (2, n_items))
    ids = np.arange(1, n_items + 1)
    titles = [
        f"The {x.title()} {y.title()} {i}" for x, y, i in zip(words[a], words[b], ids, strict=True)
    ]
    genres = np.array(_GENRES)
    g1, g2 = rng.integers(0, len(genres), (2, n_items))
    two = rng.random(n_items) < 0.4
    joined = [
        f"{x}|{y}" if t and x != y else x
        for x, y, t in zip(genres[g1], genres[g2], two, strict=True)
    ]
    return pa.table({"item_id": ids, "title": titles, "genres": joined})


def _users_table(first: int, n: int, rng: np.random.Generator) -> pa.Table:
    return pa.table(
        {
            "user_id": np.arange(first, first + n),
            "age": rng.integers(16, 75, n).astype(str),
            "gender": np.where(rng.random(n) < 0.5, "F", "M"),
            "occupation": np.array(_OCCUPATIONS)[rng.integers(0, len(_OCCUPATIONS), n)],
        }
    )


def _interactions_table(
    first: int, n: int, n_items: int, popularity: np.ndarray, cdf: np.ndarray, rng
) -> pa.Table:
    """n users' histories: lognormal lengths (mean HISTORY_MEAN), Zipf items, no item twice.

    Each user draws OVERDRAW times their length from the Zipf law and keeps the first
    distinct items, so popular items do not shorten histories (a short tail can remain
    when a small catalogue runs out of distinct draws).
    """
    mu = math.log(HISTORY_MEAN) - HISTORY_SIGMA**2 / 2
    lengths = np.clip(np.rint(rng.lognormal(mu, HISTORY_SIGMA, n)), 1, n_items // 2)
    lengths = lengths.astype(np.int64)
    users = np.repeat(np.arange(first, first + n, dtype=np.int64), lengths * OVERDRAW)
    ranks = np.minimum(np.searchsorted(cdf, rng.random(len(users))), n_items - 1)
    items = popularity[ranks]
    _, keep = np.unique(users * (n_items + 1) + items, return_index=True)
    keep.sort()  # first occurrences, in draw order (grouped by user)
    users, items = users[keep], items[keep]
    starts = np.searchsorted(users, users, side="left")
    taken = np.arange(len(users)) - starts < lengths[users - first]
    users, items = users[taken], items[taken]
    span = int(timedelta(days=730).total_seconds())
    times = int(AS_OF.timestamp()) - 3600 - rng.integers(0, span, len(users))
    ratings = rng.choice(np.arange(1, 6, dtype=np.int8), len(users), p=_RATING_P)
    return pa.table({"user_id": users, "item_id": items, "rating": ratings, "timestamp": times})


def write_inputs(root: Path, n_users: int, seed: int) -> DataStats:
    """interactions/, items/, users/ Parquet folders under `root`, seeded by `seed` and size."""
    started = time.monotonic()
    rng = np.random.default_rng([seed, n_users])
    n_items = n_items_for(n_users)
    for name in ("interactions", "items", "users"):
        (root / name).mkdir(parents=True, exist_ok=True)
    pq.write_table(_items_table(n_items, rng), root / "items" / "part-0.parquet")
    # Popularity rank -> item id (a random order, so ids say nothing about popularity).
    popularity = rng.permutation(n_items).astype(np.int64) + 1
    weights = 1.0 / np.arange(1, n_items + 1) ** ZIPF_EXPONENT
    cdf = np.cumsum(weights) / weights.sum()
    interactions = 0
    for part, first in enumerate(range(1, n_users + 1, USER_CHUNK)):
        n = min(USER_CHUNK, n_users + 1 - first)
        inter = _interactions_table(first, n, n_items, popularity, cdf, rng)
        pq.write_table(inter, root / "interactions" / f"part-{part}.parquet")
        pq.write_table(_users_table(first, n, rng), root / "users" / f"part-{part}.parquet")
        interactions += inter.num_rows
    return DataStats(
        n_users,
        n_items,
        interactions,
        round(interactions / n_users, 2),
        round(time.monotonic() - started, 1),
    )


# --- config ----------------------------------------------------------------------------------


def bench_config(size_dir: Path, args: argparse.Namespace, store: str | None) -> Path:
    """The shipped conf/local.yaml on the generic inputs with the stand-ins, as one YAML file."""
    data = size_dir / "input"
    overrides: dict[str, Any] = {
        "run.output_dir": output_of(size_dir, store),
        "feature_store.dir": str(size_dir / "feast"),
        "run.cache_dir": str(args.workdir / "cache"),
        "run.as_of": AS_OF.isoformat(),
        "data.format": "generic",
        "data.path": None,
        "data.sample": {"max_items": None, "max_users": None},
        **{
            f"data.{name}": {"path": str(data / name), "format": "parquet"}
            for name in ("interactions", "items", "users")
        },
        "adapt.epochs": args.adapt_epochs,
        "adapt.batch_size": args.adapt_batch_size,
        # Absolute: the stages run in the size's folder, not in the checkout.
        "feature_store.repo": str(ROOT / "conf" / "feast"),
        **STANDINS,
    }
    if args.spark_driver_memory:
        overrides["spark.driver_memory"] = args.spark_driver_memory
    if args.ray_cpus:
        overrides["ray.num_cpus"] = args.ray_cpus
    conf = load_config(
        ROOT / "conf" / "local.yaml",
        [f"{k}={json.dumps(v)}" for k, v in overrides.items()] + list(args.set),
    )
    path = size_dir / "conf.yaml"
    path.write_text(yaml.safe_dump(conf.model_dump(mode="json"), sort_keys=False))
    return path


# --- running and sampling a stage ------------------------------------------------------------


def _peak_rss(proc: psutil.Process) -> int:
    """The process's peak RSS so far (VmHWM on Linux; its current RSS elsewhere)."""
    try:
        with open(f"/proc/{proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return proc.memory_info().rss


def _shared_once(proc: psutil.Process) -> int:
    """The process's proportional set size: shared pages divided among the processes that
    map them. Ray workers map the same object-store pages, which summed RSS would count
    once per worker that read them."""
    try:
        return proc.memory_full_info().pss
    except (AttributeError, psutil.AccessDenied):  # PSS is Linux's
        return proc.memory_info().rss


def _kind(proc: psutil.Process) -> str | None:
    """'jvm', 'ray_worker' or None, from the name and command line (either may be empty)."""
    try:
        name = proc.name()
        cmdline = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    first = cmdline[0] if cmdline else ""
    if name == "java" or first.endswith("/java"):
        return "jvm"
    if first.startswith("ray::") or any(part.endswith("default_worker.py") for part in cmdline):
        return "ray_worker"
    return None


class Sampler:
    """Peak RSS of a stage's driver, its JVM children and its Ray workers, sampled in a loop."""

    def __init__(self, pid: int) -> None:
        self.driver = psutil.Process(pid)
        self.driver_peak = self.jvm_peak = self.ray_peak = 0
        self.seen: dict[int, psutil.Process] = {}

    def sample(self) -> None:
        try:
            self.driver_peak = max(self.driver_peak, _peak_rss(self.driver))
            children = self.driver.children(recursive=True)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return
        ray_rss = 0
        for child in children:
            self.seen.setdefault(child.pid, child)
            try:
                kind = _kind(child)
                if kind == "jvm":
                    self.jvm_peak = max(self.jvm_peak, _peak_rss(child))
                elif kind == "ray_worker":
                    ray_rss += _shared_once(child)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        self.ray_peak = max(self.ray_peak, ray_rss)

    def kill_all(self, proc: subprocess.Popen) -> None:
        """SIGKILL the stage's process group and every descendant seen (Ray may start its own)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for child in self.seen.values():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                child.kill()


def _last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return {}
    return {}


def _last_error(text: str) -> str | None:
    """The most telling line of a stage's stderr: the last error-looking one, else the last."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "ERROR" in line or "Exception" in line:
            return line[:400]
    return lines[-1][:400] if lines else None


def delta_rows(path: str) -> int:
    """Rows of the Delta table at `path` (a path or URI) from its metadata (0 if none)."""
    from jobs.plumbing import tables

    table = tables.open_table(path)
    if table is None:
        return 0
    actions = pa.table(table.get_add_actions(flatten=True))
    return int(pc.sum(actions.column("num_records")).as_py() or 0)


def output_of(size_dir: Path, store: str | None) -> str:
    """Where a size's tables go: the size's folder, or its prefix under --output-dir."""
    return f"{store.rstrip('/')}/{size_dir.name}" if store else str(size_dir / "output")


def run_stage(
    stage: str,
    conf_path: Path,
    size_dir: Path,
    args: argparse.Namespace,
    interactions: int,
    output: str,
) -> StageFigures:
    """One `kar <stage>` process, sampled every --sample-interval s until it exits or times out."""
    table = STAGE_TABLE.get(stage)
    before = delta_rows(f"{output}/tables/{table}") if table else 0
    cmd = [sys.executable, "-m", "jobs.cli", stage, "--conf", str(conf_path)]
    if stage == "publish" and args.online:
        cmd.append("--online")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    # Ray runs its workers at nice 15: on a shared host they would crawl behind other load.
    env.setdefault("RAY_worker_niceness", "0")
    logs_dir = size_dir / "logs"
    logs_dir.mkdir(exist_ok=True)
    out_path, err_path = logs_dir / f"{stage}.out", logs_dir / f"{stage}.err"
    log.info("%s: %s", size_dir.name, " ".join(cmd[2:]))
    started = time.monotonic()
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(
            cmd, cwd=size_dir, env=env, stdout=out, stderr=err, start_new_session=True
        )
        sampler = Sampler(proc.pid)
        stopped: str | None = None
        try:
            while proc.poll() is None:
                sampler.sample()
                if time.monotonic() - started > args.stage_timeout:
                    stopped = f"killed after --stage-timeout {args.stage_timeout:g} s"
                    break
                time.sleep(args.sample_interval)
        except KeyboardInterrupt:
            stopped = "interrupted (SIGINT/SIGTERM to the bench)"
        if stopped:
            sampler.kill_all(proc)
            proc.wait()
        wall = time.monotonic() - started
    figures = StageFigures(
        status="ok",
        wall_s=round(wall, 1),
        driver_rss_mb=round(sampler.driver_peak / MB, 1),
        jvm_rss_mb=round(sampler.jvm_peak / MB, 1) if sampler.jvm_peak else None,
        ray_workers_rss_mb=round(sampler.ray_peak / MB, 1) if sampler.ray_peak else None,
        exit_code=proc.returncode,
    )
    if stopped or proc.returncode != 0:
        figures.status = "failed"
        if stopped:
            figures.status = "timeout" if stopped.startswith("killed") else "interrupted"
        figures.error = stopped or _last_error(err_path.read_text(errors="replace"))
        return figures
    result = _last_json(out_path.read_text(errors="replace"))
    if stage == "prepare":
        rows: int | None = interactions
    elif all(k in result for k in RESULT_ROWS[stage]):
        rows = sum(int(result[k]) for k in RESULT_ROWS[stage])
    elif table:
        rows = delta_rows(f"{output}/tables/{table}") - before
    else:
        rows = None
    figures.rows = rows
    if rows is not None and wall > 0:
        figures.rows_per_s = round(rows / wall, 1)
    return figures


def warm_model_cache(conf_path: Path, size_dir: Path) -> None:
    """Convert the bundled LLM checkpoint once, outside the timings (prepare reads its
    tokenizer's special tokens, the generate worker resolves its directory)."""
    code = (
        "import sys; from jobs.plumbing.config import load_config; "
        "from jobs.plumbing.models import resolve_model; "
        "c = load_config(sys.argv[1]); resolve_model(c.llm.model, 'llm', c.run.cache_dir)"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-c", code, str(conf_path)], cwd=size_dir, env=env, check=True)


# --- output ----------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(stages: dict[str, dict[str, StageFigures]], data: dict[str, DataStats]) -> None:
    print(f"stand-ins: {', '.join(f'{k}={v}' for k, v in STANDINS.items())}")
    for size, stats in data.items():
        print(
            f"{int(size):,} users: {stats.items:,} items, {stats.interactions:,} interactions "
            f"(mean history {stats.mean_history})"
        )
    header = (
        f"{'users':>9} {'stage':<9} {'status':<8} {'wall s':>8} {'rows':>10} {'rows/s':>10} "
        f"{'driver MB':>10} {'JVM MB':>8} {'ray MB':>8}"
    )
    print(header)
    print("-" * len(header))
    for size, per_stage in stages.items():
        for stage, f in per_stage.items():
            print(
                f"{int(size):>9,} {stage:<9} {f.status:<8} {_fmt(f.wall_s, '.1f'):>8} "
                f"{_fmt(f.rows, ',d'):>10} {_fmt(f.rows_per_s, ',.0f'):>10} "
                f"{_fmt(f.driver_rss_mb, '.0f'):>10} {_fmt(f.jvm_rss_mb, '.0f'):>8} "
                f"{_fmt(f.ray_workers_rss_mb, '.0f'):>8}"
            )
            if f.error:
                print(f"{'':>9} {'':<9} exit {f.exit_code}: {f.error}")


def driver_rss_ratio(stages: dict[str, dict[str, StageFigures]]) -> float | None:
    """Peak driver RSS over the stages at the largest size / at the smallest."""
    peaks = {
        size: max((f.driver_rss_mb or 0.0) for f in per_stage.values())
        for size, per_stage in stages.items()
    }
    sizes = sorted(peaks, key=int)
    if len(sizes) < 2 or not peaks[sizes[0]] or not peaks[sizes[-1]]:
        return None
    return round(peaks[sizes[-1]] / peaks[sizes[0]], 3)


def workers_rss_ratio(stages: dict[str, dict[str, StageFigures]]) -> dict[str, float | None]:
    """Per stage: its Ray workers' peak (summed) RSS at the largest size / at the smallest."""
    sizes = sorted(stages, key=int)
    ratios: dict[str, float | None] = {}
    for stage in STAGES:
        ends = [stages[size].get(stage) for size in (sizes[0], sizes[-1])] if sizes else []
        peaks = [f.ray_workers_rss_mb if f else None for f in ends]
        ok = len(sizes) > 1 and all(peaks)
        ratios[stage] = round(peaks[1] / peaks[0], 3) if ok else None
    return ratios


# --- main ------------------------------------------------------------------------------------


def bench_size(
    n_users: int, args: argparse.Namespace, done: dict[str, Any], store: str | None = None
) -> tuple[DataStats, dict[str, StageFigures]]:
    """Inputs, config and every stage at one size, outputs on local disk or under `store`;
    `done` (the figures so far) is rewritten to <workdir>/results.json after each stage, so
    a stopped bench leaves its figures."""
    size_dir = args.workdir / f"{'store-' if store else ''}users-{n_users}"
    if size_dir.exists():
        shutil.rmtree(size_dir)
    stats = write_inputs(size_dir / "input", n_users, args.seed)
    log.info("%d users: inputs %s", n_users, asdict(stats))
    conf_path = bench_config(size_dir, args, store)
    warm_model_cache(conf_path, size_dir)
    per_stage: dict[str, StageFigures] = {}
    done["data"][str(n_users)], done["stages"][str(n_users)] = stats, per_stage
    failed: str | None = None
    for stage in args.stages:
        if failed:
            per_stage[stage] = StageFigures(status="skipped", error=f"after {failed} failed")
            continue
        output = output_of(size_dir, store)
        figures = run_stage(stage, conf_path, size_dir, args, stats.interactions, output)
        per_stage[stage] = figures
        log.info("%d users: %s %s", n_users, stage, asdict(figures))
        (args.workdir / f"results{'-store' if store else ''}.json").write_text(
            json.dumps(summary(done))
        )
        if figures.status == "interrupted":
            raise KeyboardInterrupt
        if figures.status != "ok":
            failed = stage
    return stats, per_stage


def summary(done: dict[str, Any]) -> dict[str, Any]:
    """The bench's JSON figures: sizes, stages, standins, data, driver_rss_ratio and
    workers_rss_ratio."""
    stages: dict[str, dict[str, StageFigures]] = done["stages"]
    return {
        "sizes": [int(size) for size in stages],
        "stages": {
            size: {stage: asdict(f) for stage, f in per_stage.items()}
            for size, per_stage in stages.items()
        },
        "standins": STANDINS,
        "data": {size: asdict(s) for size, s in done["data"].items()},
        "driver_rss_ratio": driver_rss_ratio(stages),
        "workers_rss_ratio": workers_rss_ratio(stages),
    }


def store_over_disk(
    disk: dict[str, dict[str, StageFigures]], store: dict[str, dict[str, StageFigures]]
) -> dict[str, dict[str, float | None]]:
    """Per size and stage: rows/s with the tables on the store / rows/s on local disk."""
    ratios: dict[str, dict[str, float | None]] = {}
    for size, per_stage in store.items():
        for stage, f in per_stage.items():
            base = disk.get(size, {}).get(stage)
            ok = base and base.rows_per_s and f.rows_per_s
            ratios.setdefault(size, {})[stage] = (
                round(f.rows_per_s / base.rows_per_s, 3) if ok else None
            )
    return ratios


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp dir")
    parser.add_argument("--keep", action="store_true", help="keep the temp workdir")
    parser.add_argument("--stage-timeout", type=float, default=1800.0, help="seconds")
    parser.add_argument("--sample-interval", type=float, default=0.2, help="RSS sampling, s")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--spark-driver-memory", default=None, help="default: conf/local.yaml's")
    parser.add_argument("--ray-cpus", type=int, default=None, help="default: conf/local.yaml's")
    # Training is not the measure (adapt.max_train_rows bounds it): one epoch, large batches.
    parser.add_argument("--adapt-epochs", type=int, default=1, help="adapt.epochs")
    parser.add_argument("--adapt-batch-size", type=int, default=4096, help="adapt.batch_size")
    parser.add_argument("--online", action="store_true", help="kar publish --online")
    parser.add_argument(
        "--output-dir",
        default=None,
        metavar="URI",
        help="also run every size with its tables under this object-store URI (credentials "
        "and endpoint from the environment: AWS_*), after the same size on local disk, and "
        "print each stage's rows/s there over its rows/s on disk",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any config override"
    )
    args = parser.parse_args()
    logs.setup("INFO")
    temp = args.workdir is None
    args.workdir = Path(args.workdir or tempfile.mkdtemp(prefix="kar-bench-scale-")).resolve()
    if args.workdir.is_relative_to(ROOT):
        parser.error(f"--workdir {args.workdir} is inside the checkout; use a folder outside it")
    args.workdir.mkdir(parents=True, exist_ok=True)
    log.info("workdir %s; stand-ins %s", args.workdir, STANDINS)
    # SIGTERM stops the bench like Ctrl-C: the running stage is killed, the figures printed.
    signal.signal(signal.SIGTERM, _interrupt)

    done: dict[str, Any] = {"data": {}, "stages": {}}
    on_store: dict[str, Any] = {"data": {}, "stages": {}}
    try:
        for n in sorted(args.sizes):
            bench_size(n, args, done)
            if args.output_dir:
                bench_size(n, args, on_store, args.output_dir)
    except KeyboardInterrupt:
        log.warning("interrupted: printing the figures measured so far")
    finally:
        if temp and not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)

    print("local disk:")
    print_table(done["stages"], done["data"])
    result = summary(done)
    if args.output_dir:
        print(f"\n{args.output_dir}:")
        print_table(on_store["stages"], on_store["data"])
        result = {"disk": result, "store": summary(on_store)}
        result["store_over_disk_rows_per_s"] = store_over_disk(done["stages"], on_store["stages"])
        print("\nrows/s on the store over rows/s on disk (same sizes, this run):")
        for size, per_stage in result["store_over_disk_rows_per_s"].items():
            print(f"{int(size):>9,} " + "  ".join(f"{s} {r}" for s, r in per_stage.items()))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
