"""Scores come from the generated tokens' probabilities, span by span."""

from __future__ import annotations

import math

import pytest

from app.grounding.scoring import decoded_prefixes, span_scores, token_char_spans


def test_spans_of_prefixes_cover_the_text_in_order():
    assert token_char_spans(["[", "[1", "[12", "[12]"]) == [(0, 1), (1, 2), (2, 3), (3, 4)]


def test_a_token_ending_inside_a_character_takes_no_span_until_it_completes():
    # "红" is three bytes; a byte-level tokenizer may split it, decoding to a replacement char first.
    assert token_char_spans(["\ufffd", "红", "红色"]) == [(0, 0), (0, 1), (1, 2)]


@pytest.mark.parametrize(
    ("item_spans", "logprobs", "expected"),
    [
        ([(0, 2)], [math.log(0.5), math.log(0.5), 0.0], [0.5]),  # geometric mean of the overlapping tokens
        ([(2, 3)], [math.log(0.5), math.log(0.5), math.log(0.9)], [0.9]),  # only its own tokens
        ([(0, 3)], [0.0, 0.0, 0.0], [1.0]),  # certain of every token
        ([(5, 9)], [0.0, 0.0, 0.0], [None]),  # no generated token overlaps
        ([(0, 1), (1, 3)], [math.log(0.2), math.log(0.8), math.log(0.8)], [0.2, 0.8]),  # two items
    ],
)
def test_span_scores(item_spans, logprobs, expected):
    token_spans = [(0, 1), (1, 2), (2, 3)]
    assert span_scores(item_spans, token_spans, logprobs) == expected


def test_mismatched_inputs_are_a_caller_error():
    with pytest.raises(ValueError, match="2 token spans but 1"):
        span_scores([(0, 1)], [(0, 1), (1, 2)], [0.0])


@pytest.mark.parametrize(
    ("pieces", "text", "expected"),
    [
        (["[", '{"', "a"], '[{"a', ["[", '[{"', '[{"a']),  # token texts spell the answer
        ([b"[", b"a", b""], "[a", ["[", "[a"]),  # a trailing stop token with no text is cut off
        ([b"\xe7\xba", b"\xa2"], "红", ["\ufffd", "红"]),  # a token ending inside a character
        (["[", "b"], "[a", None),  # tokens that do not spell the answer give no prefixes
        ([], "[a", None),  # no log-probabilities at all
    ],
)
def test_decoded_prefixes_from_an_engines_tokens(pieces, text, expected):
    assert decoded_prefixes(pieces, text) == expected
