"""Plug-in engines: the bench's instant stand-ins load from the config and keep the contracts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from factors import sets
from factors.prompts import item_context, item_prompt, user_context, user_prompt
from jobs.llm.checks import AnswerChecks
from jobs.plumbing.config import ConfigError, GenerateConf, load_config
from jobs.plumbing.models import ModelError, engine_model_dir, load_encoder, load_engine
from jobs.plumbing.plugins import PluginError

STANDINS = [
    "llm.engine=bench.standins:InstantLLM",
    "encoder.engine=bench.standins:InstantEncoder",
]


def _prompts() -> list[str]:
    fs = sets.load("movies")
    history = [(f"Movie {i}", 4.0) for i in range(30)]
    users = [
        user_prompt(fs, user_context(fs, history[i:], {"age": f"{20 + i}"})) for i in range(20)
    ]
    items = [item_prompt(fs, item_context(fs, f"Item title {i}")) for i in range(20)]
    return users + items


def test_a_config_naming_the_standins_builds_them_and_their_answers_pass_the_checks(
    tmp_path,
) -> None:
    conf = load_config(None, [*STANDINS, "llm.model=endpoint/instant"])
    engine = load_engine(conf.llm, tmp_path, threads=1)
    prompts = _prompts()
    gens = engine.generate(prompts)
    assert len(gens) == len(prompts)
    checks = AnswerChecks.from_conf(GenerateConf())
    assert checks.statuses(gens, prompts) == ["ok"] * len(prompts)
    texts = [g.text for g in gens]
    assert len(set(texts)) > len(texts) // 2, "answers vary with the prompt"
    assert all(30 <= len(t.split()) <= 50 for t in texts)
    assert all(g.input_tokens > 0 and g.output_tokens > 0 for g in gens)
    assert [g.text for g in engine.generate(prompts)] == texts, "deterministic"
    retry = engine.generate(prompts[:5], seed=1, temperature=0.7)
    assert [g.text for g in retry] != texts[:5], "a retry's seed gives another answer"


def test_instant_encoder_gives_deterministic_unit_vectors() -> None:
    conf = load_config(None, STANDINS)
    encoder = load_encoder(conf.encoder.model, conf.encoder, conf.run.cache_dir, threads=1)
    texts = ["a user history and answer", "an item answer", "a user history and answer"]
    vectors = encoder.encode(texts)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(vectors[0], vectors[2])
    assert not np.allclose(vectors[0], vectors[1])
    assert encoder.encode([]).shape == (0, 384)
    assert encoder.count_truncated(texts) == 0


@pytest.mark.parametrize("key", ["llm.engine", "encoder.engine"])
@pytest.mark.parametrize("value", ["http-endpoint", "pkg.module.Class", "pkg:mod:Class", "a b:C"])
def test_a_malformed_engine_name_fails_at_load_naming_key_and_forms(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"{key}={value}"])
    assert key in str(e.value) and "package.module:Class" in str(e.value)


def test_a_plugin_that_cannot_be_imported_names_its_path(tmp_path) -> None:
    conf = load_config(None, ["llm.engine=no_such_pkg.engines:Remote"])
    with pytest.raises(PluginError, match=r"llm\.engine 'no_such_pkg\.engines:Remote'"):
        load_engine(conf.llm, tmp_path)
    conf = load_config(None, ["encoder.engine=bench.standins:NoSuchEncoder"])
    with pytest.raises(PluginError, match="has no 'NoSuchEncoder'"):
        load_encoder(conf.encoder.model, conf.encoder, conf.run.cache_dir)


def test_a_plugin_engine_gets_a_remote_model_name_where_a_builtin_one_fails(tmp_path) -> None:
    remote = load_config(None, [*STANDINS, "llm.model=endpoint/llama-3-8b"])
    assert engine_model_dir(remote.llm, tmp_path) == Path("endpoint/llama-3-8b")
    builtin = load_config(None, ["llm.model=endpoint/llama-3-8b"])
    with pytest.raises(ModelError):
        engine_model_dir(builtin.llm, tmp_path)
