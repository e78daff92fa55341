"""DIN (Deep Interest Network, Zhou et al. 2018): the CTR backbone the adaptor is trained against.

A local activation unit scores each history item against the target item; the
history is pooled with those scores (unnormalised, as in DIN, so the strength of
interest survives) and an MLP reads [pooled, target, pooled * target, user
attributes] plus, with KAR, the reasoning and fact vectors concatenated at the input.
"""

from __future__ import annotations

import torch
from torch import nn

from adapters.data import PAD, CTRTensors
from adapters.features import FeatureSizes, SharedFeatures, check_kar
from adapters.moe import mlp


class DIN(nn.Module):
    """DIN over the shared features with an optional dense KAR input."""

    def __init__(
        self,
        sizes: FeatureSizes,
        dim: int,
        kar_dim: int = 0,
        attention_hidden: int = 36,
        hidden: tuple[int, ...] = (200, 80),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.kar_dim = kar_dim
        self.features = SharedFeatures(sizes, dim)
        self.attention = nn.Sequential(
            nn.Linear(4 * dim, attention_hidden), nn.PReLU(), nn.Linear(attention_hidden, 1)
        )
        self.mlp = mlp(4 * dim + kar_dim, list(hidden), dropout)
        self.out = nn.Linear(hidden[-1], 1)

    def _scores(self, t: torch.Tensor, h: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        t = t.unsqueeze(1).expand(-1, h.shape[1], -1)
        scores = self.attention(torch.cat([h, t, h - t, h * t], dim=-1)).squeeze(-1)
        return scores.masked_fill(history == PAD, 0.0)

    def attention_weights(self, batch: CTRTensors) -> torch.Tensor:
        """(B, L) activation of each history entry for the target; exactly 0 at padding."""
        f = self.features
        return self._scores(f.target(batch), f.history(batch), batch.history)

    def forward(self, batch: CTRTensors, kar: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) click logits; `kar` is (B, kar_dim) when the model was built with kar_dim > 0."""
        check_kar(kar, self.kar_dim, "DIN")
        t, h = self.features.target(batch), self.features.history(batch)
        pooled = (self._scores(t, h, batch.history).unsqueeze(-1) * h).sum(dim=1)
        parts = [pooled, t, pooled * t, self.features.user(batch)]
        parts += [kar] if kar is not None else []
        return self.out(self.mlp(torch.cat(parts, dim=-1))).squeeze(-1)
