"""adapters.vectors (export), adapters.gate and the backbone registry: small real torch modules."""

from __future__ import annotations

from typing import get_args

import numpy as np
import pytest
import torch

from adapters.config import ADAPTOR_KINDS, AdaptorConf, Backbone
from adapters.data import EntityMatrix
from adapters.gate import GateScore
from adapters.moe import HybridExpertAdaptor
from adapters.train import BACKBONES
from adapters.vectors import CHUNK_ROWS, export


def _adaptor(dim: int = 6) -> HybridExpertAdaptor:
    torch.manual_seed(0)
    conf = AdaptorConf(shared_experts=1, dedicated_experts=2, hidden=[8], out_dim=4, dropout=0.5)
    return HybridExpertAdaptor(conf, user_dim=dim, item_dim=dim)


def test_export_runs_each_kind_through_its_own_tower_in_eval_mode():
    adaptor = _adaptor().train()
    rng = np.random.default_rng(0)
    # More rows than one tower call takes, float64 in: chunks and dtype must not matter.
    users = EntityMatrix(
        [f"u{i}" for i in range(CHUNK_ROWS + 3)], rng.normal(size=(CHUNK_ROWS + 3, 6))
    )
    items = EntityMatrix(["i0", "i1"], rng.normal(size=(2, 6)).astype(np.float32))
    out = export(adaptor, {"item": items, "user": users})
    assert list(out) == ["user", "item"] and not adaptor.training  # dropout off
    assert out["user"].ids == users.ids and out["user"].values.shape == (CHUNK_ROWS + 3, 4)
    with torch.no_grad():
        want = adaptor.tower(torch.from_numpy(items.values), "item").numpy()
        other = adaptor.tower(torch.from_numpy(items.values), "user").numpy()
    np.testing.assert_allclose(out["item"].values, want, rtol=1e-6)
    assert not np.allclose(out["item"].values, other)  # the item tower, not the user's
    assert export(adaptor, {"item": items}).keys() == {"item"}


def test_export_refuses_non_finite_vectors():
    adaptor = _adaptor()
    with torch.no_grad():
        next(adaptor.parameters()).fill_(float("nan"))
    with pytest.raises(RuntimeError, match="user tower produced non-finite"):
        export(adaptor, {"user": EntityMatrix(["u"], np.ones((1, 6), np.float32))})


@pytest.mark.parametrize(
    ("live", "new", "passed"), [(0.70, 0.70, True), (0.70, 0.6951, True), (0.70, 0.6949, False)]
)
def test_gate_passes_within_tolerance_below_the_live_auc(live, new, passed):
    assert GateScore(live, new, tolerance=0.005).passed is passed


def test_every_configurable_backbone_has_a_builder():
    assert set(BACKBONES) == set(get_args(Backbone))


def test_every_configurable_adaptor_kind_is_registered():
    kinds = get_args(AdaptorConf.model_fields["kind"].annotation)
    assert set(ADAPTOR_KINDS) == set(kinds)
    assert [AdaptorConf(kind=k).experts for k in kinds] == [(2, 5), (2, 0), (0, 1)]
