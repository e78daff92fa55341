"""Reference CTR backbones and training (adapters/din.py, deepfm.py, dcn.py, train.py):
real torch modules on small, learnable data."""

from __future__ import annotations

import pytest
import torch
from ctr_samples import build, synthetic

from adapters.data import DISLIKED, LIKED, OOV, PAD, CTRTensors
from adapters.dcn import DCNv2
from adapters.deepfm import DeepFM
from adapters.din import DIN
from adapters.features import FeatureSizes
from adapters.train import train_and_evaluate
from jobs.plumbing.config import AdaptConf

SIZES = FeatureSizes(n_items=10, n_item_tokens=6, n_user_tokens=5)


def batch(history: torch.Tensor, feedback: torch.Tensor, target: torch.Tensor) -> CTRTensors:
    """Hand-made tensors: items carry tokens (id % 5) + 1, users tokens 1 and 2 (or none)."""
    b, length = history.shape
    item_tokens = torch.where(history != PAD, history % 5 + 1, PAD).unsqueeze(-1)
    return CTRTensors(
        target=target,
        target_tokens=(target % 5 + 1).unsqueeze(-1),
        history=history,
        history_tokens=item_tokens,
        feedback=feedback,
        user_tokens=torch.tensor([[1, 2]] * (b - 1) + [[PAD, PAD]]),
        user_row=torch.zeros(b, dtype=torch.long),
        item_row=torch.zeros(b, dtype=torch.long),
        label=torch.zeros(b),
    )


def backbones(kar_dim: int) -> list[torch.nn.Module]:
    return [
        DIN(SIZES, 8, kar_dim=kar_dim),
        DeepFM(SIZES, 8, kar_dim=kar_dim),
        DCNv2(SIZES, 8, kar_dim=kar_dim, cross_layers=2),
    ]


def test_backbones_shapes_with_and_without_kar():
    torch.manual_seed(0)
    history = torch.tensor([[2, 4, PAD], [5, PAD, PAD], [PAD, PAD, PAD]])
    b = batch(history, (history != PAD).long() * LIKED, torch.tensor([2, 3, OOV]))
    for model in backbones(0):
        assert model(b).shape == (3,)
    for model in backbones(66):
        out = model(b, torch.randn(3, 66))
        assert out.shape == (3,) and torch.isfinite(out).all()
        with pytest.raises(ValueError, match="kar_dim=66"):
            model(b)
        with pytest.raises(ValueError, match="kar_dim=66"):
            model(b, torch.randn(3, 65))


def test_backbones_ignore_padding():
    torch.manual_seed(0)
    target = torch.tensor([3, 4])
    short = torch.tensor([[2, 5], [6, 7]])
    padded = torch.cat([short, torch.full((2, 3), PAD)], dim=1)
    fb_short = torch.tensor([[DISLIKED, LIKED], [LIKED, LIKED]])
    fb_padded = torch.cat([fb_short, torch.zeros(2, 3, dtype=torch.long)], dim=1)
    din = backbones(0)[0].eval()
    weights = din.attention_weights(batch(padded, fb_padded, target))
    assert (weights[:, 2:] == 0).all() and (weights[:, :2] != 0).all()
    for model in backbones(0):
        model.eval()
        torch.testing.assert_close(
            model(batch(padded, fb_padded, target)), model(batch(short, fb_short, target))
        )


@pytest.mark.parametrize("backbone", ["din", "deepfm", "dcnv2"])
def test_backbone_learns_item_quality(backbone):
    samples, _, _ = synthetic(quality=0.5, taste=0.0)
    conf = AdaptConf(epochs=4, lr=3e-3, patience=2)
    result = train_and_evaluate(build(samples, None, None), conf, 3, backbone=backbone)
    assert result.auc > 0.65
    assert result.model.mode == "none" and 1 <= result.best_epoch <= 4


@pytest.mark.engines  # a minute of training
def test_cotrained_adaptor_reads_taste_from_text_that_din_cannot_see():
    samples, users, items = synthetic(quality=0.0, taste=0.8, n_users=300)
    data = build(samples, users, items)
    conf = AdaptConf(epochs=15, batch_size=64, lr=3e-3)
    without = train_and_evaluate(data, conf, seed=3)
    with_kar = train_and_evaluate(data, conf, seed=3, kar="cotrained")
    assert with_kar.model.mode == "cotrained"
    assert with_kar.auc > 0.75
    assert with_kar.auc > without.auc + 0.1
    assert with_kar.logloss < without.logloss
