"""Generation throughput: our generate stage vs. a bare `LLM.generate` on the same engine.

Real KAR prompts (users and items of an ML-100K sample, written by the real
`prepare` stage) go once through `generate.run` (a Ray actor with the vLLM
engine, token-sized batches, answer checks, Delta commits) and once through
one bare `vllm.LLM.generate` call over all the chat-templated prompts in this
process. Both use the same checkpoint, dtype, context, KV cache and greedy
sampling, so they produce the same tokens; the figure that matters is output
tokens/s after engine start, and the ratio ours / bare (goal >= 0.95).
Retries are off (generate.max_attempts=1) so both do exactly the same work.

    .venv/bin/python bench/generation.py                  # 60 users + 40 items, 48 new tokens
    .venv/bin/python bench/generation.py --users 200 --items 150 --max-new-tokens 96
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import tempfile
import time
from pathlib import Path

from jobs import generate, prepare
from jobs.plumbing import logs, tables
from jobs.plumbing.config import Config, load_config
from jobs.plumbing.models import resolve_model
from jobs.plumbing.schemas import PROMPTS

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench.generation")


def bench_config(out: Path, args: argparse.Namespace) -> Config:
    return load_config(
        ROOT / "conf" / "local.yaml",
        [
            f"run.output_dir={out}",
            # KAR's cut: the prompt set these figures were first measured on (one per entity).
            "prepare.window=evaluation",
            f"run.cache_dir={ROOT / '.cache' / 'kar'}",
            f"data.path={ROOT / 'data' / 'ml-100k'}",
            f"data.sample.max_users={args.users}",
            f"data.sample.max_items={args.items}",
            "llm.engine=vllm",
            "llm.enforce_eager=true",
            f"llm.kv_cache_gib={args.kv_cache_gib}",
            f"llm.max_new_tokens={args.max_new_tokens}",
            "generate.max_attempts=1",
            f"generate.batch_tokens={args.batch_tokens}",
        ],
    )


def ours(conf: Config) -> tuple[int, float]:
    """(output tokens, seconds from first batch sent to last answer committed) of our stage."""
    import ray

    result = generate.run(conf, "bench-ours")
    ray.shutdown()
    return result.output_tokens, result.generate_seconds


def bare(conf: Config, prompts: list[str]) -> tuple[int, float]:
    """(output tokens, seconds of one LLM.generate call) on an engine built like ours."""
    import vllm

    llm_conf = conf.llm
    llm = vllm.LLM(
        model=str(resolve_model(llm_conf.model, "llm", conf.run.cache_dir)),
        dtype=llm_conf.dtype,
        max_model_len=llm_conf.max_model_len,
        seed=llm_conf.seed,
        enable_prefix_caching=True,
        enforce_eager=llm_conf.enforce_eager,
        kv_cache_memory_bytes=int(llm_conf.kv_cache_gib * (1 << 30)),
    )
    tok = llm.get_tokenizer()
    texts = [
        tok.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
        )
        for p in prompts
    ]
    params = vllm.SamplingParams(
        max_tokens=llm_conf.max_new_tokens,
        temperature=llm_conf.temperature,
        top_p=llm_conf.top_p,
        seed=llm_conf.seed,
    )
    started = time.monotonic()
    outputs = llm.generate(texts, params, use_tqdm=False)
    seconds = time.monotonic() - started
    llm.llm_engine.engine_core.shutdown()
    return sum(len(o.outputs[0].token_ids) for o in outputs), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=60, help="data.sample.max_users")
    parser.add_argument("--items", type=int, default=40, help="data.sample.max_items")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-tokens", type=int, default=32768, help="generate.batch_tokens")
    parser.add_argument("--kv-cache-gib", type=float, default=1.0)
    args = parser.parse_args()
    logs.setup("WARNING")
    # Ray runs its workers at nice 15; on a shared host that alone would slow the actor's
    # engine against other load. Same priority as this process, so only the stage differs.
    os.environ.setdefault("RAY_worker_niceness", "0")
    with tempfile.TemporaryDirectory(prefix="kar-bench-gen-") as tmp:
        conf = bench_config(Path(tmp), args)
        prepare.run(conf, "bench-prepare")
        prompts = tables.read(conf.table_path("prompts"), PROMPTS).column("prompt").to_pylist()
        ours_tokens, ours_s = ours(conf)
        gc.collect()
        bare_tokens, bare_s = bare(conf, prompts)
    ours_tps, bare_tps = ours_tokens / ours_s, bare_tokens / bare_s
    figures = {
        "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "batch_tokens": args.batch_tokens,
        "ours": {"output_tokens": ours_tokens, "seconds": round(ours_s, 2)},
        "bare": {"output_tokens": bare_tokens, "seconds": round(bare_s, 2)},
        "ours_tokens_per_s": round(ours_tps, 1),
        "bare_tokens_per_s": round(bare_tps, 1),
        "ratio": round(ours_tps / bare_tps, 3),
    }
    print(
        f"{len(prompts)} prompts, {args.max_new_tokens} new tokens max: "
        f"ours {ours_tps:.1f} tokens/s ({ours_tokens} in {ours_s:.1f} s), "
        f"bare LLM.generate {bare_tps:.1f} tokens/s ({bare_tokens} in {bare_s:.1f} s), "
        f"ratio {ours_tps / bare_tps:.3f} (goal >= 0.95)"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
