"""Export: text embeddings through a trained adaptor's towers -> reasoning / fact vectors.

What the weekly adapt stage publishes and what `kar evaluate` feeds its frozen
backbones come from this one function, so both see the same vectors for the
same adaptor and embeddings.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from adapters.data import EntityMatrix
from adapters.moe import TOWERS, HybridExpertAdaptor, Tower

# Rows per tower call: bounds the activations held at once, whatever the entity count.
CHUNK_ROWS = 4096


def export(
    adaptor: HybridExpertAdaptor, embeddings: Mapping[Tower, EntityMatrix]
) -> dict[Tower, EntityMatrix]:
    """Each kind's text embeddings through its own tower (eval mode, no gradients), same ids.

    Raises RuntimeError if a tower produces a non-finite vector: a broken adaptor must
    never be published.
    """
    adaptor.eval()
    out: dict[Tower, EntityMatrix] = {}
    for kind in (k for k in TOWERS if k in embeddings):
        matrix = embeddings[kind]
        with torch.no_grad():
            values = np.ascontiguousarray(matrix.values, dtype=np.float32)
            chunks = torch.split(torch.from_numpy(values), CHUNK_ROWS)
            vectors = torch.cat([adaptor.tower(c, kind) for c in chunks]).numpy()
        if not np.isfinite(vectors).all():
            raise RuntimeError(f"the adaptor's {kind} tower produced non-finite vectors")
        out[kind] = EntityMatrix(matrix.ids, vectors)
    return out
