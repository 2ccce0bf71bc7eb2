"""Accuracy of grounding answers against labelled cases: the arithmetic of ``python -m app eval``. Pure.

A case is one image, one phrase and its ground-truth boxes. It counts as right at an IoU bar when the
answer's highest-scoring box (the first box when none has a score) reaches that IoU with one of the
ground-truth boxes: the RefCOCO convention (acc@0.5). Recall counts ground-truth boxes that any
answered box reaches at IoU >= 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

from app.grounding.geometry import iou

IOU_50 = 0.5
IOU_75 = 0.75


@dataclass(frozen=True)
class EvalCase:
    """One labelled case: ``image`` is a path as given (resolved by the reader), ``boxes`` are xyxy pixels."""

    id: str
    image: str
    phrase: str
    boxes: tuple[tuple[float, float, float, float], ...]
    group: str


@dataclass(frozen=True)
class CaseOutcome:
    """How one case went: the top box's IoU, the ground-truth boxes recalled, the answer's latency."""

    id: str
    group: str
    phrase: str
    top_iou: float
    recalled: int
    truths: int
    boxes: int
    latency_ms: float | None
    confidence: float | None = None
    needs_review: bool | None = None
    error: str | None = None


@dataclass
class _Tally:
    cases: int = 0
    hits50: int = 0
    hits75: int = 0
    iou_sum: float = 0.0
    recalled: int = 0
    truths: int = 0
    latencies: list[float] = field(default_factory=list)

    def add(self, outcome: CaseOutcome) -> None:
        self.cases += 1
        self.hits50 += outcome.top_iou >= IOU_50
        self.hits75 += outcome.top_iou >= IOU_75
        self.iou_sum += outcome.top_iou
        self.recalled += outcome.recalled
        self.truths += outcome.truths
        if outcome.latency_ms is not None:
            self.latencies.append(outcome.latency_ms)

    def numbers(self) -> dict:
        return {
            "cases": self.cases,
            "acc_iou50": _ratio(self.hits50, self.cases),
            "acc_iou75": _ratio(self.hits75, self.cases),
            "mean_iou": round(self.iou_sum / self.cases, 4) if self.cases else 0.0,
            "recall": _ratio(self.recalled, self.truths),
        }


def top_box(boxes: Sequence[Sequence[float]], scores: Sequence[float | None]) -> Sequence[float] | None:
    """The highest-scoring box (ties and unscored boxes: the earliest); None without boxes."""
    if not boxes:
        return None
    ranked = [(-(s if s is not None else -1.0), i) for i, s in enumerate(scores or [None] * len(boxes))]
    return boxes[min(ranked)[1]]


def score_case(case: EvalCase, result: dict) -> CaseOutcome:
    """One case against one answer (a result dict, or ``{"error": {...}}`` which scores 0)."""
    if "error" in result:
        error = result["error"]
        return CaseOutcome(case.id, case.group, case.phrase, 0.0, 0, len(case.boxes), 0, None,
                           error=f"{error.get('code')}: {error.get('message')}")  # fmt: skip
    boxes = result.get("boxes") or []
    top = top_box(boxes, result.get("scores") or [])
    top_iou = max((iou(top, truth) for truth in case.boxes), default=0.0) if top is not None else 0.0
    recalled = sum(any(iou(box, truth) >= IOU_50 for box in boxes) for truth in case.boxes)
    return CaseOutcome(
        case.id,
        case.group,
        case.phrase,
        round(top_iou, 4),
        recalled,
        len(case.boxes),
        len(boxes),
        result.get("latency_ms"),
        result.get("confidence"),
        result.get("needs_review"),
    )


def summarise(outcomes: Iterable[CaseOutcome]) -> dict:
    """The report: overall numbers, latency p50/p95, per-group numbers, and the failures (IoU < 0.5) by id."""
    outcomes = list(outcomes)
    total = _Tally()
    groups: dict[str, _Tally] = {}
    for outcome in outcomes:
        total.add(outcome)
        groups.setdefault(outcome.group, _Tally()).add(outcome)
    reviewed = [o for o in outcomes if o.needs_review is False]
    return {
        **total.numbers(),
        "errors": sum(o.error is not None for o in outcomes),
        "latency_ms": {"p50": percentile(total.latencies, 50), "p95": percentile(total.latencies, 95)},
        "not_flagged": {  # results with needs_review=false: how many, and how often right
            "cases": len(reviewed),
            "acc_iou50": _ratio(sum(o.top_iou >= IOU_50 for o in reviewed), len(reviewed)),
        },
        "groups": {name: groups[name].numbers() for name in sorted(groups)},
        "failures": [
            {
                "id": o.id,
                "phrase": o.phrase,
                "top_iou": o.top_iou,
                "boxes": o.boxes,
                **({"error": o.error} if o.error else {}),
            }
            for o in outcomes
            if o.top_iou < IOU_50
        ],
    }


def outcome_dict(outcome: CaseOutcome) -> dict:
    return asdict(outcome)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank ``q``-th percentile (0 < q <= 100); None without values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return round(ordered[rank - 1], 1)


def _ratio(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


# --- reading labelled files (already parsed JSON; the reader resolves paths) ----------------------


def cases_from_records(records: Iterable[dict]) -> list[EvalCase]:
    """Chord's JSONL cases ``{"image", "phrase", "boxes": [[x1, y1, x2, y2], ...]}`` (optional ``id``,
    ``group``), or RefCOCO-style ``{"image" or "file_name", "expression" or "sentences", "bbox": [x, y, w, h]}``
    (one case per sentence, grouped by expression)."""
    cases = []
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise ValueError(f"case {number}: expected a JSON object, got {type(record).__name__}")
        image = record.get("image") or record.get("file_name")
        if not isinstance(image, str) or not image:
            raise ValueError(f"case {number}: 'image' (a path) is missing")
        if "boxes" in record:
            phrase = _text(record.get("phrase"), f"case {number}: 'phrase'")
            boxes = tuple(_xyxy(box, f"case {number}") for box in record["boxes"])
            case_id = str(record.get("id", number))
            cases.append(EvalCase(case_id, image, phrase, boxes, str(record.get("group", phrase))))
            continue
        if "bbox" not in record:
            raise ValueError(f"case {number}: expected 'boxes' (xyxy list) or a RefCOCO 'bbox' ([x, y, w, h])")
        box = _xywh_to_xyxy(record["bbox"], f"case {number}")
        sentences = record.get("sentences") or [record.get("expression") or record.get("phrase")]
        for k, sentence in enumerate(sentences):
            if isinstance(sentence, dict):  # RefCOCO's refs: {"sent": "...", "raw": "..."}
                sentence = sentence.get("sent") or sentence.get("raw")
            phrase = _text(sentence, f"case {number}: the referring expression")
            case_id = str(record.get("ref_id", record.get("id", number))) + (f"/{k}" if len(sentences) > 1 else "")
            cases.append(
                EvalCase(case_id, image, phrase, (box,), str(record.get("group", record.get("category", "ref"))))
            )
    return cases


def cases_from_coco(data: dict) -> list[EvalCase]:
    """A COCO detection file: one case per (image, category present in it), the category name as the phrase
    and its boxes as the ground truth; ids ``"<image id>:<category>"``."""
    try:
        names = {c["id"]: c["name"] for c in data["categories"]}
        files = {image["id"]: image["file_name"] for image in data["images"]}
        annotations = data["annotations"]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a COCO detection file: {exc} is missing") from None
    grouped: dict[tuple[int, int], list] = {}
    for ann in annotations:
        if ann.get("iscrowd"):
            continue
        grouped.setdefault((ann["image_id"], ann["category_id"]), []).append(
            _xywh_to_xyxy(ann["bbox"], f"annotation {ann.get('id')}")
        )
    return [
        EvalCase(f"{image_id}:{names[category]}", files[image_id], names[category], tuple(boxes), names[category])
        for (image_id, category), boxes in sorted(grouped.items())
    ]


def _text(value, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string")
    return value.strip()


def _xyxy(box, where: str) -> tuple[float, float, float, float]:
    if not (isinstance(box, list | tuple) and len(box) == 4 and all(isinstance(v, int | float) for v in box)):
        raise ValueError(f"{where}: a box must be [x1, y1, x2, y2] numbers, got {box!r}")
    x1, y1, x2, y2 = (float(v) for v in box)
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"{where}: a box must have x2 > x1 and y2 > y1, got {box!r}")
    return x1, y1, x2, y2


def _xywh_to_xyxy(box, where: str) -> tuple[float, float, float, float]:
    if not (isinstance(box, list | tuple) and len(box) == 4):
        raise ValueError(f"{where}: a bbox must be [x, y, w, h], got {box!r}")
    x, y, w, h = box
    return _xyxy([x, y, x + w, y + h], where)
