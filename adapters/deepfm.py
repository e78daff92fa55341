"""DeepFM (Guo et al. 2017) over the shared features, with KAR vectors as dense inputs.

First order: a per-item bias plus a linear term on the dense KAR input. Second
order: an FM over the sparse fields and two KAR fields (the dense input projected
to field embeddings, so KAR vectors interact with ids and attributes). Deep part:
an MLP over all fields and the raw dense input. The three logits add up.
"""

from __future__ import annotations

import torch
from torch import nn

from adapters.data import CTRTensors
from adapters.features import N_FIELDS, FeatureSizes, SharedFeatures, check_kar
from adapters.moe import mlp

KAR_FIELDS = 2


class DeepFM(nn.Module):
    def __init__(
        self,
        sizes: FeatureSizes,
        dim: int,
        kar_dim: int = 0,
        hidden: tuple[int, ...] = (200, 80),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.kar_dim, self.dim = kar_dim, dim
        self.features = SharedFeatures(sizes, dim)
        self.item_bias = nn.Embedding(sizes.n_items, 1)
        nn.init.zeros_(self.item_bias.weight)
        n_fields = N_FIELDS + (KAR_FIELDS if kar_dim else 0)
        if kar_dim:
            self.kar_linear = nn.Linear(kar_dim, 1)
            self.kar_fields = nn.Linear(kar_dim, KAR_FIELDS * dim)
        self.dnn = mlp(n_fields * dim + kar_dim, list(hidden), dropout)
        self.out = nn.Linear(hidden[-1], 1)

    def forward(self, batch: CTRTensors, kar: torch.Tensor | None = None) -> torch.Tensor:
        check_kar(kar, self.kar_dim, "DeepFM")
        fields = self.features.fields(batch)  # (B, F, d)
        first = self.item_bias(batch.target).squeeze(-1)
        dense = []
        if kar is not None:
            first = first + self.kar_linear(kar).squeeze(-1)
            projected = self.kar_fields(kar).view(-1, KAR_FIELDS, self.dim)
            fields = torch.cat([fields, projected], dim=1)
            dense = [kar]
        square_of_sum = fields.sum(dim=1).pow(2)
        sum_of_square = fields.pow(2).sum(dim=1)
        fm = 0.5 * (square_of_sum - sum_of_square).sum(dim=-1)
        deep = self.out(self.dnn(torch.cat([fields.flatten(1), *dense], dim=-1))).squeeze(-1)
        return first + fm + deep
