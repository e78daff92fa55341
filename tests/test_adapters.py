"""Hybrid-expert adaptor, DIN and CTR training: real torch modules on small, learnable data."""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch
from ctr_samples import build, synthetic

from adapters import data as ctr_data
from adapters.config import AdaptorConf
from adapters.data import DISLIKED, LIKED, OOV, PAD, AttributeTokens, CTRTensors, EntityMatrix
from adapters.dcn import DCNv2
from adapters.deepfm import DeepFM
from adapters.din import DIN
from adapters.features import FeatureSizes
from adapters.moe import HybridExpertAdaptor
from adapters.train import train_and_evaluate
from jobs.plumbing import schemas
from jobs.plumbing.config import AdaptConf


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


def test_attribute_tokens_bucket_numbers_and_pad():
    rows = pa.table(
        {
            "kind": ["item"] * 4 + ["user"],
            "entity_id": ["i1", "i1", "i1", "i2", "u1"],
            "attribute": ["genre", "genre", "year", "year", "age"],
            "value": ["Drama", "Comedy", "1995", "1991", "24"],
        }
    )
    items = AttributeTokens.from_table(rows, "item")
    # Vocabulary: PAD, genre=Comedy, genre=Drama, year=1990s.
    assert items.ids == ["i1", "i2"] and items.vocab_size == 4
    assert items.tokens.tolist() == [[1, 2, 3], [3, PAD, PAD]]
    assert items.rows(pa.array(["i2", "nope", "i1"])).tolist() == [2, 0, 1]
    assert items.padded()[0].tolist() == [PAD] * 3
    users = AttributeTokens.from_table(rows, "user")
    assert users.tokens.tolist() == [[1]] and users.vocab_size == 2


def test_build_splits_by_user_and_encodes_histories():
    samples, users, items = synthetic(quality=0.5, taste=0.3)
    # Drop user u0's text: its samples must point at row 0 (no embedding).
    users = EntityMatrix(users.ids[1:], users.values[1:])
    data = build(samples, users, items, history_length=4, validation_fraction=0.1, seed=7)
    n_train = sum(s == "train" for s in samples.column("split").to_pylist())
    assert len(data.fit) + len(data.valid) == n_train
    assert len(data.test) == samples.num_rows - n_train
    train = samples.filter(pa.compute.equal(samples.column("split"), "train"))
    valid_users = ctr_data.split_validation(train, 0.1, 7)
    assert len(valid_users) == 12 and not any(int(u[1:]) % 5 == 0 for u in valid_users)
    assert data.fit.history.shape[1] == 4 and data.n_items == 42
    assert data.n_item_tokens == data.n_user_tokens == 1  # no attributes given
    # The last sample has 10 earlier interactions: the 4 most recent are kept, in order.
    last = samples.slice(samples.num_rows - 1, 1)
    vocab = ctr_data.item_vocab(samples)
    tail = last.column("history_item_ids")[0].as_py()[-4:]
    attrs = pa.table(
        {
            "kind": ["item", "item", "user"],
            "entity_id": [tail[-1], tail[-1], last["user_id"][0].as_py()],
            "attribute": ["genre", "year", "gender"],
            "value": ["Drama", "1977", "F"],
        }
    )
    item_attrs = AttributeTokens.from_table(attrs, "item")
    user_attrs = AttributeTokens.from_table(attrs, "user")
    encoded = ctr_data._tensors(last, vocab, 4, 3.0, users, items, user_attrs, item_attrs)
    assert encoded.history[0].tolist() == [vocab.to_pylist().index(i) + 2 for i in tail]
    liked = [2 if r > 3 else 1 for r in last.column("history_ratings")[0].as_py()[-4:]]
    assert encoded.feedback[0].tolist() == liked
    # Only the newest history item has attributes; the user has one token.
    assert encoded.history_tokens[0].tolist() == [[PAD, PAD]] * 3 + [[1, 2]]
    assert encoded.user_tokens[0].tolist() == [1]
    assert data.user_matrix.shape == (150, 24) and (data.user_matrix[0] == 0).all()
    no_text = sum(int((p.user_row == 0).sum()) for p in (data.fit, data.valid, data.test))
    assert no_text == 8  # u0's samples
    assert int((data.test.item_row == 0).sum()) == 0


def test_item_vocabulary_comes_from_fit_users_only():
    samples, _, _ = synthetic(quality=0.5, taste=0.3)
    is_test = pa.compute.equal(samples.column("split"), "test")
    test_only = samples.filter(is_test)
    renamed = test_only.set_column(
        1, schemas.SAMPLES.field("item_id"), pa.array(["unseen"] * test_only.num_rows)
    )
    data = build(
        pa.concat_tables([samples.filter(pa.compute.invert(is_test)), renamed]), None, None
    )
    assert (data.test.target == OOV).all()
    assert data.user_matrix is None and (data.fit.user_row == 0).all()


def labelled(labels_per_user: dict[str, list[int]]) -> pa.Table:
    """A minimal train slice: one row per (user, label) with just the columns the split reads."""
    rows = [(u, y) for u, ys in labels_per_user.items() for y in ys]
    return pa.table({"user_id": [u for u, _ in rows], "label": [y for _, y in rows]})


def test_too_few_users_for_validation_is_a_clear_error():
    with pytest.raises(ctr_data.DataError, match="max_users"):
        ctr_data.split_validation(labelled({"u1": [0, 1]}), 0.1, 0)


def test_validation_slice_grows_in_seeded_order_until_it_has_both_labels():
    # Nine all-negative users and one all-positive: 10% is one user, usually negative only.
    train = labelled({f"u{i}": [0, 0] for i in range(9)} | {"pos": [1]})
    for seed in range(20):
        chosen = ctr_data.split_validation(train, 0.1, seed)
        # It has both labels, or "pos" came last in the seeded order and fit keeps it.
        assert "pos" in chosen or len(chosen) == 9
        assert 1 <= len(chosen) <= 9
        # The slice is a prefix of one seeded order: a larger fraction never drops a user.
        assert chosen <= ctr_data.split_validation(train, 0.95, seed)
    grown = [len(ctr_data.split_validation(train, 0.1, seed)) for seed in range(20)]
    assert max(grown) > 1  # 10% alone is one user: the slice did grow
    # Single-label data cannot be fixed by growing: it stops short of taking every user.
    assert len(ctr_data.split_validation(labelled({f"u{i}": [0] for i in range(5)}), 0.1, 0)) == 4


def test_evaluation_resplit_gives_each_seed_a_test_slice_with_both_labels():
    users = {f"u{i}": [0, 0] for i in range(9)} | {"pos": [1]}
    samples = labelled(users).append_column("split", pa.array(["train"] * 19))
    sizes = []
    for seed in range(20):
        split = ctr_data.resplit(samples, 0.1, seed)
        test = split.filter(pa.compute.equal(split.column("split"), "test"))
        test_users = set(test.column("user_id").to_pylist())
        # Both labels, or "pos" came last in the seeded order and training keeps it.
        assert set(test.column("label").to_pylist()) == {0, 1} or len(test_users) == 9
        assert 1 <= len(test_users) <= 9
        assert ctr_data.resplit(samples, 0.1, seed).equals(split)  # seeded: same draw again
        sizes.append(len(test_users))
    assert max(sizes) > 1  # 10% alone is one user: the slice did grow


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
