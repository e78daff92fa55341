"""CTR samples (Arrow, SAMPLES schema) -> tensors: one feature pipeline for every backbone.

Features per sample: the target item (id and attribute tokens such as genres and
release decade), the recent history (ids, attribute tokens, liked/disliked), the
user's attribute tokens (demographics), and optionally rows into per-entity KAR
matrices (text embeddings, or frozen vectors read from a `vectors` table).

Item ids get a vocabulary built from the training users only (pad 0, OOV 1), so
items first seen in validation or test behave as they would in production.
Attribute tokens describe an entity, not a label, so their vocabulary covers
every entity. A validation slice of the training users (seeded, by user)
chooses the epoch; test users are only ever scored once, at the end.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, fields

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

log = logging.getLogger(__name__)

PAD, OOV = 0, 1
# History feedback tokens: pad, disliked (rating <= threshold), liked.
DISLIKED, LIKED = 1, 2


class DataError(ValueError):
    """The samples cannot make a train/validation/test split; names the cause and the fix."""


@dataclass(frozen=True)
class EntityMatrix:
    """Text embeddings of one entity kind: row i belongs to ids[i]."""

    ids: list[str]
    values: np.ndarray  # (N, D) float32

    def __post_init__(self) -> None:
        if self.values.ndim != 2 or self.values.shape[0] != len(self.ids):
            raise ValueError(f"{len(self.ids)} ids need a ({len(self.ids)}, D) matrix")

    @property
    def dim(self) -> int:
        return self.values.shape[1]

    def padded(self) -> torch.Tensor:
        """(N + 1, D) with an all-zero row 0 for entities that have no embedding."""
        zero = np.zeros((1, self.dim), dtype=np.float32)
        return torch.from_numpy(np.concatenate([zero, self.values.astype(np.float32)]))

    def rows(self, ids: pa.Array) -> np.ndarray:
        """Row in `padded()` for each id: 1 + position, or 0 where the id has no embedding."""
        pos = pc.index_in(ids, value_set=pa.array(self.ids, pa.string()))
        return pc.fill_null(pc.add(pos, 1), 0).to_numpy(zero_copy_only=False).astype(np.int64)


@dataclass(frozen=True)
class AttributeTokens:
    """Categorical attributes of one entity kind as token ids: row i belongs to ids[i].

    A token is "attribute=value"; integer values of two or more digits (ages, years)
    become decades ("year=1990s"), so rare exact values share a token.
    """

    ids: list[str]
    tokens: np.ndarray  # (N, K) int64 token ids, PAD after each entity's tokens
    vocab_size: int  # including PAD

    @classmethod
    def from_table(cls, attributes: pa.Table, kind: str) -> AttributeTokens:
        """From ATTRIBUTES rows (kind, entity_id, attribute, value) of `kind`."""
        rows = attributes.filter(pc.equal(attributes.column("kind"), kind))
        per_entity: dict[str, list[str]] = {}
        for eid, attr, value in zip(
            rows.column("entity_id").to_pylist(),
            rows.column("attribute").to_pylist(),
            rows.column("value").to_pylist(),
            strict=True,
        ):
            per_entity.setdefault(eid, []).append(_token(attr, value))
        vocab = {
            t: i + 1 for i, t in enumerate(sorted({t for ts in per_entity.values() for t in ts}))
        }
        ids = sorted(per_entity)
        width = max((len(set(ts)) for ts in per_entity.values()), default=1)
        tokens = np.full((len(ids), width), PAD, dtype=np.int64)
        for row, eid in enumerate(ids):
            mine = sorted({vocab[t] for t in per_entity[eid]})
            tokens[row, : len(mine)] = mine
        return cls(ids, tokens, len(vocab) + 1)

    def padded(self) -> np.ndarray:
        """(N + 1, K) with an all-PAD row 0 for entities without attributes."""
        return np.concatenate([np.full((1, self.tokens.shape[1]), PAD), self.tokens])

    def rows(self, ids: pa.Array) -> np.ndarray:
        """Row in `padded()` for each id: 1 + position, or 0 where the id has no attributes."""
        pos = pc.index_in(ids, value_set=pa.array(self.ids, pa.string()))
        return pc.fill_null(pc.add(pos, 1), 0).to_numpy(zero_copy_only=False).astype(np.int64)


def _token(attribute: str, value: str) -> str:
    value = value.strip()
    if value.isdigit() and len(value) >= 2:
        value = f"{int(value) // 10 * 10}s"
    return f"{attribute}={value}"


NO_ATTRIBUTES = AttributeTokens([], np.zeros((0, 1), dtype=np.int64), 1)


@dataclass(frozen=True)
class CTRTensors:
    """One slice of samples; `user_row`/`item_row` index the padded KAR matrices."""

    target: torch.Tensor  # (B,) item vocab id
    target_tokens: torch.Tensor  # (B, K_item) attribute tokens of the target item
    history: torch.Tensor  # (B, L) item vocab ids, PAD after the real entries
    history_tokens: torch.Tensor  # (B, L, K_item) attribute tokens of the history items
    feedback: torch.Tensor  # (B, L) PAD / DISLIKED / LIKED
    user_tokens: torch.Tensor  # (B, K_user) attribute tokens of the user
    user_row: torch.Tensor  # (B,) 0 = no user embedding
    item_row: torch.Tensor  # (B,) 0 = no item embedding
    label: torch.Tensor  # (B,) float 0/1

    def __len__(self) -> int:
        return self.label.shape[0]

    def take(self, index: torch.Tensor) -> CTRTensors:
        return CTRTensors(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def to(self, device: str | torch.device) -> CTRTensors:
        return CTRTensors(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> Iterator[CTRTensors]:
        """Mini-batches; shuffled when a seeded `generator` is given, in order otherwise."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        for start in range(0, n, batch_size):
            yield self.take(order[start : start + batch_size])


