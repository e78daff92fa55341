"""Synthetic CTR samples with a known signal, shared by the adaptor and evaluate tests (a test
module imports helpers from here, never from another test module)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from table_rows import table_of

from adapters import data as ctr_data
from adapters.data import CTRData, EntityMatrix


def synthetic(
    quality: float, taste: float, n_users: int = 150, n_items: int = 40, seed: int = 0
) -> tuple[pa.Table, EntityMatrix, EntityMatrix]:
    """Liking depends on an item's quality and on whether its genre is the user's genre.

    The "text embeddings" are each entity's genre direction plus noise, so KAR can
    read the genre match directly, while plain DIN must infer it from item ids and
    the liked/disliked history. Quality is visible to DIN through the item id.
    """
    rng = np.random.default_rng(seed)
    per_user, dim, genres = 16, 24, 4
    basis = rng.standard_normal((genres, dim)).astype(np.float32)
    item_genre, user_genre = rng.integers(genres, size=n_items), rng.integers(genres, size=n_users)
    good = rng.random(n_items) < 0.5
    noise = rng.standard_normal((n_users + n_items, dim)).astype(np.float32) / 2
    rows = []
    for u in range(n_users):
        seq = rng.choice(n_items, size=per_user, replace=False)
        p_like = 0.1 + quality * good[seq] + taste * (item_genre[seq] == user_genre[u])
        ratings = np.where(rng.random(per_user) < p_like, 5.0, 2.0).tolist()
        for pos in range(per_user // 2, per_user):
            rows.append(
                {
                    "user_id": f"u{u}",
                    "item_id": f"i{seq[pos]}",
                    "label": int(ratings[pos] > 3),
                    "rating": ratings[pos],
                    "timestamp": pos,
                    "position": pos,
                    "history_item_ids": [f"i{i}" for i in seq[max(0, pos - 10) : pos]],
                    "history_ratings": ratings[max(0, pos - 10) : pos],
                    "split": "test" if u % 5 == 0 else "train",
                }
            )
    return (
        table_of("samples", rows),
        EntityMatrix([f"u{u}" for u in range(n_users)], basis[user_genre] + noise[:n_users]),
        EntityMatrix([f"i{i}" for i in range(n_items)], basis[item_genre] + noise[n_users:]),
    )


def build(
    samples: pa.Table, users: EntityMatrix | None, items: EntityMatrix | None, **kw: Any
) -> CTRData:
    """adapters.data.build with small-test defaults (history 10, like > 3, seed 3); `kw` wins."""
    args = {"history_length": 10, "like_threshold": 3.0, "validation_fraction": 0.15, "seed": 3}
    return ctr_data.build(samples, users=users, items=items, **(args | kw))
