"""Train a CTR backbone with or without KAR vectors and score it on held-out users.

KAR vectors reach a backbone in one of two ways:
- co-trained (the paper's way): frozen text embeddings go through the adaptor's
  towers and one BCE loss trains adaptor and backbone together;
- frozen (what downstream teams do): vectors already exported by an adaptor
  (read from a `vectors` table) are fixed dense inputs.
Either way the backbone gets [user vector, item vector, has_user, has_item] for
the towers present; a missing entity's vector is zero and its flag 0.
Variants compared get the same seed, split and epoch budget. The epoch kept is
the one with the best AUC on validation users, never on test users.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import log_loss, roc_auc_score
from torch import nn
from tqdm.auto import tqdm

from adapters.config import Backbone, TrainConf
from adapters.data import CTRData, CTRTensors
from adapters.dcn import DCNv2
from adapters.deepfm import DeepFM
from adapters.din import DIN
from adapters.features import FeatureSizes
from adapters.moe import HybridExpertAdaptor

log = logging.getLogger(__name__)

KarMode = Literal["none", "cotrained", "frozen"]


@dataclass(frozen=True)
class BackboneSpec:
    """A reference CTR backbone: its display name and how to build it for `kar_dim` KAR inputs."""

    label: str
    build: Callable[[FeatureSizes, TrainConf, int], nn.Module]


def _deep(cls: type[DIN] | type[DeepFM]) -> Callable[[FeatureSizes, TrainConf, int], nn.Module]:
    """Builder of a backbone whose deep part is conf.dnn_hidden (DIN, DeepFM)."""

    def build(sizes: FeatureSizes, conf: TrainConf, kar_dim: int) -> nn.Module:
        hidden, dropout = tuple(conf.dnn_hidden), conf.adaptor.dropout
        return cls(sizes, conf.embedding_dim, kar_dim=kar_dim, hidden=hidden, dropout=dropout)

    return build


def _dcnv2(sizes: FeatureSizes, conf: TrainConf, kar_dim: int) -> nn.Module:
    hidden, dropout = tuple(conf.dnn_hidden), conf.adaptor.dropout
    return DCNv2(
        sizes, conf.embedding_dim, kar_dim, conf.cross_layers, hidden=hidden, dropout=dropout
    )


# adapters.config.Backbone names -> backbones (a test checks the two agree).
BACKBONES: dict[str, BackboneSpec] = {
    "din": BackboneSpec("DIN", _deep(DIN)),
    "deepfm": BackboneSpec("DeepFM", _deep(DeepFM)),
    "dcnv2": BackboneSpec("DCNv2", _dcnv2),
}


class CTRModel(nn.Module):
    """A backbone, optionally fed KAR vectors: co-trained through an adaptor, or frozen."""

    def __init__(
        self,
        backbone: nn.Module,
        adaptor: HybridExpertAdaptor | None = None,
        user_matrix: torch.Tensor | None = None,
        item_matrix: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.adaptor = adaptor
        # Inputs, not weights: kept out of the state dict (and so out of checkpoints).
        self.register_buffer("user_matrix", user_matrix, persistent=False)
        self.register_buffer("item_matrix", item_matrix, persistent=False)

    @property
    def mode(self) -> KarMode:
        if self.adaptor is not None:
            return "cotrained"
        return "none" if self.user_matrix is None and self.item_matrix is None else "frozen"

    def _tower(self, matrix: torch.Tensor, rows: torch.Tensor, kind: str) -> list[torch.Tensor]:
        has = (rows > 0).float().unsqueeze(-1)
        x = matrix[rows]
        vec = self.adaptor.tower(x, kind) if self.adaptor is not None else x
        return [vec * has, has]

    def kar_features(self, batch: CTRTensors) -> torch.Tensor | None:
        """[user vec, has_user] and/or [item vec, has_item]; None without KAR."""
        parts: list[torch.Tensor] = []
        if self.user_matrix is not None:
            parts += self._tower(self.user_matrix, batch.user_row, "user")
        if self.item_matrix is not None:
            parts += self._tower(self.item_matrix, batch.item_row, "item")
        return torch.cat(parts, dim=-1) if parts else None

    def forward(self, batch: CTRTensors) -> torch.Tensor:
        return self.backbone(batch, self.kar_features(batch))


@dataclass(frozen=True)
class TrainResult:
    auc: float  # test users
    logloss: float  # test users
    valid_auc: float  # best epoch, validation users
    best_epoch: int
    seconds: float
    model: CTRModel


def seed_everything(seed: int) -> None:
    """Same seed -> same initial weights and batch order for every variant."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_backbone(name: Backbone, data: CTRData, conf: TrainConf, kar_dim: int) -> nn.Module:
    return BACKBONES[name].build(FeatureSizes.of(data), conf, kar_dim)