@dataclass(frozen=True)
class CTRData:
    """Fit / validation / test tensors plus what the models need to size themselves."""

    fit: CTRTensors
    valid: CTRTensors
    test: CTRTensors
    n_items: int  # vocabulary size including PAD and OOV
    n_item_tokens: int  # item attribute vocabulary size including PAD
    n_user_tokens: int  # user attribute vocabulary size including PAD
    history_length: int
    user_matrix: torch.Tensor | None  # (N_users + 1, D_u), row 0 zero
    item_matrix: torch.Tensor | None  # (N_items + 1, D_i), row 0 zero


def _labelled_user_slice(samples: pa.Table, fraction: float, seed: int, role: str) -> set[str]:
    """A seeded `fraction` of the users (at least one, never all) for a `role` slice.

    AUC needs both labels, so on small data the slice grows, one user at a time in
    the same seeded order, until it holds a positive and a negative sample.
    """
    per_user: dict[str, set[int]] = {}
    for user, label in zip(
        samples.column("user_id").to_pylist(), samples.column("label").to_pylist(), strict=True
    ):
        per_user.setdefault(user, set()).add(label)
    users = sorted(per_user)
    if len(users) < 2:
        raise DataError(
            f"{len(users)} user(s) to split; a {role} slice needs at least 2 "
            "(sample more users: data.sample.max_users)"
        )
    order = [users[i] for i in np.random.default_rng(seed).permutation(len(users))]
    k = min(max(1, math.ceil(fraction * len(users))), len(users) - 1)
    labels = set().union(*(per_user[u] for u in order[:k]))
    while labels != {0, 1} and k < len(users) - 1:
        labels |= per_user[order[k]]
        k += 1
    return set(order[:k])


def split_validation(train: pa.Table, fraction: float, seed: int) -> set[str]:
    """The training users that pick the epoch (never test users); see _labelled_user_slice."""
    return _labelled_user_slice(train, fraction, seed, "validation")


def resplit(samples: pa.Table, test_fraction: float, seed: int) -> pa.Table:
    """`samples` with a new 9:1-style user split: a seeded `test_fraction` of users is test.

    Evaluation repeats the split per seed, since on ~100 test users the AUC moves
    with the draw; comparisons are paired on one split.
    """
    test = pa.array(sorted(_labelled_user_slice(samples, test_fraction, seed, "test")), pa.string())
    split = pc.if_else(pc.is_in(samples.column("user_id"), value_set=test), "test", "train")
    return samples.set_column(samples.schema.get_field_index("split"), "split", split)


def item_vocab(samples: pa.Table) -> pa.Array:
    """Sorted distinct item ids (targets and histories) of `samples`; vocab id = index + 2."""
    ids = pa.concat_arrays(
        [
            samples.column("item_id").combine_chunks(),
            pc.list_flatten(samples.column("history_item_ids").combine_chunks()),
        ]
    )
    return pc.unique(ids).sort()


def _vocab_ids(ids: pa.Array, vocab: pa.Array) -> np.ndarray:
    pos = pc.index_in(ids, value_set=vocab)
    return pc.fill_null(pc.add(pos, 2), OOV).to_numpy(zero_copy_only=False).astype(np.int64)


def _pad_recent(lists: pa.ListArray, values: np.ndarray, length: int) -> np.ndarray:
    """(rows, length) of each list's last `length` values, left-aligned, PAD after."""
    lens = pc.list_value_length(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    parent = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)
    offsets = np.concatenate([[0], np.cumsum(lens)])
    pos = np.arange(len(parent)) - offsets[parent]  # index within its list
    col = pos - np.maximum(lens[parent] - length, 0)
    keep = col >= 0
    out = np.full((len(lens), length), PAD, dtype=np.int64)
    out[parent[keep], col[keep]] = values[keep]
    return out


