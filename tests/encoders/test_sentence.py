"""The real bundled all-MiniLM-L6-v2 encoder and KAR's encoder inputs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from suite_paths import CACHE  # nothing to convert for an encoder; one test cache all the same

from encoders.inputs import encoder_input
from encoders.sentence import SentenceEncoder
from jobs.plumbing.models import ModelError, resolve_model

BUNDLED = "bundled:all-MiniLM-L6-v2"
HISTORY = (
    "Given a 24-year-old M technician user, this user's movie watching history over time is "
    "listed below.\n" + " ".join(f'"Movie number {i} (1995)", 4 stars;' for i in range(30))
)


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    return SentenceEncoder(resolve_model(BUNDLED, "encoder", CACHE), batch_size=8, threads=2)


def test_bundled_model_is_mean_pooled_and_384_d(encoder: SentenceEncoder) -> None:
    pooling = json.loads(
        (resolve_model(BUNDLED, "encoder", CACHE) / "1_Pooling" / "config.json").read_text()
    )
    assert pooling["pooling_mode_mean_tokens"] is True
    assert encoder.pooling == "mean"
    assert encoder.dim == 384


def test_encode_gives_finite_float32_and_is_deterministic(encoder: SentenceEncoder) -> None:
    texts = [
        "A heartwarming animated film about toys that come to life.",
        "A gritty crime drama about a mob family in 1940s New York.",
        "A heartwarming animated film about toys that come to life.",
        "An animated comedy where a cowboy doll and a space ranger become friends.",
    ]
    vectors = encoder.encode(texts)
    assert vectors.dtype == np.float32
    assert vectors.shape == (4, 384)
    assert np.isfinite(vectors).all()
    np.testing.assert_array_equal(vectors[0], vectors[2])
    # The same text alone (no batch padding) gives the same vector up to float noise.
    np.testing.assert_allclose(encoder.encode(texts[:1])[0], vectors[0], atol=1e-5)
    # Meaning, not noise: the two toy films are closer than toys vs. mob drama.
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    assert unit[0] @ unit[3] > unit[0] @ unit[1] + 0.1


def test_long_user_inputs_are_counted_as_truncated(encoder: SentenceEncoder) -> None:
    user = encoder_input("user", HISTORY, "The user likes nineties dramas.")
    assert encoder.max_seq_length == 256
    assert encoder.count_truncated([user, "short answer"]) == 1


def test_encoder_input_follows_kar() -> None:
    assert encoder_input("user", "history: A, 5 stars;", "Likes A.") == (
        "history: A, 5 stars;\nLikes A."
    )
    assert encoder_input("item", "Movie: A (1995)", "A is a comedy.") == "A is a comedy."
    with pytest.raises(ValueError, match="unknown entity kind 'movie'"):
        encoder_input("movie", "c", "t")


def test_bad_model_names_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no hub access.*bundled:all-MiniLM-L6-v2"):
        resolve_model("sentence-transformers/all-mpnet-base-v2", "encoder", CACHE)
    with pytest.raises(ModelError, match="bundled encoders"):
        resolve_model("bundled:e5-large", "encoder", CACHE)
    with pytest.raises(ModelError, match="unknown; bundled encoders"):
        resolve_model("bundled:smollm2-135m-instruct", "encoder", CACHE)  # an LLM
    with pytest.raises(ModelError, match="neither modules.json nor config.json"):
        resolve_model(str(tmp_path), "encoder", CACHE)


def test_local_model_dir_with_other_pooling_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A local copy of the model re-configured to CLS pooling loads, with a KAR warning."""
    source = resolve_model(BUNDLED, "encoder", CACHE)
    local = tmp_path / "minilm-cls"
    (local / "1_Pooling").mkdir(parents=True)
    for f in source.iterdir():
        if f.is_file():
            (local / f.name).symlink_to(f)
    config = json.loads((source / "1_Pooling" / "config.json").read_text())
    config |= {"pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True}
    (local / "1_Pooling" / "config.json").write_text(json.dumps(config))

    with caplog.at_level(logging.WARNING, logger="encoders.sentence"):
        cls = SentenceEncoder(resolve_model(str(local), "encoder", CACHE), threads=2)
    assert cls.pooling == "cls"
    assert "KAR expects 'mean' pooling" in caplog.text
    assert cls.encode(["a film"]).shape == (1, 384)
