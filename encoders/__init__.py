"""Text encoders behind one small interface, chosen by `encoder.engine`.

"sentence-transformers" (the default) loads a local sentence-transformers model
directory (the job resolves `bundled:` names to one: jobs/plumbing/models.py); a plug-in class
("package.module:Class", imported by the caller) serves platforms with their own
embedding service. This module imports no model library itself, so workers load only
the engine they use.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class EncoderSettings(BaseModel):
    """What an encoder is built from; the job's encoder config adds its Ray pool to these."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # "sentence-transformers", or a plug-in class "package.module:Class": built as
    # Class(model, settings, threads), see build_encoder.
    engine: str = "sentence-transformers"
    # "bundled:all-MiniLM-L6-v2" or any sentence-transformers model directory.
    model: str = "bundled:all-MiniLM-L6-v2"
    batch_size: int = Field(default=64, gt=0)
    device: str = "cpu"


class Encoder(Protocol):
    def encode(self, texts: list[str]) -> np.ndarray:
        """float32 (len(texts), dim) vectors, one row per text in the order given."""
        ...

    def count_truncated(self, texts: list[str]) -> int:
        """How many of `texts` the encoder cut (longer than its input limit)."""
        ...


def _sentence_transformers(model: str, conf: EncoderSettings, threads: int | None) -> Encoder:
    from encoders.sentence import SentenceEncoder

    return SentenceEncoder(
        Path(model), device=conf.device, batch_size=conf.batch_size, threads=threads
    )


# Built-in engines by `encoder.engine` name.
ENGINES: dict[str, Callable[[str, EncoderSettings, int | None], Encoder]] = {
    "sentence-transformers": _sentence_transformers,
}


def build_encoder(
    model: str, conf: EncoderSettings, threads: int | None = None, plugin: type | None = None
) -> Encoder:
    """The encoder `conf.engine` names, for `model`: a built-in engine's local model
    directory (never a `bundled:` name: the caller resolves those, so this library needs
    no registry of packages).

    `threads` caps torch CPU threads (one per actor CPU). A plug-in engine
    (`encoder.engine: "package.module:Class"`) comes as `plugin`, the class the caller
    imported, and is built as `Class(model, conf, threads)` in the process that encodes
    (the Ray actor): `model` is encoder.model as configured (made absolute when it is a
    local path), `conf` these settings (batch_size, device), `threads` the actor's CPUs or None.
    """
    factory = plugin or ENGINES.get(conf.engine)
    if factory is None:
        raise ValueError(
            f"encoder engine {conf.engine!r} is not built in ({sorted(ENGINES)}); "
            "pass a plug-in engine's class"
        )
    return factory(model, conf, threads)
