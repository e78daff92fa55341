"""Text encoders behind one small interface, chosen by `encoder.engine`.

"sentence-transformers" (the default) loads a local sentence-transformers model;
a plug-in class ("package.module:Class") serves platforms with their own
embedding service. This module imports no model library itself, so workers load
only the engine they use.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from jobs.config import EncoderConf
from jobs.plugins import load_class


class Encoder(Protocol):
    def encode(self, texts: list[str]) -> np.ndarray:
        """float32 (len(texts), dim) vectors, one row per text in the order given."""
        ...

    def count_truncated(self, texts: list[str]) -> int:
        """How many of `texts` the encoder cut (longer than its input limit)."""
        ...


def build_encoder(model: str, conf: EncoderConf, threads: int | None = None) -> Encoder:
    """The encoder `conf.engine` names, for `model` (a `bundled:` name or a model directory).

    `threads` caps torch CPU threads (one per actor CPU). A plug-in
    (`encoder.engine: "package.module:Class"`) is built as `Class(model, conf, threads)` in
    the process that encodes (the Ray actor): `model` is encoder.model (made absolute when it
    is a local path), `conf` this EncoderConf (batch_size, device), `threads` the actor's CPUs
    or None. Import errors raise PluginError naming the path.
    """
    if conf.engine == "sentence-transformers":
        from encoders.models import resolve_encoder
        from encoders.sentence import SentenceEncoder

        return SentenceEncoder(
            resolve_encoder(model),
            device=conf.device,
            batch_size=conf.batch_size,
            threads=threads,
        )
    return load_class(conf.engine, "encoder.engine")(model, conf, threads)
