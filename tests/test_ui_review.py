"""The page's review mark, from the confidence and needs_review every result carries; the page's texts."""

from __future__ import annotations

import pytest

from app.ui.page import review_text
from app.ui.texts import CHINESE, ENGLISH, LABELS, MESSAGES, language_of, say


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (None, "no box · needs review"),  # nothing shown yet
        ({"boxes": [], "confidence": None, "needs_review": True}, "no box · needs review"),  # no box
        ({"boxes": [[0, 0, 9, 9]], "confidence": 0.91, "needs_review": False}, "0.91 · looks right"),  # sure
        ({"boxes": [[0, 0, 9, 9]], "confidence": 0.69, "needs_review": True}, "0.69 · needs review (under 0.7)"),
        ({"boxes": [[0, 0, 9, 9]], "confidence": None, "needs_review": True}, "no score · needs review"),  # unscored
    ],
)
def test_review_text_shows_the_results_own_fields(result, expected):
    assert review_text(result, ENGLISH, 0.7) == expected


def test_review_text_follows_the_result_not_a_recomputation():
    # the server decided with its own REVIEW_THRESHOLD (0.5 here): the page shows that verdict and bar
    assert review_text({"boxes": [[0, 0, 9, 9]], "confidence": 0.6, "needs_review": False}, ENGLISH, 0.5) == (
        "0.60 · looks right"
    )
    assert review_text({"boxes": [[0, 0, 9, 9]], "confidence": 0.6, "needs_review": True}, CHINESE, 0.7) == (
        "0.60 · 需要复核（低于 0.7）"
    )


@pytest.mark.parametrize(
    ("code", "expected"),
    [("zh-CN", CHINESE), ("zh-TW", CHINESE), ("zh", CHINESE), ("en-US", ENGLISH), ("fr", ENGLISH), (None, ENGLISH)],
)
def test_language_of(code, expected):
    assert language_of(code) == expected


def test_every_text_has_both_languages_and_the_same_fields():
    for key, (en, zh) in {**LABELS, **MESSAGES}.items():
        assert en.strip() and zh.strip(), key
        assert sorted(part.split("}")[0] for part in en.split("{")[1:]) == sorted(
            part.split("}")[0] for part in zh.split("{")[1:]
        ), key


def test_say_picks_the_language():
    assert say("find", "zh-CN") == "查找"
    assert say("find", "en-GB") == "Find"
    assert say("unexpected", ENGLISH, request_id="r1") == "Unexpected server error (request id r1)."
