"""A realistic week: replay ML-100K by time and price the second weekly run against a full one.

The real `prepare` + `generate` stages run on an ML-100K sample (into a temp
folder) as of week W (run.as_of), which answers every user and item: the full
run (plus the bootstrap prompts, KAR's cut, that a first run adds for the
adaptor). Then the tables are copied twice and the job runs as of W + 7 days
on each copy, once with the configured refresh policy and once regenerating
every user whose window changed (refresh.min_new_interactions=1). Printed:
the share of the sample's users active in that week, and per policy the
second run's prompts and LLM tokens (input + output, retries included) over
the full run's. Tokens, not seconds, are the measure.

    .venv/bin/python bench/weekly.py                          # 100 users, 100 items
    .venv/bin/python bench/weekly.py --users 200 --at 0.6 --engine vllm
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.csv as pcsv

from jobs import generate, prepare
from jobs.plumbing import logs
from jobs.plumbing.config import Config, load_config
from jobs.plumbing.spark import session
from jobs.readers import ML100K_FILES

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "ml-100k"
log = logging.getLogger("bench.weekly")


def bench_config(out: Path, as_of: datetime, args: argparse.Namespace, *extra: str) -> Config:
    return load_config(
        ROOT / "conf" / "local.yaml",
        [
            f"run.output_dir={out}",
            f"run.cache_dir={ROOT / '.cache' / 'kar'}",
            f"run.as_of={as_of.isoformat()}",
            f"data.path={DATA}",
            f"data.sample.max_users={args.users}",
            f"data.sample.max_items={args.items}",
            f"llm.max_new_tokens={args.max_new_tokens}",
            f"llm.engine={args.engine}",
            # vLLM on CPU hosts: a fixed KV cache and no graph capture (see conf/local.yaml).
            "llm.enforce_eager=true",
            "llm.kv_cache_gib=1",
            *extra,
        ],
    )


def week_start(at: float) -> datetime:
    """Midnight UTC at the `at` quantile of ML-100K's interaction times."""
    times = pcsv.read_csv(
        DATA / ML100K_FILES["interactions"], parse_options=pcsv.ParseOptions(delimiter="\t")
    ).column(3)
    cut = pc.quantile(times, q=at)[0].as_py()
    day = datetime.fromtimestamp(cut, UTC)
    return day.replace(hour=0, minute=0, second=0, microsecond=0)


def run_week(conf: Config, spark, name: str) -> dict:
    """prepare + generate once: what the week's run asked of the LLM."""
    import ray

    prep = prepare.run(conf, f"{name}-prepare", spark)
    gen = generate.run(conf, f"{name}-generate")
    ray.shutdown()
    return {
        "prompts": gen.prompts_generated,
        "bootstrap_prompts": prep.bootstrap,
        "tokens": gen.input_tokens + gen.output_tokens,
        "refresh": prep.refresh,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100, help="data.sample.max_users")
    parser.add_argument("--items", type=int, default=100, help="data.sample.max_items")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--at", type=float, default=0.8, help="week W starts at this quantile")
    parser.add_argument("--engine", choices=["vllm", "transformers"], default="transformers")
    args = parser.parse_args()
    logs.setup("WARNING")
    # Ray runs its workers at nice 15: on a shared host the engine would crawl behind other load.
    os.environ.setdefault("RAY_worker_niceness", "0")
    first = week_start(args.at)
    second = first + timedelta(days=7)
    with tempfile.TemporaryDirectory(prefix="kar-bench-weekly-") as tmp:
        full_dir = Path(tmp) / "full"
        conf = bench_config(full_dir, first, args)
        spark = session(conf.spark, app_name="kar-bench-weekly")
        full = run_week(conf, spark, "week-w")
        policies = {
            "default": [],
            "every_changed_user": ["refresh.min_new_interactions=1"],
        }
        results = {}
        for name, extra in policies.items():
            out = Path(tmp) / name
            shutil.copytree(full_dir, out)
            results[name] = run_week(bench_config(out, second, args, *extra), spark, name)
        # Active users had interactions in [W, W+1): their window changed, so regenerating
        # every changed user refreshes exactly them (or meets them as new users).
        states = results["every_changed_user"]["refresh"].get("user", {})
        users = sum(states.values())
        active = states.get("refreshed", 0) + states.get("new", 0)
        spark.stop()

    figures = {
        "week": f"{first:%Y-%m-%d} -> {second:%Y-%m-%d}",
        "users": users,
        "active_users": active,
        "active_share": round(active / users, 4),
        "full": full,
        **{
            name: {
                **r,
                "prompt_ratio": round(r["prompts"] / full["prompts"], 4),
                "token_ratio": round(r["tokens"] / full["tokens"], 4),
            }
            for name, r in results.items()
        },
    }
    print(
        f"week {figures['week']}: {active} of {users} users active ({figures['active_share']:.1%});"
        f" full run {full['prompts']} prompts ({full['bootstrap_prompts']} bootstrap) / "
        f"{full['tokens']} tokens"
    )
    for name in policies:
        r = figures[name]
        print(
            f"  {name}: {r['prompts']} prompts, {r['tokens']} tokens = "
            f"{r['prompt_ratio']:.4f} of the full run's prompts, {r['token_ratio']:.4f} of its "
            f"tokens; users {r['refresh'].get('user', {})}"
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
