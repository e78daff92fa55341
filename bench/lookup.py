"""Feature-store lookup latency: p50/p99 of Feast get_online_features for 1 and 100 entities.

Publishes a synthetic vectors version (random float32 vectors of the adaptor's
size) through the real `kar publish --online` path into a temp output folder,
then times in-process lookups of user reasoning vectors, as a ranking service
written in Python would do them (lookup + to_dict).

    .venv/bin/python bench/lookup.py                      # SQLite online store
    .venv/bin/python bench/lookup.py --online-store redis --redis 127.0.0.1:6379
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from jobs import publish
from jobs.plumbing import feature_store, logs, schemas, tables
from jobs.plumbing.config import Config, load_config

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench.lookup")


def synthetic_vectors(conf: Config, users: int, items: int, dim: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ids = [f"u{i}" for i in range(users)] + [f"i{i}" for i in range(items)]
    n = len(ids)
    values = rng.normal(size=(n, dim)).astype(np.float32)
    rows = pa.table(
        {
            "version_id": ["bench"] * n,
            "kind": ["user"] * users + ["item"] * items,
            "entity_id": ids,
            "dim": pa.array([dim] * n, pa.int32()),
            "vector": pa.FixedSizeListArray.from_arrays(values.reshape(-1), dim),
            "fingerprint": ["bench"] * n,
            "llm_model": ["bench"] * n,
            "encoder_model": ["bench"] * n,
            "adaptor": ["bench"] * n,
            "input_fingerprint": ["bench"] * n,
            "created_at": pa.array([datetime.now(UTC)] * n, schemas.UTC_US),
        }
    )
    tables.overwrite(conf.table_path("vectors"), rows, schemas.VECTORS)


def percentiles(samples_ms: list[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(np.asarray(samples_ms), [50, 99])
    return float(p50), float(p99)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=2_000)
    parser.add_argument("--dim", type=int, default=32, help="vector size (adapt.adaptor.out_dim)")
    parser.add_argument("--repeats", type=int, default=500, help="timed lookups per batch size")
    parser.add_argument("--online-store", choices=["sqlite", "redis"], default="sqlite")
    parser.add_argument(
        "--redis", default="localhost:6379", help="host:port with --online-store redis"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logs.setup("WARNING")

    with tempfile.TemporaryDirectory(prefix="kar-bench-") as tmp:
        conf = load_config(
            ROOT / "conf" / "local.yaml",
            [
                f"run.output_dir={tmp}",
                f"feature_store.repo={ROOT / 'conf' / 'feast'}",
                f"feature_store.online_store={args.online_store}",
                f"feature_store.redis={args.redis}",
            ],
        )
        synthetic_vectors(conf, args.users, args.items, args.dim, args.seed)
        started = time.perf_counter()
        publish.run(conf, online=True)
        publish_s = time.perf_counter() - started
        store, _ = feature_store.feature_store(conf)
        rng = np.random.default_rng(args.seed + 1)
        print(
            f"online store {args.online_store}: {args.users} users + {args.items} items, "
            f"{args.dim}-d float32, publish --online {publish_s:.1f} s"
        )
        for batch in (1, 100):
            for _ in range(20):  # warm-up: registry cache, connections
                store.get_online_features(
                    features=["kar_user:reasoning"], entity_rows=[{"user_id": "u0"}] * batch
                ).to_dict()
            timings = []
            for _ in range(args.repeats):
                ids = rng.choice(args.users, size=batch, replace=False)
                rows = [{"user_id": f"u{i}"} for i in ids]
                t0 = time.perf_counter()
                out = store.get_online_features(
                    features=["kar_user:reasoning"], entity_rows=rows
                ).to_dict()
                timings.append((time.perf_counter() - t0) * 1000)
                assert all(v is not None and len(v) == args.dim for v in out["reasoning"])
            p50, p99 = percentiles(timings)
            print(
                f"{batch:>3} entities: p50 {p50:.2f} ms  p99 {p99:.2f} ms  ({args.repeats} lookups)"
            )


if __name__ == "__main__":
    main()
