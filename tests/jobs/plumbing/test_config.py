from pathlib import Path

import pytest
from suite_paths import ROOT

from jobs.plumbing.config import ConfigError, load_config


def test_local_yaml_is_valid_and_typed():
    conf = load_config(ROOT / "conf" / "local.yaml")
    assert conf.data.format == "movielens-100k"
    assert conf.llm.max_new_tokens == 64
    assert conf.adapt.adaptor.hidden == [128]
    # A relative output_dir is made absolute when the config is read, before workers see it.
    assert conf.table_path("vectors").uri == str(Path.cwd() / "kar-output" / "tables" / "vectors")


def test_override_parses_yaml_values():
    conf = load_config(ROOT / "conf" / "local.yaml", ["llm.max_new_tokens=8", "adapt.lr=0.01"])
    assert conf.llm.max_new_tokens == 8
    assert conf.adapt.lr == pytest.approx(0.01)


def test_unknown_key_names_its_path(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("llm:\n  max_new_tokenz: 5\n")
    with pytest.raises(ConfigError, match=r"llm\.max_new_tokenz: unknown key"):
        load_config(bad)
    # A key an earlier release had says what to do instead.
    with pytest.raises(ConfigError, match=r"generate\.batch_rows: removed: .*delete the key"):
        load_config(None, ["generate.batch_rows=64"])


def test_ill_typed_key_names_its_path_and_value():
    with pytest.raises(ConfigError, match=r"adapt\.adaptor\.out_dim: .*'big'"):
        load_config(None, ["adapt.adaptor.out_dim=big"])


def test_override_into_a_scalar_is_rejected():
    with pytest.raises(ConfigError, match="not a section"):
        load_config(ROOT / "conf" / "local.yaml", ["run.seed.x=1"])


def test_malformed_override_and_missing_file():
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["llm.max_new_tokens"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("no/such.yaml")


def test_generic_format_requires_its_files():
    with pytest.raises(ConfigError, match="data.interactions and data.items"):
        load_config(None, ["data.format=generic"])
