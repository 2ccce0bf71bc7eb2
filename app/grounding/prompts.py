"""Grounding prompt templates per family, in English and Chinese. Pure.

One prompt can name several targets; the model answers them all in one generation, and each
box carries its label. A phrase with CJK characters gets the Chinese template.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from app.errors import EmptyPrompt, InvalidRequest, PromptTooLong
from app.grounding.families import AnswerDialect, Family

# Several phrases in one prompt: separated by ';' (or the full-width '；') or by newlines.
PHRASE_SEPARATORS = re.compile(r"[;；\r\n]+")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Qwen's special tokens (<|image_pad|>, <|vision_start|>, <|im_end|>, ...): as text they would forge
# the chat template or the image placeholders.
_MODEL_CONTROL_TOKEN = re.compile(r"<\|[^<>|\s]{1,64}\|>")


_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")

# {targets} is the quoted, comma-separated list of phrases.
TEMPLATES: dict[AnswerDialect, dict[str, str]] = {
    AnswerDialect.JSON_BBOX_2D: {
        "en": "Locate {targets} in the image. Report every bbox_2d with its label in JSON format.",
        "zh": "定位图中的{targets}，以JSON格式输出每个目标的bbox_2d坐标和label。",
    },
    AnswerDialect.SPECIAL_TOKEN_BOXES: {
        "en": "Find the bounding box of {targets} in the image.",
        "zh": "找出图中{targets}的边界框。",
    },
    AnswerDialect.REF_BOX_TAGS: {
        "en": "Generate the bounding boxes of {targets} with grounding.",
        "zh": "框出图中{targets}的位置。",
    },
}


def is_chinese(text: str) -> bool:
    return bool(_CJK.search(text))


def clean_phrases(phrases: Sequence[str]) -> tuple[str, ...]:
    """Strip whitespace and drop empty phrases; ValueError if none is left."""
    cleaned = tuple(p.strip() for p in phrases if isinstance(p, str) and p.strip())
    if not cleaned:
        raise ValueError("at least one non-empty phrase is required")
    return cleaned


def grounding_prompt(phrases: Sequence[str], family: Family, template: str | None = None) -> str:
    """The user prompt asking ``family`` to ground every phrase.

    ``template`` overrides the built-in one; it must contain ``{targets}``.
    """
    cleaned = clean_phrases(phrases)
    language = "zh" if any(is_chinese(p) for p in cleaned) else "en"
    if template is None:
        template = TEMPLATES[family.dialect][language]
    if "{targets}" not in template:
        raise ValueError("a prompt template must contain the placeholder {targets}")
    if language == "zh":
        targets = "、".join(f"“{p}”" for p in cleaned)
    else:
        targets = ", ".join(f'"{p}"' for p in cleaned)
    return template.replace("{targets}", targets)


def split_phrases(prompt: str | None, max_chars: int = 500) -> tuple[str, ...]:
    """``"cat; red car"`` -> ``("cat", "red car")``; control characters dropped; PromptTooLong past
    ``max_chars``; EmptyPrompt when no phrase is left."""
    prompt = clean_prompt(prompt, max_chars)
    phrases = tuple(p.strip() for p in PHRASE_SEPARATORS.split(prompt) if p.strip())
    if not phrases:
        raise EmptyPrompt("the prompt is empty: give one or more phrases separated by ';' or newlines")
    return phrases


def clean_prompt(text: str | None, max_chars: int, what: str = "prompt") -> str:
    """Control characters removed (newlines kept: they separate phrases), Unicode kept, length capped,
    the model's own control tokens (``<|image_pad|>``, ``<|im_end|>``, ...) refused."""
    cleaned = unicodedata.normalize("NFC", _CONTROL.sub("", text or ""))
    if len(cleaned) > max_chars:
        raise PromptTooLong(f"the {what} has {len(cleaned)} characters; the limit is {max_chars} (MAX_PROMPT_CHARS)")
    token = _MODEL_CONTROL_TOKEN.search(cleaned)
    if token:
        raise InvalidRequest(f"the {what} contains {token.group()}, a control token of the model: remove it")
    return cleaned


def clean_template(text: str | None, max_chars: int) -> str | None:
    """A prompt template as ``clean_prompt`` checks a prompt, holding ``{targets}``; None when empty."""
    template = clean_prompt(text, max_chars, "prompt template").strip()
    if not template:
        return None
    if "{targets}" not in template:
        raise InvalidRequest("a prompt template must contain the placeholder {targets}")
    return template
