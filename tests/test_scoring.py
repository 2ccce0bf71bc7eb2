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


ANSWER = '[{"bbox_2d": [12, 7], "label": "cat"}]'


def _tokens(text: str, cuts: list[int]) -> list[tuple[int, int]]:
    return list(zip([0, *cuts], [*cuts, len(text)], strict=True))


@pytest.mark.parametrize(
    ("cuts", "probabilities", "expected"),
    [
        # '[{"bbox_2d": [' | '12' | ', ' | '7' | '], "label": "cat"}]': the digits 12 and 7 count, nothing else
        ([14, 16, 18, 19], [0.99, 0.5, 0.99, 0.5, 0.99], 0.5),
        ([14, 16, 18, 19], [0.1, 0.9, 0.1, 0.9, 0.1], 0.9),  # unsure keys do not lower it
        ([14, 15, 16, 18, 19], [0.99, 0.8, 0.2, 0.99, 0.4, 0.99], 0.4),  # '1' '2' '7': geometric mean 0.8*0.2*0.4
    ],
)
def test_with_the_answer_only_the_digits_count(cuts, probabilities, expected):
    spans = _tokens(ANSWER, cuts)
    logprobs = [math.log(p) for p in probabilities]
    assert span_scores([(1, len(ANSWER) - 1)], spans, logprobs, ANSWER) == [pytest.approx(expected, abs=1e-4)]


def test_a_box_without_digit_tokens_counts_all_of_its_tokens():
    text = "<box>(a,b)</box>"
    spans = _tokens(text, [5, 10])
    logprobs = [math.log(0.5), math.log(0.5), math.log(0.5)]
    assert span_scores([(0, len(text))], spans, logprobs, text) == [0.5]


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
