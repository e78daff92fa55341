"""The feature pipeline every backbone shares: one set of embeddings over `CTRTensors`.

Each backbone reads the same inputs (target item id + attribute tokens, recent
history with liked/disliked feedback, user attribute tokens, optional KAR
vectors), so a lift measured on one backbone and not another is the model's,
not the features'.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from adapters.data import DISLIKED, LIKED, PAD, CTRData, CTRTensors

# Sparse fields of the FM-style backbones: target id, target attributes, user attributes,
# mean liked history item, mean disliked history item.
N_FIELDS = 5
INIT_STD = 0.05


@dataclass(frozen=True)
class FeatureSizes:
    """Vocabulary sizes (PAD included) the embeddings are built for."""

    n_items: int
    n_item_tokens: int
    n_user_tokens: int

    @classmethod
    def of(cls, data: CTRData) -> FeatureSizes:
        return cls(data.n_items, data.n_item_tokens, data.n_user_tokens)


def bag(embedding: nn.Embedding, tokens: torch.Tensor) -> torch.Tensor:
    """Mean of the non-PAD token embeddings over the last axis (zero when all are PAD)."""
    mask = (tokens != PAD).unsqueeze(-1).float()
    return (embedding(tokens) * mask).sum(-2) / mask.sum(-2).clamp(min=1.0)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, L, D), (B, L) bool -> (B, D) mean over the masked positions (zero if none)."""
    m = mask.unsqueeze(-1).float()
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


class SharedFeatures(nn.Module):
    """Embeddings of item ids, item and user attribute tokens and history feedback."""

    def __init__(self, sizes: FeatureSizes, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.items = nn.Embedding(sizes.n_items, dim, padding_idx=PAD)
        self.item_tokens = nn.Embedding(sizes.n_item_tokens, dim, padding_idx=PAD)
        self.user_tokens = nn.Embedding(sizes.n_user_tokens, dim, padding_idx=PAD)
        self.feedback = nn.Embedding(3, dim, padding_idx=PAD)  # pad, disliked, liked
        # Small initial embeddings: N(0, 1) would make FM's pairwise products start huge.
        for emb in (self.items, self.item_tokens, self.user_tokens, self.feedback):
            nn.init.normal_(emb.weight, std=INIT_STD)
            emb.weight.data[PAD].zero_()

    def item(self, ids: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """(..., dim): an item's id embedding plus the mean of its attribute tokens."""
        return self.items(ids) + bag(self.item_tokens, tokens)

    def target(self, batch: CTRTensors) -> torch.Tensor:
        return self.item(batch.target, batch.target_tokens)

    def history(self, batch: CTRTensors) -> torch.Tensor:
        """(B, L, dim): history items with their liked/disliked feedback; zero at padding."""
        return self.item(batch.history, batch.history_tokens) + self.feedback(batch.feedback)

    def user(self, batch: CTRTensors) -> torch.Tensor:
        return bag(self.user_tokens, batch.user_tokens)

    def fields(self, batch: CTRTensors) -> torch.Tensor:
        """(B, N_FIELDS, dim) sparse fields for FM / cross networks."""
        h = self.item(batch.history, batch.history_tokens)
        return torch.stack(
            [
                self.items(batch.target),
                bag(self.item_tokens, batch.target_tokens),
                self.user(batch),
                masked_mean(h, batch.feedback == LIKED),
                masked_mean(h, batch.feedback == DISLIKED),
            ],
            dim=1,
        )


def check_kar(kar: torch.Tensor | None, kar_dim: int, model: str) -> None:
    """A backbone built for `kar_dim` dense KAR inputs must get exactly those."""
    if (kar is None) != (kar_dim == 0) or (kar is not None and kar.shape[-1] != kar_dim):
        raise ValueError(
            f"{model} built with kar_dim={kar_dim} got kar="
            f"{None if kar is None else tuple(kar.shape)}"
        )
