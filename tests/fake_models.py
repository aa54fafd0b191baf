"""Stand-ins for Sam2Rad in pipeline tests: the `predict(images, mode)` API, no weights."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class FakePrediction:
    masks: np.ndarray  # (C, H, W) bool
    boxes: np.ndarray  # (C, 4)
    scores: np.ndarray  # (C,)


def prediction(mask: np.ndarray, box: tuple[float, float, float, float], score: float) -> FakePrediction:
    """One class's prediction from a 2-D mask."""
    return FakePrediction(np.asarray(mask, dtype=bool)[np.newaxis], np.array([box], dtype=float), np.array([score]))