def build_model(data: CTRData, conf: TrainConf, kar: KarMode, backbone: Backbone) -> CTRModel:
    """`kar`: none; cotrained (adaptor over `data`'s text matrices); frozen (matrices as-is)."""
    users, items = data.user_matrix, data.item_matrix
    if kar == "none":
        return CTRModel(make_backbone(backbone, data, conf, 0))
    if users is None and items is None:
        raise ValueError(f"{kar} KAR training needs user or item matrices in the CTR data")
    present = [m for m in (users, items) if m is not None]
    if kar == "frozen":
        kar_dim = sum(m.shape[1] + 1 for m in present)
        return CTRModel(make_backbone(backbone, data, conf, kar_dim), None, users, items)
    dims = [m.shape[1] for m in present]
    adaptor = HybridExpertAdaptor(conf.adaptor, user_dim=dims[0], item_dim=dims[-1])
    kar_dim = len(present) * (conf.adaptor.out_dim + 1)
    return CTRModel(make_backbone(backbone, data, conf, kar_dim), adaptor, users, items)


@torch.no_grad()
def predict(model: CTRModel, tensors: CTRTensors, batch_size: int, device: str) -> np.ndarray:
    """Click probabilities in sample order (eval mode: no dropout)."""
    model.eval()
    out = [torch.sigmoid(model(b.to(device))).cpu() for b in tensors.batches(batch_size)]
    return torch.cat(out).numpy()


def _metrics(labels: torch.Tensor, probs: np.ndarray) -> tuple[float, float]:
    y = labels.numpy()
    return float(roc_auc_score(y, probs)), float(log_loss(y, probs, labels=[0, 1]))


def train_and_evaluate(
    data: CTRData,
    conf: TrainConf,
    seed: int,
    kar: KarMode = "none",
    backbone: Backbone | None = None,
) -> TrainResult:
    """Adam + BCE for up to `conf.epochs` epochs (early stop after `conf.patience` epochs
    without a better validation AUC); keep the best-validation weights; score test once."""
    started = time.monotonic()
    backbone = backbone or conf.backbone
    name = BACKBONES[backbone].label + ("" if kar == "none" else f"+KAR({kar})")
    seed_everything(seed)
    model = build_model(data, conf, kar, backbone).to(conf.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=conf.lr, weight_decay=conf.weight_decay)
    order = torch.Generator().manual_seed(seed)
    n_batches = math.ceil(len(data.fit) / conf.batch_size)
    best_auc, best_epoch, best_state = -math.inf, 0, None
    for epoch in tqdm(range(1, conf.epochs + 1), desc=f"train {name}", unit="epoch"):
        model.train()
        total = 0.0
        for batch in tqdm(
            data.fit.batches(conf.batch_size, order),
            total=n_batches,
            desc=f"epoch {epoch}",
            unit="batch",
            leave=False,
        ):
            batch = batch.to(conf.device)
            loss = F.binary_cross_entropy_with_logits(model(batch), batch.label)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        valid_auc, valid_ll = _metrics(
            data.valid.label, predict(model, data.valid, conf.batch_size, conf.device)
        )
        log.info(
            "%s epoch %d: train loss %.4f, validation AUC %.4f, LogLoss %.4f",
            name,
            epoch,
            total / len(data.fit),
            valid_auc,
            valid_ll,
        )
        if valid_auc > best_auc:
            best_auc, best_epoch = valid_auc, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif conf.patience is not None and epoch - best_epoch >= conf.patience:
            log.info("%s: no better validation AUC for %d epochs; stopping", name, conf.patience)
            break
    model.load_state_dict(best_state)
    test_probs = predict(model, data.test, conf.batch_size, conf.device)
    auc, logloss = _metrics(data.test.label, test_probs)
    seconds = time.monotonic() - started
    log.info(
        "%s: best epoch %d (validation AUC %.4f); test AUC %.4f, LogLoss %.4f (%.1f s)",
        name,
        best_epoch,
        best_auc,
        auc,
        logloss,
        seconds,
    )
    return TrainResult(auc, logloss, best_auc, best_epoch, seconds, model)
