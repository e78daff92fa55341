"""Train DIN with or without KAR vectors and score it on held-out users.

With KAR the hybrid-expert adaptor is co-trained with DIN (the paper's way):
frozen text embeddings go through the adaptor's towers, the resulting
reasoning and fact vectors join DIN's MLP input, and one BCE loss trains both.
Both variants get the same seed, split and epoch budget, so their AUCs compare.
The epoch kept is the one with the best AUC on validation users, never on test.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import log_loss, roc_auc_score
from torch import nn
from tqdm.auto import tqdm

from adapters.data import CTRData, CTRTensors
from adapters.din import DIN
from adapters.moe import HybridExpertAdaptor
from jobs.config import AdaptConf

log = logging.getLogger(__name__)


class CTRModel(nn.Module):
    """DIN, optionally fed by a HybridExpertAdaptor over fixed per-entity text embeddings."""

    def __init__(
        self,
        din: DIN,
        adaptor: HybridExpertAdaptor | None = None,
        user_matrix: torch.Tensor | None = None,
        item_matrix: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if adaptor is not None and (user_matrix is None or item_matrix is None):
            raise ValueError("a KAR model needs both user and item embedding matrices")
        self.din = din
        self.adaptor = adaptor
        # Inputs, not weights: kept out of the state dict (and so out of checkpoints).
        self.register_buffer("user_matrix", user_matrix, persistent=False)
        self.register_buffer("item_matrix", item_matrix, persistent=False)

    def kar_features(self, batch: CTRTensors) -> torch.Tensor:
        """[reasoning vec, fact vec, has_user_text, has_item_text]; vectors zeroed without text."""
        has_u = (batch.user_row > 0).float().unsqueeze(-1)
        has_i = (batch.item_row > 0).float().unsqueeze(-1)
        u = self.adaptor.user_vectors(self.user_matrix[batch.user_row]) * has_u
        i = self.adaptor.item_vectors(self.item_matrix[batch.item_row]) * has_i
        return torch.cat([u, i, has_u, has_i], dim=-1)

    def forward(self, batch: CTRTensors) -> torch.Tensor:
        kar = self.kar_features(batch) if self.adaptor is not None else None
        return self.din(batch.target, batch.history, batch.feedback, kar)


@dataclass(frozen=True)
class TrainResult:
    auc: float  # test users
    logloss: float  # test users
    valid_auc: float  # best epoch, validation users
    best_epoch: int
    seconds: float
    model: CTRModel


def seed_everything(seed: int) -> None:
    """Same seed -> same initial weights and batch order for both variants."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(data: CTRData, conf: AdaptConf, with_kar: bool) -> CTRModel:
    if not with_kar:
        return CTRModel(DIN(data.n_items, conf.embedding_dim, dropout=conf.adaptor.dropout))
    if data.user_matrix is None or data.item_matrix is None:
        raise ValueError("KAR training needs user and item text embeddings in the CTR data")
    adaptor = HybridExpertAdaptor(
        conf.adaptor, user_dim=data.user_matrix.shape[1], item_dim=data.item_matrix.shape[1]
    )
    din = DIN(
        data.n_items,
        conf.embedding_dim,
        kar_dim=2 * conf.adaptor.out_dim + 2,
        dropout=conf.adaptor.dropout,
    )
    return CTRModel(din, adaptor, data.user_matrix, data.item_matrix)


@torch.no_grad()
def predict(model: CTRModel, tensors: CTRTensors, batch_size: int, device: str) -> np.ndarray:
    """Click probabilities in sample order (eval mode: no dropout)."""
    model.eval()
    out = [torch.sigmoid(model(b.to(device))).cpu() for b in tensors.batches(batch_size)]
    return torch.cat(out).numpy()


def _metrics(labels: torch.Tensor, probs: np.ndarray) -> tuple[float, float]:
    y = labels.numpy()
    return float(roc_auc_score(y, probs)), float(log_loss(y, probs, labels=[0, 1]))


def train_and_evaluate(data: CTRData, conf: AdaptConf, seed: int, with_kar: bool) -> TrainResult:
    """Adam + BCE for `conf.epochs` epochs; keep the best-validation-AUC weights; score test."""
    started = time.monotonic()
    name = "DIN+KAR" if with_kar else "DIN"
    seed_everything(seed)
    model = build_model(data, conf, with_kar).to(conf.device)
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
