"""Grounding prompts name every target, in the phrase's language."""

from __future__ import annotations

import pytest

from app.grounding.families import Family
from app.grounding.prompts import clean_phrases, grounding_prompt


@pytest.mark.parametrize(
    ("phrases", "family", "expected"),
    [
        (["the white vase"], Family.QWEN2_5_VL, 'Locate "the white vase" in the image. Report every bbox_2d'),
        (["cat", "dog"], Family.QWEN2_5_VL, 'Locate "cat", "dog" in the image.'),  # several targets, one prompt
        (["右下角的红色椅子"], Family.QWEN2_5_VL, "定位图中的“右下角的红色椅子”，以JSON格式输出"),  # Chinese
        (["cat", "红色的圆形"], Family.QWEN3_VL, "定位图中的“cat”、“红色的圆形”"),  # mixed: Chinese template
        (["all traffic lights"], Family.QWEN2_VL, 'Find the bounding box of "all traffic lights"'),
        (["a bus"], Family.QWEN_VL, 'Generate the bounding boxes of "a bus" with grounding.'),
    ],
)
def test_templates(phrases, family, expected):
    assert grounding_prompt(phrases, family).startswith(expected)


def test_custom_template_needs_the_placeholder():
    assert grounding_prompt(["x"], Family.QWEN2_5_VL, "Find {targets}!") == 'Find "x"!'
    with pytest.raises(ValueError, match="{targets}"):
        grounding_prompt(["x"], Family.QWEN2_5_VL, "Find it")


def test_empty_phrases_are_refused():
    assert clean_phrases(["  cat ", "", "dog"]) == ("cat", "dog")
    with pytest.raises(ValueError, match="at least one non-empty phrase"):
        clean_phrases(["", "   "])
