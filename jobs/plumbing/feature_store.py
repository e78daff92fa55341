"""The configured Feast feature store (conf/feast): what publish writes and forget erases.

Feast reads its repo's paths from the environment (feature_store*.yaml and
kar_features.py use KAR_FEAST_DIR, KAR_FEAST_TABLES, KAR_REDIS), so they are set
from the job's config here before the store is opened.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from jobs.plumbing.config import Config, ConfigError

if TYPE_CHECKING:
    from feast import FeatureStore

DEFINITIONS_FILE = "kar_features.py"


def _repo_file(conf: Config) -> Path:
    store = conf.feature_store.online_store
    name = "feature_store.yaml" if store == "sqlite" else f"feature_store.{store}.yaml"
    path = conf.feature_store.repo / name
    if not path.exists():
        raise ConfigError(
            f"feature_store.repo: {path} does not exist; point feature_store.repo at a Feast repo "
            "like conf/feast (with feature_store.yaml and kar_features.py)"
        )
    return path


def feature_store(conf: Config) -> tuple[FeatureStore, ModuleType]:
    """The configured Feast store and the repo's definitions module, paths set from `conf`."""
    from feast import FeatureStore

    yaml_file = _repo_file(conf)
    feast_dir = conf.feast_dir()
    feast_dir.mkdir(parents=True, exist_ok=True)
    # feature_store*.yaml and kar_features.py read these; see conf/feast/feature_store.yaml.
    os.environ["KAR_FEAST_DIR"] = str(feast_dir)
    os.environ["KAR_FEAST_TABLES"] = conf.output("tables").uri
    os.environ["KAR_REDIS"] = conf.feature_store.redis
    spec = importlib.util.spec_from_file_location(
        "kar_feast_definitions", conf.feature_store.repo / DEFINITIONS_FILE
    )
    if spec is None or spec.loader is None or not Path(spec.origin or "").exists():
        raise ConfigError(f"feature_store.repo: no {DEFINITIONS_FILE} in {conf.feature_store.repo}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    store = FeatureStore(repo_path=str(conf.feature_store.repo), fs_yaml_file=yaml_file)
    return store, module


def online_store(conf: Config) -> FeatureStore:
    """The Feast store with the repo's definitions applied, ready for online writes."""
    store, definitions = feature_store(conf)
    store.apply(definitions.DEFINITIONS)
    return store
