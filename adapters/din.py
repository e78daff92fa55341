"""DIN (Deep Interest Network, Zhou et al. 2018): the CTR backbone the adaptor is trained against.

A local activation unit scores each history item against the target item; the
history is pooled with those scores (unnormalised, as in DIN, so the strength of
interest survives) and an MLP reads [pooled, target, pooled * target] plus,
with KAR, the adaptor's reasoning and fact vectors concatenated at the input.
"""

from __future__ import annotations

import torch
from torch import nn

from adapters.data import PAD
from adapters.moe import mlp


class DIN(nn.Module):
    """Item-id DIN with liked/disliked history feedback and an optional dense KAR input."""

    def __init__(
        self,
        n_items: int,
        dim: int,
        kar_dim: int = 0,
        attention_hidden: int = 36,
        hidden: tuple[int, ...] = (200, 80),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.kar_dim = kar_dim
        self.items = nn.Embedding(n_items, dim, padding_idx=PAD)
        self.feedback = nn.Embedding(3, dim, padding_idx=PAD)  # pad, disliked, liked
        self.attention = nn.Sequential(
            nn.Linear(4 * dim, attention_hidden), nn.PReLU(), nn.Linear(attention_hidden, 1)
        )
        self.mlp = mlp(3 * dim + kar_dim, list(hidden), dropout)
        self.out = nn.Linear(hidden[-1], 1)

    def _scores(self, t: torch.Tensor, h: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        t = t.unsqueeze(1).expand(-1, h.shape[1], -1)
        scores = self.attention(torch.cat([h, t, h - t, h * t], dim=-1)).squeeze(-1)
        return scores.masked_fill(history == PAD, 0.0)

    def attention_weights(
        self, target: torch.Tensor, history: torch.Tensor, feedback: torch.Tensor
    ) -> torch.Tensor:
        """(B, L) activation of each history entry for the target; exactly 0 at padding."""
        h = self.items(history) + self.feedback(feedback)
        return self._scores(self.items(target), h, history)

    def forward(
        self,
        target: torch.Tensor,
        history: torch.Tensor,
        feedback: torch.Tensor,
        kar: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B,) click logits; `kar` is (B, kar_dim) when the model was built with kar_dim > 0."""
        if (kar is None) != (self.kar_dim == 0):
            raise ValueError(
                f"DIN built with kar_dim={self.kar_dim} got kar="
                f"{None if kar is None else tuple(kar.shape)}"
            )
        t = self.items(target)
        h = self.items(history) + self.feedback(feedback)
        pooled = (self._scores(t, h, history).unsqueeze(-1) * h).sum(dim=1)
        parts = [pooled, t, pooled * t] + ([kar] if kar is not None else [])
        return self.out(self.mlp(torch.cat(parts, dim=-1))).squeeze(-1)
