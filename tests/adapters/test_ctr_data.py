"""CTR samples -> tensors (adapters/data.py): attribute tokens, splits, vocabularies."""

from __future__ import annotations

import pyarrow as pa
import pytest
from ctr_samples import build, synthetic

from adapters import data as ctr_data
from adapters.data import OOV, PAD, AttributeTokens, EntityMatrix
from jobs.plumbing import schemas


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
