"""Publish gate: are new vectors at least as useful to a ranker as the live ones?

Scored the way a downstream ranker uses vectors: the backbone is trained once with
the live vectors and once with the new ones as frozen inputs, on the same samples,
split and seed; the new set passes unless its held-out AUC is more than `tolerance`
below the live set's.
"""

from __future__ import annotations

from dataclasses import dataclass

from adapters.config import TrainConf
from adapters.data import CTRData
from adapters.train import train_and_evaluate


@dataclass(frozen=True)
class GateScore:
    """Held-out AUCs of the backbone with the live and with the new vectors, frozen."""

    live_auc: float
    new_auc: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.new_auc >= self.live_auc - self.tolerance


def score(live: CTRData, new: CTRData, conf: TrainConf, seed: int, tolerance: float) -> GateScore:
    """Train conf.backbone on each vector set (frozen) and compare their test AUCs."""
    live_auc = train_and_evaluate(live, conf, seed, "frozen").auc
    new_auc = train_and_evaluate(new, conf, seed, "frozen").auc
    return GateScore(live_auc, new_auc, tolerance)
