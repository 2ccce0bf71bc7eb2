"""The page's overall confidence and review mark, computed from a result's scores."""

from __future__ import annotations

import pytest

from app.ui.review import REVIEW_BELOW, Review, review
from app.ui.texts import CHINESE, ENGLISH, LABELS, MESSAGES, language_of, say


@pytest.mark.parametrize(
    ("scores", "expected"),
    [
        ([], Review(None, True, 0)),  # no box
        ([0.91], Review(0.91, False, 1)),  # one sure box
        ([0.4, 0.85], Review(0.85, False, 2)),  # the best box decides
        ([0.69], Review(0.69, True, 1)),  # just under the bar
        ([REVIEW_BELOW], Review(REVIEW_BELOW, False, 1)),  # on the bar: fine
        ([None, None], Review(None, True, 2)),  # boxes without scores cannot be judged
        ([None, 0.8], Review(0.8, False, 2)),  # unscored boxes are ignored
    ],
)
def test_review(scores, expected):
    assert review(scores) == expected


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
