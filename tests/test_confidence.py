"""The triage score (mask stability), each checkpoint's reference floor, and the worklist using it."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.inference import model_confidence_floor
from pipeline.review.worklist import DEFAULT_CONFIDENCE_THRESHOLD, load_run
from sam2rad.confidence import SCORE_NAME, ConfidenceReference, mask_confidence, reference_scores


def _disc_logits(edge_width: float) -> torch.Tensor:
    """(1, 1, 64, 64) logits of a disc of radius 16 whose boundary ramps over `edge_width` pixels."""
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    distance_inside = 16 - torch.sqrt((yy - 32) ** 2 + (xx - 32) ** 2)
    return (distance_inside * (8.0 / edge_width))[None, None]


def test_a_sharp_mask_scores_higher_than_a_blurred_one():
    sharp, blurred = mask_confidence(_disc_logits(0.5)), mask_confidence(_disc_logits(12.0))
    assert sharp.shape == (1,) and 0.9 < float(sharp) <= 1.0
    assert float(blurred) < 0.7 * float(sharp)


def test_nothing_above_minus_offset_scores_zero_and_absence_scales_the_score():
    assert float(mask_confidence(torch.full((1, 1, 8, 8), -5.0))) == 0.0
    logits = _disc_logits(0.5).repeat(2, 1, 1, 1)
    scored = mask_confidence(logits, torch.tensor([8.0, -8.0]))
    assert float(scored[0]) > 0.9 and float(scored[1]) < 0.01


def test_reference_round_trip_and_cards_with_another_score_give_none():
    ref = ConfidenceReference(floor=0.71234, median=0.8, n_images=10)
    back = ConfidenceReference.from_dict(ref.to_dict())
    assert back is not None and back.floor == pytest.approx(0.7123) and back.n_images == 10
    assert ConfidenceReference.from_dict({}) is None
    assert ConfidenceReference.from_dict({**ref.to_dict(), "score": "decoder iou head"}) is None


class ScoresModel:
    """Answers fixed scores, one per image, in auto mode only."""

    def __init__(self, scores):
        self.scores, self.calls, self.cleared = list(scores), [], 0

    def predict(self, images, mode):
        self.calls.append((len(images), mode))
        return [SimpleNamespace(scores=np.array([self.scores.pop(0)])) for _ in images]

    def clear_cache(self):
        self.cleared += 1


def test_reference_scores_is_the_lowest_and_median_of_auto_scores_in_batches():
    model = ScoresModel([0.9, 0.8, 0.85, 0.7, 0.95])
    ref = reference_scores(model, [np.zeros((4, 4))] * 5, batch_size=2)
    assert (ref.floor, ref.median, ref.n_images, ref.score) == (0.7, 0.85, 5, SCORE_NAME)
    assert model.calls == [(2, "auto"), (2, "auto"), (1, "auto")] and model.cleared == 3
    with pytest.raises(ValueError):
        reference_scores(model, [])


def test_the_pipeline_records_the_floor_only_for_models_that_have_one():
    assert model_confidence_floor(object()) is None
    assert model_confidence_floor(SimpleNamespace(confidence_reference=None)) is None
    with_ref = SimpleNamespace(confidence_reference=ConfidenceReference(0.75, 0.8, 10))
    assert model_confidence_floor(with_ref) == 0.75


def _run_with_rows(tmp_path: Path, rows: list[dict]) -> Path:
    run_dir = tmp_path / "nightly-20260101-20260101-conf"
    run_dir.mkdir()
    base = {"status": "ok", "study_uid": "1.2.3", "series_uid": "1.2.3.1", "n_frames": 1, "frames_with_mask": 1}
    pd.DataFrame([{**base, **r} for r in rows]).to_csv(run_dir / "nightly_instances.csv", index=False)
    return run_dir


def test_worklist_holds_each_instance_to_its_models_floor_and_an_explicit_threshold_overrides(tmp_path):
    run_dir = _run_with_rows(tmp_path, [
        {"sop_uid": "1.9.1", "confidence": 0.50, "confidence_floor": 0.40},  # above its floor
        {"sop_uid": "1.9.2", "confidence": 0.50, "confidence_floor": 0.70},  # under its floor
        {"sop_uid": "1.9.3", "confidence": DEFAULT_CONFIDENCE_THRESHOLD - 0.05, "confidence_floor": None},
        {"sop_uid": "1.9.4", "confidence": DEFAULT_CONFIDENCE_THRESHOLD + 0.05, "confidence_floor": None},
    ])
    items = {i.sop_uid: i for i in load_run(run_dir).items}
    low = {uid for uid, i in items.items() if "low-confidence" in i.reasons}
    assert low == {"1.9.2", "1.9.3"}
    assert items["1.9.2"].confidence_floor == 0.70
    assert items["1.9.4"].confidence_floor == DEFAULT_CONFIDENCE_THRESHOLD
    overridden = load_run(run_dir, confidence_threshold=0.52).items  # the reader's, for every row
    assert sorted(i.sop_uid for i in overridden if "low-confidence" in i.reasons) == ["1.9.1", "1.9.2"]
    assert {i.confidence_floor for i in overridden} == {0.52}
