"""Turn a Qwen model's raw answer text into boxes and points in the model's own coordinates.

Pure functions. They never raise on answer text: garbage, empty or hostile text gives no boxes.
Each item keeps the character span of the answer it came from, so scores can be computed from
the probabilities of exactly the tokens that produced it.
"""

from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass

from app.grounding.families import AnswerDialect, CoordinateSystem, Family
from app.grounding.geometry import Box, Point, clamp_box, clamp_point, is_finite_box, ordered

# An answer longer than this is treated as truncated here; real answers are a few thousand characters.
MAX_ANSWER_CHARS = 200_000
# A single box object is short; longer brace spans are not candidates (keeps hostile text linear-ish).
_MAX_OBJECT_CHARS = 2_000

_NUM = r"\s*(-?\d+(?:\.\d+)?)\s*"
_TAG_BOX = rf"\({_NUM},{_NUM}\)\s*,?\s*\({_NUM},{_NUM}\)"
_REF_BOX_PATTERN = re.compile(rf"<ref>(.*?)</ref>|<box>\s*{_TAG_BOX}\s*</box>", re.DOTALL)
_SPECIAL_BOX_PATTERN = re.compile(
    rf"<\|object_ref_start\|>(.*?)<\|object_ref_end\|>|<\|box_start\|>\s*{_TAG_BOX}\s*<\|box_end\|>", re.DOTALL
)
_BARE_LIST_PATTERN = re.compile(rf"\[{_NUM},{_NUM},{_NUM},{_NUM}\]")
_BOX_KEYS = ("bbox_2d", "bbox", "box_2d")
_POINT_KEYS = ("point_2d", "point")


@dataclass(frozen=True)
class ParsedBox:
    box: Box
    label: str | None
    span: tuple[int, int]


@dataclass(frozen=True)
class ParsedPoint:
    point: Point
    label: str | None
    span: tuple[int, int]


@dataclass(frozen=True)
class ParsedAnswer:
    boxes: tuple[ParsedBox, ...] = ()
    points: tuple[ParsedPoint, ...] = ()


def parse_answer(text: str, family: Family, input_wh: tuple[int, int] | None = None) -> ParsedAnswer:
    """Parse an answer in ``family``'s dialect into normalised boxes and points.

    Coordinates stay in the family's space (0-1000, or pixels of the resized input). Corners are
    ordered, values clamped to the space (``input_wh`` for Qwen2.5-VL; without it they are only
    kept non-negative), non-finite numbers dropped and exact duplicates removed.
    """
    if not isinstance(text, str) or not text:
        return ParsedAnswer()
    text = text[:MAX_ANSWER_CHARS]
    if family.dialect is AnswerDialect.REF_BOX_TAGS:
        raw = _parse_tagged(text, _REF_BOX_PATTERN), ()
    elif family.dialect is AnswerDialect.SPECIAL_TOKEN_BOXES:
        raw = _parse_tagged(text, _SPECIAL_BOX_PATTERN), ()
    else:
        raw = _parse_json_objects(text)
    limit_wh = _coordinate_limit(family, input_wh)
    return ParsedAnswer(
        boxes=_dedupe(_normalise_box(b, limit_wh) for b in raw[0] if is_finite_box(b.box)),
        points=_dedupe(
            ParsedPoint(clamp_point(p.point, limit_wh), p.label, p.span)
            for p in raw[1]
            if math.isfinite(p.point.x) and math.isfinite(p.point.y)
        ),
    )


def _coordinate_limit(family: Family, input_wh: tuple[int, int] | None) -> tuple[float, float]:
    if family.coordinates is CoordinateSystem.RELATIVE_1000:
        return (1000.0, 1000.0)
    if input_wh is None:
        return (math.inf, math.inf)
    return (float(input_wh[0]), float(input_wh[1]))


def _normalise_box(parsed: ParsedBox, limit_wh: tuple[float, float]) -> ParsedBox:
    return ParsedBox(clamp_box(ordered(parsed.box), limit_wh), parsed.label, parsed.span)


def _dedupe(items):
    seen = set()
    out = []
    for item in items:
        key = (item.box if isinstance(item, ParsedBox) else item.point, item.label)
        if key not in seen:
            seen.add(key)
            out.append(item)
    return tuple(out)


def _parse_tagged(text: str, pattern: re.Pattern[str]) -> list[ParsedBox]:
    """Qwen-VL / Qwen2-VL tags: a ref names the label for the boxes that follow it."""
    label: str | None = None
    boxes = []
    for match in pattern.finditer(text):
        if match.group(1) is not None:
            label = match.group(1).strip() or None
            continue
        x1, y1, x2, y2 = (float(match.group(i)) for i in range(2, 6))
        boxes.append(ParsedBox(Box(x1, y1, x2, y2), label, match.span()))
    return boxes


def _parse_json_objects(text: str) -> tuple[list[ParsedBox], list[ParsedPoint]]:
    """Qwen2.5-VL / Qwen3-VL JSON: every complete ``{...}`` object with a box or point key.

    Works inside fences, with prose around it, for a single object or a list, with Python-literal
    quotes, and on truncated answers (objects that never closed are skipped).
    """
    boxes: list[ParsedBox] = []
    points: list[ParsedPoint] = []
    accepted_until = -1
    for start, end in _brace_spans(text):
        if start < accepted_until or end - start > _MAX_OBJECT_CHARS:
            continue
        chunk = text[start:end]
        if not any(key in chunk for key in _BOX_KEYS + _POINT_KEYS):
            continue
        obj = _load_object(chunk)
        if obj is None:
            continue
        label = _label_of(obj)
        box = _numbers(_first_present(obj, _BOX_KEYS), 4)
        point = _numbers(_first_present(obj, _POINT_KEYS), 2)
        if box is not None:
            boxes.append(ParsedBox(Box(*box), label, (start, end)))
        elif point is not None:
            points.append(ParsedPoint(Point(*point), label, (start, end)))
        else:
            continue
        accepted_until = end
    if not boxes and not points:
        boxes = [ParsedBox(Box(*map(float, m.groups())), None, m.span()) for m in _BARE_LIST_PATTERN.finditer(text)]
    return boxes, points


def _brace_spans(text: str) -> list[tuple[int, int]]:
    """Spans of balanced ``{...}`` in one pass, sorted by start (outer before inner).

    Quotes are tracked only inside braces, so an apostrophe in surrounding prose cannot hide an object.
    """
    spans = []
    stack: list[int] = []
    quote: str | None = None
    escaped = False
    for i, ch in enumerate(text):
        if quote is not None:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
            continue
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            spans.append((stack.pop(), i + 1))
        elif ch in "\"'" and stack:
            quote = ch
    spans.sort()
    return spans


def _load_object(chunk: str) -> dict | None:
    for loader in (json.loads, ast.literal_eval):
        try:
            obj = loader(chunk)
        except Exception:  # noqa: BLE001 - any failure of a loader means "not this format"
            continue
        if isinstance(obj, dict):
            return obj
    return None


def _first_present(obj: dict, keys: tuple[str, ...]):
    for key in keys:
        if key in obj:
            return obj[key]
    return None


def _numbers(value, count: int) -> tuple[float, ...] | None:
    if not isinstance(value, (list, tuple)) or len(value) != count:
        return None
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError, OverflowError):
        return None
    return numbers if all(math.isfinite(n) for n in numbers) else None


def _label_of(obj: dict) -> str | None:
    label = obj.get("label")
    if label is None:
        return None
    label = str(label).strip()
    return label or None
