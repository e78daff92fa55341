"""The adapters library's settings: the adaptor's shape and how a CTR model is trained.

Plain pydantic models that import neither torch nor the job, so a config can be
loaded and checked anywhere; the job's config (jobs/plumbing/config.py) composes them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Backbone = Literal["din", "deepfm", "dcnv2"]


class _Conf(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


@dataclass(frozen=True)
class AdaptorKind:
    """What one adaptor kind builds from the settings, and which setting it cannot do without."""

    # (shared experts, dedicated experts per tower) of a conf of this kind
    experts: Callable[[AdaptorConf], tuple[int, int]]
    # Its expert settings as they appear in the architecture tag of every exported vector.
    tag: Callable[[AdaptorConf], str]
    # The expert setting that must be >= 1, and the advice when it is 0.
    needs: str | None = None
    advice: str = ""


ADAPTOR_KINDS: dict[str, AdaptorKind] = {
    "hybrid_moe": AdaptorKind(
        lambda c: (c.shared_experts, c.dedicated_experts),
        lambda c: f"shared={c.shared_experts},dedicated={c.dedicated_experts},",
        "dedicated_experts",
        "(or use kind 'moe' for shared experts only)",
    ),
    "moe": AdaptorKind(
        lambda c: (c.shared_experts, 0),
        lambda c: f"shared={c.shared_experts},",
        "shared_experts",
        "(it mixes shared experts only)",
    ),
    "mlp": AdaptorKind(lambda c: (0, 1), lambda c: ""),
}


class AdaptorConf(_Conf):
    """Text embeddings -> reasoning (user) / fact (item) vectors; the kinds exist for ablations.

    hybrid_moe: KAR's adaptor, per-tower softmax gate over shared + dedicated experts.
    moe: shared experts only, one gate per tower (`dedicated_experts` is not used).
    mlp: one expert MLP per tower, no gate (`shared_experts`/`dedicated_experts` not used).
    """

    kind: Literal["hybrid_moe", "moe", "mlp"] = "hybrid_moe"
    shared_experts: int = Field(default=2, ge=0)
    dedicated_experts: int = Field(default=5, ge=0)
    hidden: list[int] = Field(default_factory=lambda: [128])
    out_dim: int = Field(default=32, gt=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _experts_for_kind(self) -> AdaptorConf:
        kind = ADAPTOR_KINDS[self.kind]
        if kind.needs is not None and getattr(self, kind.needs) == 0:
            raise ValueError(f"kind {self.kind!r} needs {kind.needs} >= 1 {kind.advice}")
        return self

    @property
    def experts(self) -> tuple[int, int]:
        """(shared experts, dedicated experts per tower) this kind builds."""
        return ADAPTOR_KINDS[self.kind].experts(self)

    @property
    def tag(self) -> str:
        """This kind's expert settings, as the architecture tag shows them."""
        return ADAPTOR_KINDS[self.kind].tag(self)


class TrainConf(_Conf):
    """How a backbone (with or without the adaptor) is trained: adapters.train."""

    # The CTR model the adaptor is co-trained with in the weekly run (and the gate scores with).
    backbone: Backbone = "din"
    adaptor: AdaptorConf = Field(default_factory=AdaptorConf)
    embedding_dim: int = Field(default=16, gt=0)
    # Backbones' deep part (DIN's MLP, DeepFM's DNN, DCNv2's deep tower).
    dnn_hidden: list[int] = Field(default_factory=lambda: [200, 80], min_length=1)
    cross_layers: int = Field(default=3, gt=0)  # DCNv2
    epochs: int = Field(default=5, gt=0)
    # Stop after this many epochs without a better validation AUC (None: run every epoch).
    patience: int | None = Field(default=None, gt=0)
    batch_size: int = Field(default=256, gt=0)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    validation_fraction: float = Field(default=0.1, gt=0, lt=1)
    device: str = "cpu"
