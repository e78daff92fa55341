"""KAR's hybrid-expert adaptor: text embeddings -> reasoning (user) and fact (item) vectors.

Two towers share `shared_experts` experts and each owns `dedicated_experts` more;
a per-tower softmax gate on the tower's own input mixes its experts (KAR,
arXiv 2306.10933, Sec. 3.3). The towers never see each other's input, so a
user's vector depends only on the user's text and an item's only on the
item's: both can be computed once and stored, then joined by any ranker.

For ablations the same module builds a plain MoE (shared experts only, one gate
per tower) and an MLP per tower (one expert, no gate), chosen by `conf.kind`.
"""

from __future__ import annotations

import os
from typing import BinaryIO, Literal

import torch
from torch import nn

from adapters.config import AdaptorConf

Tower = Literal["user", "item"]
TOWERS: tuple[Tower, ...] = ("user", "item")


def mlp(in_dim: int, dims: list[int], dropout: float) -> nn.Sequential:
    """Linear -> ReLU -> Dropout per layer, the reference code's expert and DNN block."""
    layers: list[nn.Module] = []
    for dim in dims:
        layers += [nn.Linear(in_dim, dim), nn.ReLU(), nn.Dropout(dropout)]
        in_dim = dim
    return nn.Sequential(*layers)


class HybridExpertAdaptor(nn.Module):
    """Two gated mixtures of experts (user, item) over a pool of shared + dedicated experts."""

    def __init__(self, conf: AdaptorConf, user_dim: int, item_dim: int) -> None:
        super().__init__()
        if conf.shared_experts and user_dim != item_dim:
            raise ValueError(
                f"adapt.adaptor.shared_experts={conf.shared_experts} needs user and item "
                f"embeddings of one size, got {user_dim} and {item_dim}; encode both with the "
                "same encoder or set adapt.adaptor.shared_experts=0"
            )
        self.conf = conf
        self.user_dim, self.item_dim = user_dim, item_dim
        n_shared, n_dedicated = conf.experts
        if n_shared and user_dim != item_dim:
            raise ValueError(
                f"adapt.adaptor.shared_experts={n_shared} needs user and item "
                f"embeddings of one size, got {user_dim} and {item_dim}; encode both with the "
                "same encoder or set adapt.adaptor.shared_experts=0"
            )
        dims = [*conf.hidden, conf.out_dim]
        self.shared = nn.ModuleList(mlp(user_dim, dims, conf.dropout) for _ in range(n_shared))
        in_dims = {"user": user_dim, "item": item_dim}
        self.dedicated = nn.ModuleDict(
            {
                t: nn.ModuleList(mlp(in_dims[t], dims, conf.dropout) for _ in range(n_dedicated))
                for t in TOWERS
            }
        )
        # One expert needs no gate: its weight is 1 (the MLP ablation).
        n_experts = n_shared + n_dedicated
        self.gate = nn.ModuleDict(
            {t: nn.Linear(in_dims[t], n_experts) for t in TOWERS} if n_experts > 1 else {}
        )

    def gate_weights(self, x: torch.Tensor, tower: Tower) -> torch.Tensor:
        """(B, shared + dedicated) mixing weights of `tower` for inputs `x`; rows sum to 1."""
        if not self.gate:
            return torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)
        return torch.softmax(self.gate[tower](x), dim=-1)

    def tower(self, x: torch.Tensor, tower: Tower) -> torch.Tensor:
        """(B, out_dim): the gate-weighted sum of the tower's experts applied to `x`."""
        experts = [*self.shared, *self.dedicated[tower]]
        outputs = torch.stack([e(x) for e in experts], dim=1)  # (B, E, out_dim)
        return (self.gate_weights(x, tower).unsqueeze(-1) * outputs).sum(dim=1)

    def user_vectors(self, x: torch.Tensor) -> torch.Tensor:
        """Reasoning vectors from user text embeddings."""
        return self.tower(x, "user")

    def item_vectors(self, x: torch.Tensor) -> torch.Tensor:
        """Fact vectors from item text embeddings."""
        return self.tower(x, "item")

    def forward(
        self, user_emb: torch.Tensor, item_emb: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_vectors(user_emb), self.item_vectors(item_emb)

    def describe(self) -> str:
        """Architecture tag stored next to every exported vector."""
        c = self.conf
        hidden = "x".join(str(h) for h in c.hidden) or "none"
        return f"{c.kind}({c.tag}hidden={hidden},out={c.out_dim})"

    def save(self, f: str | os.PathLike[str] | BinaryIO, **metadata: str) -> None:
        """Weights plus what rebuilds the module, so new entities can be encoded later.
        `f`: a file path or a writable binary file (a buffer bound for an object store)."""
        torch.save(
            {
                "conf": self.conf.model_dump(mode="json"),
                "user_dim": self.user_dim,
                "item_dim": self.item_dim,
                "state_dict": self.state_dict(),
                "metadata": metadata,
            },
            f,
        )

    @classmethod
    def load(cls, f: str | os.PathLike[str] | BinaryIO) -> HybridExpertAdaptor:
        """The adaptor saved by `save`, in eval mode."""
        ckpt = torch.load(f, map_location="cpu", weights_only=True)
        adaptor = cls(AdaptorConf(**ckpt["conf"]), ckpt["user_dim"], ckpt["item_dim"])
        adaptor.load_state_dict(ckpt["state_dict"])
        return adaptor.eval()
