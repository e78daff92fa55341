"""KAR's hybrid-expert adaptor (adapters/moe.py): kinds, gates, towers, checkpoints."""

from __future__ import annotations

import pytest
import torch

from adapters.config import AdaptorConf
from adapters.moe import HybridExpertAdaptor


def adaptor(
    shared: int = 2, dedicated: int = 5, dim: int = 384, kind: str = "hybrid_moe"
) -> HybridExpertAdaptor:
    conf = AdaptorConf(
        kind=kind,
        shared_experts=shared,
        dedicated_experts=dedicated,
        hidden=[128],
        out_dim=32,
        dropout=0.1,
    )
    return HybridExpertAdaptor(conf, user_dim=dim, item_dim=dim).eval()


@pytest.mark.parametrize(
    ("kind", "shared", "n_shared", "n_dedicated"),
    [("hybrid_moe", 2, 2, 5), ("hybrid_moe", 0, 0, 5), ("moe", 3, 3, 0), ("mlp", 2, 0, 1)],
)
def test_adaptor_kinds_shapes_and_softmax_gates(kind, shared, n_shared, n_dedicated):
    torch.manual_seed(0)
    moe = adaptor(shared=shared, kind=kind)
    u, i = torch.randn(8, 384), torch.randn(8, 384)
    user_vec, item_vec = moe(u, i)
    assert user_vec.shape == item_vec.shape == (8, 32)
    assert torch.equal(moe.user_vectors(u), user_vec)
    assert torch.equal(moe.item_vectors(i), item_vec)
    for tower, x in (("user", u), ("item", i)):
        gates = moe.gate_weights(x, tower)
        assert gates.shape == (8, n_shared + n_dedicated)
        assert (gates >= 0).all()
        torch.testing.assert_close(gates.sum(dim=-1), torch.ones(8))
    assert len(moe.shared) == n_shared
    assert len(moe.dedicated["user"]) == len(moe.dedicated["item"]) == n_dedicated
    # The gate input is the tower's own text: different texts get different mixtures.
    if n_shared + n_dedicated > 1:
        gates = moe.gate_weights(u, "user")
        assert not torch.allclose(gates[0], gates[1])


def test_adaptor_kinds_are_validated_and_described():
    with pytest.raises(ValueError, match="shared_experts >= 1"):
        AdaptorConf(kind="moe", shared_experts=0)
    with pytest.raises(ValueError, match="dedicated_experts >= 1"):
        AdaptorConf(kind="hybrid_moe", dedicated_experts=0)
    assert adaptor(kind="moe").describe() == "moe(shared=2,hidden=128,out=32)"
    assert adaptor(kind="mlp").describe() == "mlp(hidden=128,out=32)"


def test_user_vector_depends_only_on_user_text():
    torch.manual_seed(0)
    moe = adaptor()
    u = torch.randn(4, 384)
    user_a, item_a = moe(u, torch.randn(4, 384))
    user_b, item_b = moe(u, torch.randn(4, 384))
    torch.testing.assert_close(user_a, user_b, rtol=0, atol=0)
    assert not torch.allclose(item_a, item_b)


def test_shared_experts_need_one_embedding_size():
    conf = AdaptorConf(shared_experts=2)
    with pytest.raises(ValueError, match="shared_experts=0"):
        HybridExpertAdaptor(conf, user_dim=384, item_dim=768)
    HybridExpertAdaptor(conf.model_copy(update={"shared_experts": 0}), 384, 768)


def test_adaptor_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    moe = adaptor()
    moe.save(tmp_path / "a.pt", version_id="v1")
    again = HybridExpertAdaptor.load(tmp_path / "a.pt")
    x = torch.randn(3, 384)
    torch.testing.assert_close(again.user_vectors(x), moe.user_vectors(x))
    assert (
        again.describe() == moe.describe() == ("hybrid_moe(shared=2,dedicated=5,hidden=128,out=32)")
    )
