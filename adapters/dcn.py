"""DCNv2 (Wang et al. 2021), parallel form, over the shared features and optional KAR input.

x0 = [sparse fields flattened, dense KAR vectors]; a cross network of full-rank
layers x_{l+1} = x0 * (W_l x_l + b_l) + x_l runs beside an MLP on x0, and a
linear layer reads both outputs.
"""

from __future__ import annotations

import torch
from torch import nn

from adapters.data import CTRTensors
from adapters.features import N_FIELDS, FeatureSizes, SharedFeatures, check_kar
from adapters.moe import mlp


class DCNv2(nn.Module):
    def __init__(
        self,
        sizes: FeatureSizes,
        dim: int,
        kar_dim: int = 0,
        cross_layers: int = 3,
        hidden: tuple[int, ...] = (200, 80),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.kar_dim = kar_dim
        self.features = SharedFeatures(sizes, dim)
        in_dim = N_FIELDS * dim + kar_dim
        self.cross = nn.ModuleList(nn.Linear(in_dim, in_dim) for _ in range(cross_layers))
        self.deep = mlp(in_dim, list(hidden), dropout)
        self.out = nn.Linear(in_dim + hidden[-1], 1)

    def forward(self, batch: CTRTensors, kar: torch.Tensor | None = None) -> torch.Tensor:
        check_kar(kar, self.kar_dim, "DCNv2")
        x0 = self.features.fields(batch).flatten(1)
        if kar is not None:
            x0 = torch.cat([x0, kar], dim=-1)
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x
        return self.out(torch.cat([x, self.deep(x0)], dim=-1)).squeeze(-1)
