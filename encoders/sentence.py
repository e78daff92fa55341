"""The knowledge encoder: a local sentence-transformers model that turns texts into vectors.

It loads a local model directory only: there is no model hub here, and the job
(jobs/plumbing/models.py) turns a `bundled:` name into the directory its package ships.
KAR mean-pools token states; the pooling a model really uses is read from its
loaded Pooling module (built from its `1_Pooling/config.json`) and logged, and
a model that pools differently gets a warning rather than a silent mismatch.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Pooling

log = logging.getLogger(__name__)

KAR_POOLING = "mean"


class SentenceEncoder:
    """One loaded sentence-transformers model; `encode` gives float32 (n, dim) vectors."""

    def __init__(
        self,
        path: Path,
        *,
        device: str = "cpu",
        batch_size: int = 64,
        threads: int | None = None,
        max_seq_length: int | None = None,
    ) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        self.model = SentenceTransformer(str(path), device=device, local_files_only=True)
        if max_seq_length is not None:
            self.model.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self.pooling = self._pooling_mode()
        if self.pooling != KAR_POOLING:
            log.warning(
                "encoder %s pools tokens with %r; KAR expects %r pooling, so vectors will differ "
                "from the method's",
                path,
                self.pooling,
                KAR_POOLING,
            )
        log.info(
            "encoder %s: dim %d, %s pooling, max %d tokens, %d torch threads",
            path,
            self.dim,
            self.pooling,
            self.max_seq_length,
            torch.get_num_threads(),
        )

    def _pooling_mode(self) -> str | None:
        modes = [m.pooling_mode for m in self.model if isinstance(m, Pooling)]
        return modes[0] if modes else None

    @property
    def dim(self) -> int:
        dim = self.model.get_embedding_dimension()
        if dim is None:
            raise ValueError("the encoder does not report its embedding dimension")
        return int(dim)

    @property
    def max_seq_length(self) -> int:
        """Tokens per text the model sees; longer texts are truncated at the end."""
        return int(self.model.max_seq_length)

    def encode(self, texts: list[str]) -> np.ndarray:
        vectors = self.model.encode(
            texts, batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dim)

    def count_truncated(self, texts: list[str]) -> int:
        """How many texts are longer than `max_seq_length` tokens (their ends are not encoded)."""
        ids = self.model.tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]
        return sum(len(x) > self.max_seq_length for x in ids)
