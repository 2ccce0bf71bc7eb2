"""A result's overall confidence (its best box score) and its review flag."""

from __future__ import annotations

import pytest

from app.grounding.confidence import DEFAULT_REVIEW_THRESHOLD, confidence_of, needs_review
from app.grounding.result import GroundingResult


@pytest.mark.parametrize(
    ("scores", "confidence", "review"),
    [
        ([], None, True),  # no box
        ([0.91], 0.91, False),  # one sure box
        ([0.4, 0.85], 0.85, False),  # the best box decides
        ([0.69], 0.69, True),  # just under the bar
        ([DEFAULT_REVIEW_THRESHOLD], DEFAULT_REVIEW_THRESHOLD, False),  # on the bar: fine
        ([None, None], None, True),  # boxes without scores cannot be judged
        ([None, 0.8], 0.8, False),  # unscored boxes are ignored
    ],
)
def test_confidence_and_review(scores, confidence, review):
    assert confidence_of(scores) == confidence
    assert needs_review(confidence) is review


@pytest.mark.parametrize("threshold", [-0.1, 1.5])
def test_threshold_outside_0_1_is_refused(threshold):
    with pytest.raises(ValueError, match="threshold must be in 0..1"):
        needs_review(0.5, threshold)


def _result(boxes, scores) -> GroundingResult:
    return GroundingResult(boxes, ["x"] * len(boxes), scores, [], [], "", [100, 100], None, "m", 1.0)


def test_reviewed_sets_both_fields_from_the_boxes_it_holds():
    result = _result([[0, 0, 5, 5], [10, 10, 20, 20]], [0.55, 0.8]).reviewed(0.7)
    assert (result.confidence, result.needs_review) == (0.8, False)
    assert result.to_dict()["confidence"] == 0.8 and result.to_dict()["needs_review"] is False
    # a threshold that drops the best box lowers the confidence once reviewed again
    kept = result.above(0.3)
    assert kept.reviewed(0.9).needs_review is True
    empty = _result([], []).reviewed(0.7)
    assert (empty.confidence, empty.needs_review) == (None, True)


def test_from_dict_round_trips_the_fields():
    result = _result([[0, 0, 5, 5]], [0.75]).reviewed()
    assert GroundingResult.from_dict(result.to_dict()) == result