def _tensors(
    samples: pa.Table,
    vocab: pa.Array,
    history_length: int,
    like_threshold: float,
    users: EntityMatrix | None,
    items: EntityMatrix | None,
    user_attrs: AttributeTokens,
    item_attrs: AttributeTokens,
) -> CTRTensors:
    n = samples.num_rows
    item_ids = samples.column("item_id").combine_chunks()
    user_ids = samples.column("user_id").combine_chunks()
    hist = samples.column("history_item_ids").combine_chunks()
    ratings = pc.list_flatten(samples.column("history_ratings").combine_chunks())
    flat = pc.list_flatten(hist)
    hist_ids = _vocab_ids(flat, vocab)
    liked = np.where(ratings.to_numpy(zero_copy_only=False) > like_threshold, LIKED, DISLIKED)
    item_tokens = item_attrs.padded()
    # Row 0 of `padded()` is all PAD, so padded history positions get PAD tokens.
    hist_rows = _pad_recent(hist, item_attrs.rows(flat), history_length)
    zeros = np.zeros(n, dtype=np.int64)
    return CTRTensors(
        target=torch.from_numpy(_vocab_ids(item_ids, vocab)),
        target_tokens=torch.from_numpy(item_tokens[item_attrs.rows(item_ids)]),
        history=torch.from_numpy(_pad_recent(hist, hist_ids, history_length)),
        history_tokens=torch.from_numpy(item_tokens[hist_rows]),
        feedback=torch.from_numpy(_pad_recent(hist, liked.astype(np.int64), history_length)),
        user_tokens=torch.from_numpy(user_attrs.padded()[user_attrs.rows(user_ids)]),
        user_row=torch.from_numpy(users.rows(user_ids) if users else zeros),
        item_row=torch.from_numpy(items.rows(item_ids) if items else zeros),
        label=torch.from_numpy(samples.column("label").to_numpy().astype(np.float32)),
    )


def _check_both_labels(part: pa.Table, name: str, fix: str) -> None:
    labels = set(part.column("label").to_pylist())
    if labels != {0, 1}:
        raise DataError(
            f"the {name} slice has {part.num_rows} samples with label(s) {sorted(labels)}; "
            f"AUC needs both 0 and 1 ({fix})"
        )


def build(
    samples: pa.Table,
    *,
    history_length: int,
    like_threshold: float,
    validation_fraction: float,
    seed: int,
    users: EntityMatrix | None = None,
    items: EntityMatrix | None = None,
    attributes: pa.Table | None = None,
) -> CTRData:
    """Split samples into fit / validation (train users) / test and encode them as tensors.

    `users`/`items` are per-entity KAR inputs (text embeddings or frozen vectors);
    `attributes` are ATTRIBUTES rows (none: the backbones see ids and history only).
    """
    split = samples.column("split")
    train = samples.filter(pc.equal(split, "train"))
    test = samples.filter(pc.equal(split, "test"))
    train_users = pc.unique(train.column("user_id")).to_pylist()
    valid_users = split_validation(train, validation_fraction, seed)
    in_valid = pc.is_in(train.column("user_id"), value_set=pa.array(sorted(valid_users)))
    fit, valid = train.filter(pc.invert(in_valid)), train.filter(in_valid)
    more = "sample more users (data.sample.max_users)"
    _check_both_labels(fit, "fit", more)
    _check_both_labels(valid, "validation", f"raise adapt.validation_fraction or {more}")
    _check_both_labels(test, "test", f"raise prepare.test_fraction or {more}")

    vocab = item_vocab(fit)
    log.info(
        "samples: %d fit (%d users), %d validation (%d users), %d test; %d items in vocabulary",
        fit.num_rows,
        len(train_users) - len(valid_users),
        valid.num_rows,
        len(valid_users),
        test.num_rows,
        len(vocab),
    )
    user_attrs = item_attrs = NO_ATTRIBUTES
    if attributes is not None:
        user_attrs = AttributeTokens.from_table(attributes, "user")
        item_attrs = AttributeTokens.from_table(attributes, "item")
    parts = [
        _tensors(p, vocab, history_length, like_threshold, users, items, user_attrs, item_attrs)
        for p in (fit, valid, test)
    ]
    for kind, matrix, rows in (("user", users, "user_row"), ("item", items, "item_row")):
        if matrix is None:
            continue
        missing = sum(int((getattr(p, rows) == 0).sum()) for p in parts)
        log.info(
            "%s text embeddings: %d entities; %d of %d samples have none (zero vector, masked)",
            kind,
            len(matrix.ids),
            missing,
            samples.num_rows,
        )
    return CTRData(
        fit=parts[0],
        valid=parts[1],
        test=parts[2],
        n_items=len(vocab) + 2,
        n_item_tokens=item_attrs.vocab_size,
        n_user_tokens=user_attrs.vocab_size,
        history_length=history_length,
        user_matrix=users.padded() if users else None,
        item_matrix=items.padded() if items else None,
    )
