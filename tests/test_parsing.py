"""The answer parser: one table per dialect and quirk, plus a property test on arbitrary text."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.grounding.families import Family
from app.grounding.parsing import parse_answer

Q1, Q2, Q25, Q3 = Family.QWEN_VL, Family.QWEN2_VL, Family.QWEN2_5_VL, Family.QWEN3_VL
INPUT_WH = (644, 476)


def boxes_of(text, family, input_wh=INPUT_WH):
    answer = parse_answer(text, family, input_wh)
    return [(b.box.as_list(), b.label) for b in answer.boxes]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<ref>cat</ref><box>(10,20),(300,400)</box>", [([10, 20, 300, 400], "cat")]),  # one ref, one box
        (
            "<ref>cars</ref><box>(1,2),(3,4)</box><box>(5,6),(7,8)</box>",
            [([1, 2, 3, 4], "cars"), ([5, 6, 7, 8], "cars")],
        ),  # several boxes after one ref
        ("<box>(100,200),(300,400)</box>", [([100, 200, 300, 400], None)]),  # box with no ref
        (
            "A <ref>dog</ref><box>(1,1),(2,2)</box> and a <ref>cat</ref><box>(3,3),(4,4)</box>",
            [([1, 1, 2, 2], "dog"), ([3, 3, 4, 4], "cat")],
        ),  # prose and two refs
        ("<ref>x</ref><box>(500,600),(100,200)</box>", [([100, 200, 500, 600], "x")]),  # swapped corners
        ("<ref>x</ref><box>(-5,20),(1200,999)</box>", [([0, 20, 1000, 999], "x")]),  # clamped to 0-1000
        ("<ref>x</ref><box>( 10 , 20 ) , ( 30 , 40 )</box>", [([10, 20, 30, 40], "x")]),  # spaces
        ("<ref>车</ref><box>(1,2),(3,4)</box>", [([1, 2, 3, 4], "车")]),  # Chinese label
        ("<ref>x</ref><box>(1,2),(3,4)</box><box>(1,2),(3,4)</box>", [([1, 2, 3, 4], "x")]),  # exact duplicate
        ("<ref>x</ref><box>(1,2),(3", []),  # truncated box
    ],
)
def test_qwen_vl_ref_box_tags(text, expected):
    assert boxes_of(text, Q1) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "<|object_ref_start|>cat<|object_ref_end|><|box_start|>(10,20),(300,400)<|box_end|>",
            [([10, 20, 300, 400], "cat")],
        ),  # the Qwen2-VL special-token dialect
        ("<|box_start|>(10,20),(30,40)<|box_end|>", [([10, 20, 30, 40], None)]),  # box with no ref
        (
            "<|object_ref_start|>a<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>"
            "<|box_start|>(5,6),(7,8)<|box_end|>",
            [([1, 2, 3, 4], "a"), ([5, 6, 7, 8], "a")],
        ),  # several boxes after one ref
        ("<|box_start|>(900,950),(100,50)<|box_end|>", [([100, 50, 900, 950], None)]),  # swapped corners
        ("<|box_start|>(10,20),(3000,40)<|box_end|>", [([10, 20, 1000, 40], None)]),  # clamped
        ("<ref>cat</ref><box>(1,2),(3,4)</box>", []),  # Qwen-VL tags are not this dialect
    ],
)
def test_qwen2_vl_special_tokens(text, expected):
    assert boxes_of(text, Q2) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[{"bbox_2d": [10, 20, 300, 400], "label": "vase"}]', [([10, 20, 300, 400], "vase")]),  # plain list
        (
            '```json\n[\n  {"bbox_2d": [1, 2, 3, 4], "label": "a"},\n  {"bbox_2d": [5, 6, 7, 8], "label": "b"}\n]\n```',
            [([1, 2, 3, 4], "a"), ([5, 6, 7, 8], "b")],
        ),  # fenced
        (
            'Sure! Here it is: {"bbox_2d": [10, 20, 30, 40], "label": "cup"} Let me know if you need more.',
            [([10, 20, 30, 40], "cup")],
        ),  # single object with prose around it
        ("[{'bbox_2d': [10, 20, 30, 40], 'label': 'cup'}]", [([10, 20, 30, 40], "cup")]),  # Python-literal quotes
        (
            '[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [5, 6, 7, 8], "label": "b"}, {"bbox_2d": [9, 1',
            [([1, 2, 3, 4], "a"), ([5, 6, 7, 8], "b")],
        ),  # truncated: every complete object kept
        ('[{"bbox_2d": [300, 400, 10, 20], "label": "x"}]', [([10, 20, 300, 400], "x")]),  # swapped corners
        ('[{"bbox_2d": [-10, 20, 9999, 500], "label": "x"}]', [([0, 20, 644, 476], "x")]),  # clamped to input
        (
            '[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [1, 2, 3, 4], "label": "a"}]',
            [([1, 2, 3, 4], "a")],
        ),  # exact duplicate dropped
        (
            '[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [1, 2, 3, 4], "label": "b"}]',
            [([1, 2, 3, 4], "a"), ([1, 2, 3, 4], "b")],
        ),  # same box, different labels: both kept
        ('[{"bbox_2d": [1.5, 2.25, 3, 4], "label": "f"}]', [([1.5, 2.25, 3, 4], "f")]),  # float coordinates
        ('[{"bbox_2d": ["1", "2", "3", "4"], "label": "s"}]', [([1, 2, 3, 4], "s")]),  # numbers as strings
        ('[{"bbox_2d": [1, 2, 3], "label": "short"}]', []),  # wrong arity
        ('[{"bbox_2d": [1, 2, 3, NaN], "label": "nan"}]', []),  # non-finite
        ('[{"bbox_2d": [1, 2, 3, 4]}]', [([1, 2, 3, 4], None)]),  # no label
        ('{"objects": [{"bbox_2d": [1, 2, 3, 4], "label": "in"}]}', [([1, 2, 3, 4], "in")]),  # nested wrapper
        ('[{"bbox_2d": [1, 2, 3, 4], "label": "brace } in {label"}]', [([1, 2, 3, 4], "brace } in {label")]),
        # braces inside a string
        ('It\'s here: [{"bbox_2d": [1, 2, 3, 4], "label": "a"}]', [([1, 2, 3, 4], "a")]),  # apostrophe in prose
        ('[{"bbox_2d": [10, 20, 30, 40], "label": "红色的圆形"}]', [([10, 20, 30, 40], "红色的圆形")]),  # Chinese label
        ("The box is [10, 20, 30, 40].", [([10, 20, 30, 40], None)]),  # bare coordinate list, no JSON
        ("", []),  # empty
        ("I cannot find it in the image.", []),  # refusal
        ("[]", []),  # empty list
    ],
)
def test_qwen2_5_vl_json(text, expected):
    assert boxes_of(text, Q25) == expected


def test_qwen2_5_vl_points_are_points_not_boxes():
    answer = parse_answer('[{"point_2d": [100, 200], "label": "eye"}, {"point_2d": [9000, 5]}]', Q25, INPUT_WH)
    assert answer.boxes == ()
    assert [(p.point.x, p.point.y, p.label) for p in answer.points] == [(100, 200, "eye"), (644, 5, None)]


def test_qwen2_5_vl_without_input_size_keeps_values_non_negative_only():
    answer = parse_answer('[{"bbox_2d": [-3, 20, 5000, 40]}]', Q25, None)
    assert answer.boxes[0].box.as_list() == [0, 20, 5000, 40]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[{"bbox_2d": [100, 200, 300, 400], "label": "a"}]', [([100, 200, 300, 400], "a")]),  # relative 0-1000
        ('[{"bbox_2d": [100, 200, 3000, 400], "label": "a"}]', [([100, 200, 1000, 400], "a")]),  # clamped to 1000
        ('```json\n{"bbox_2d": [5, 6, 7, 8]}\n```', [([5, 6, 7, 8], None)]),  # fenced single object
    ],
)
def test_qwen3_vl_json_relative(text, expected):
    assert boxes_of(text, Q3, input_wh=None) == expected


def test_spans_point_at_the_text_of_each_box():
    text = 'x [{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [5, 6, 7, 8], "label": "b"}]'
    spans = [b.span for b in parse_answer(text, Q25, INPUT_WH).boxes]
    assert [text[s:e] for s, e in spans] == [
        '{"bbox_2d": [1, 2, 3, 4], "label": "a"}',
        '{"bbox_2d": [5, 6, 7, 8], "label": "b"}',
    ]


@pytest.mark.parametrize(
    "text",
    [
        "{" * 100_000,  # deep unclosed nesting
        "{" * 5_000 + "}" * 5_000,  # deep balanced nesting
        '{"bbox_2d": [' + "1," * 100_000 + "1]}",  # enormous list
        "[" * 50_000 + "]" * 50_000,  # nested lists
        '{"bbox_2d": [1e400, 0, 1, 1]}',  # overflow
        '{"bbox_2d": [1, 2, 3, 4], "label": ' + '"' * 1000 + "}",  # quote storm
        "<ref>" * 10_000 + "<box>(1,2),(3,4)</box>",  # unclosed refs
        "\x00\x01\ud7ff<|box_start|>(((((",  # control characters and special tokens
        "{'bbox_2d': __import__('os').system('echo pwned')}",  # code is never evaluated
    ],
)
@pytest.mark.parametrize("family", list(Family))
def test_hostile_text_never_raises(text, family):
    answer = parse_answer(text, family, INPUT_WH)
    for b in answer.boxes:
        assert 0 <= b.box.x1 <= b.box.x2 and 0 <= b.box.y1 <= b.box.y2


@settings(max_examples=300, deadline=None)
@given(
    text=st.one_of(
        st.text(max_size=400),
        st.text(alphabet='{}[]()",:0123456789-. <>|abrefoxlbd_2', max_size=400),
        st.lists(
            st.tuples(
                st.integers(-2000, 5000), st.integers(-2000, 5000), st.integers(-2000, 5000), st.integers(-2000, 5000)
            ),
            max_size=6,
        ).map(lambda bs: str([{"bbox_2d": list(b), "label": "t"} for b in bs])),
    ),
    family=st.sampled_from(list(Family)),
)
def test_any_text_gives_valid_boxes_inside_the_space(text, family):
    answer = parse_answer(text, family, INPUT_WH)
    limit_w, limit_h = (1000, 1000) if family is not Family.QWEN2_5_VL else INPUT_WH
    for b in answer.boxes:
        assert 0 <= b.box.x1 <= b.box.x2 <= limit_w
        assert 0 <= b.box.y1 <= b.box.y2 <= limit_h
        assert 0 <= b.span[0] < b.span[1] <= len(text)
