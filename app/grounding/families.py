"""Qwen vision-language model families and the coordinate system each one answers in.

The coordinate system is a property of the family, never guessed from the numbers:
Qwen-VL, Qwen2-VL and Qwen3-VL answer on a 0-1000 grid relative to the image;
Qwen2.5-VL answers in absolute pixels of the image the processor resized for the model.
"""

from __future__ import annotations

from enum import Enum


class CoordinateSystem(Enum):
    RELATIVE_1000 = "relative_1000"
    INPUT_PIXELS = "input_pixels"


class AnswerDialect(Enum):
    REF_BOX_TAGS = "ref_box_tags"  # <ref>label</ref><box>(x1,y1),(x2,y2)</box>
    SPECIAL_TOKEN_BOXES = "special_token_boxes"  # <|object_ref_start|>..<|box_start|>(..),(..)<|box_end|>
    JSON_BBOX_2D = "json_bbox_2d"  # [{"bbox_2d": [x1, y1, x2, y2], "label": "..."}]


class Family(Enum):
    QWEN_VL = "qwen-vl"
    QWEN2_VL = "qwen2-vl"
    QWEN2_5_VL = "qwen2.5-vl"
    QWEN3_VL = "qwen3-vl"

    @property
    def coordinates(self) -> CoordinateSystem:
        if self is Family.QWEN2_5_VL:
            return CoordinateSystem.INPUT_PIXELS
        return CoordinateSystem.RELATIVE_1000

    @property
    def dialect(self) -> AnswerDialect:
        return {
            Family.QWEN_VL: AnswerDialect.REF_BOX_TAGS,
            Family.QWEN2_VL: AnswerDialect.SPECIAL_TOKEN_BOXES,
            Family.QWEN2_5_VL: AnswerDialect.JSON_BBOX_2D,
            Family.QWEN3_VL: AnswerDialect.JSON_BBOX_2D,
        }[self]

    @property
    def display_name(self) -> str:
        return {
            Family.QWEN_VL: "Qwen-VL",
            Family.QWEN2_VL: "Qwen2-VL",
            Family.QWEN2_5_VL: "Qwen2.5-VL",
            Family.QWEN3_VL: "Qwen3-VL",
        }[self]


# config.json `model_type` -> family. Qwen-VL v1 ("qwen") needs remote code and is parsed, not loaded.
_MODEL_TYPES = {
    "qwen": Family.QWEN_VL,
    "qwen2_vl": Family.QWEN2_VL,
    "qwen2_5_vl": Family.QWEN2_5_VL,
    "qwen3_vl": Family.QWEN3_VL,
    "qwen3_vl_moe": Family.QWEN3_VL,
}


def family_from_model_type(model_type: str) -> Family:
    """The family of a checkpoint from its config's ``model_type``; ValueError if it is not a Qwen VL model."""
    try:
        return _MODEL_TYPES[model_type]
    except KeyError:
        known = ", ".join(sorted(_MODEL_TYPES))
        raise ValueError(f"model_type {model_type!r} is not a supported Qwen VL family (known: {known})") from None


def family_from_name(name: str) -> Family:
    """The family from its CLI name (``qwen-vl``, ``qwen2-vl``, ``qwen2.5-vl``, ``qwen3-vl``)."""
    for family in Family:
        if family.value == name:
            return family
    raise ValueError(f"unknown family {name!r}; expected one of: {', '.join(f.value for f in Family)}")
