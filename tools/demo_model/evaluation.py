"""Measuring a grounder on fresh demo scenes: IoU against the ground truth. Pure (no torch).

``evaluate`` takes any ``ground`` callable (the in-process engine, or a running server's HTTP
API), so every path is judged by the same cases and the same arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from PIL import Image

from app.demo.scenes import make_scene, pick_target, scene_rng
from app.grounding.geometry import iou

IOU_HIT = 0.5
# The bar of issue 7: at least this share of fresh scenes must reach IoU >= 0.5.
REQUIRED_HIT_RATE = 0.8

Box = tuple[int, int, int, int]
# For each case: the predicted boxes (xyxy, original pixels) with their labels.
Grounder = Callable[[Sequence["SceneCase"]], list[list[tuple[Box, str]]]]


@dataclass(frozen=True)
class SceneCase:
    """One fresh scene and the one target asked for in it."""

    index: int
    image: Image.Image
    phrase: str
    box: Box
    n_objects: int


@dataclass
class EvalReport:
    n: int = 0
    valid: int = 0
    hits: int = 0
    iou_sum: float = 0.0
    ious: list[float] = field(default_factory=list)
    by_group: dict[str, list[float]] = field(default_factory=dict)

    @property
    def valid_rate(self) -> float:
        return self.valid / self.n if self.n else 0.0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.n if self.n else 0.0

    @property
    def mean_iou(self) -> float:
        return self.iou_sum / self.n if self.n else 0.0

    def summary(self) -> dict:
        groups = {
            name: {"n": len(v), "hit_rate": round(sum(i >= IOU_HIT for i in v) / len(v), 3)}
            for name, v in sorted(self.by_group.items())
        }
        return {
            "scenes": self.n,
            "valid_answer_rate": round(self.valid_rate, 3),
            "mean_iou": round(self.mean_iou, 3),
            "iou_at_least_0.5": round(self.hit_rate, 3),
            "bar": REQUIRED_HIT_RATE,
            "bar_met": self.hit_rate >= REQUIRED_HIT_RATE,
            "groups": groups,
        }


def fresh_cases(n: int, split: str = "eval", start: int = 0) -> list[SceneCase]:
    """``n`` scenes of ``split`` (a stream training never draws from), each with one random target."""
    cases = []
    for index in range(start, start + n):
        rng = scene_rng(split, index)
        scene = make_scene(rng)
        target = pick_target(rng, scene)
        cases.append(SceneCase(index, scene.image, target.phrase, target.box, len(scene.objects)))
    return cases


def best_iou(truth: Box, predictions: Sequence[tuple[Box, str]], phrase: str) -> tuple[bool, float]:
    """(whether any box is labelled ``phrase``, the best IoU among those boxes)."""
    boxes = [box for box, label in predictions if label.strip() == phrase.strip()]
    return bool(boxes), max((iou(truth, box) for box in boxes), default=0.0)


def evaluate(cases: Sequence[SceneCase], ground: Grounder, batch_size: int = 8, on_batch=None) -> EvalReport:
    """Ground every case (in batches) and score it: valid answer, best IoU, hit at IoU >= 0.5."""
    report = EvalReport()
    for start in range(0, len(cases), batch_size):
        batch = cases[start : start + batch_size]
        for case, predictions in zip(batch, ground(batch), strict=True):
            valid, score = best_iou(case.box, predictions, case.phrase)
            report.n += 1
            report.valid += valid
            report.hits += score >= IOU_HIT
            report.iou_sum += score
            report.ious.append(score)
            language = "zh" if any("\u4e00" <= ch <= "\u9fff" for ch in case.phrase) else "en"
            for group in (f"objects={case.n_objects}", f"language={language}"):
                report.by_group.setdefault(group, []).append(score)
        if on_batch is not None:
            on_batch(len(batch))
    return report


def check_accuracy(ground: Grounder, n: int = 20, split: str = "test", batch_size: int = 8) -> EvalReport:
    """The acceptance check shared by the engine test and the server test: ``n`` fresh scenes, one target each.

    Callers assert ``report.hit_rate >= REQUIRED_HIT_RATE``; the 'test' stream is never used for
    training, nor for the numbers in the model card (those use 'eval').
    """
    return evaluate(fresh_cases(n, split), ground, batch_size)


def http_grounder(url: str, timeout_s: float = 120) -> Grounder:
    """A ``Grounder`` over a running server's ``POST /api/ground`` (one PNG upload per case)."""
    import io

    import httpx

    def ground(cases: Sequence[SceneCase]) -> list[list[tuple[Box, str]]]:
        answers = []
        with httpx.Client(base_url=url, timeout=timeout_s) as client:
            for case in cases:
                png = io.BytesIO()
                case.image.save(png, "PNG")
                files = {"image": (f"scene-{case.index}.png", png.getvalue(), "image/png")}
                response = client.post("/api/ground", files=files, data={"prompt": case.phrase})
                response.raise_for_status()
                body = response.json()
                answers.append([(tuple(box), label) for box, label in zip(body["boxes"], body["labels"], strict=True)])
        return answers

    return ground


def engine_grounder(engine) -> Grounder:
    """A ``Grounder`` over an in-process engine (``Engine.ground`` with one phrase per request)."""
    from app.engine.base import GroundingRequest

    def ground(cases: Sequence[SceneCase]) -> list[list[tuple[Box, str]]]:
        results = engine.ground([GroundingRequest(case.image, (case.phrase,)) for case in cases])
        return [[(tuple(box), label) for box, label in zip(r.boxes, r.labels, strict=True)] for r in results]

    return ground


def write_case_files(cases: Sequence[SceneCase], folder, groups: bool = False) -> tuple:
    """The cases as files ``python -m app eval`` reads: ``images/scene-N.png``, ``cases.jsonl`` and the same
    cases as ``coco.json`` (the phrase as the category). ``groups``: JSONL cases grouped by object count."""
    import json
    from pathlib import Path

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines, images, annotations, categories = [], [], [], {}
    for number, case in enumerate(cases, start=1):
        name = f"images/scene-{case.index}.png"
        case.image.save(folder / name)
        line = {"id": f"scene-{case.index}", "image": name, "phrase": case.phrase, "boxes": [list(case.box)]}
        lines.append({**line, "group": f"objects={case.n_objects}"} if groups else line)
        category = categories.setdefault(case.phrase, len(categories) + 1)
        images.append({"id": number, "file_name": name, "width": case.image.width, "height": case.image.height})
        x1, y1, x2, y2 = case.box
        bbox = [x1, y1, x2 - x1, y2 - y1]
        annotations.append({"id": number, "image_id": number, "category_id": category, "bbox": bbox,
                            "area": bbox[2] * bbox[3], "iscrowd": 0})  # fmt: skip
    jsonl = folder / "cases.jsonl"
    jsonl.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    coco = folder / "coco.json"
    coco_data = {"images": images, "annotations": annotations,
                 "categories": [{"id": i, "name": name} for name, i in categories.items()]}  # fmt: skip
    coco.write_text(json.dumps(coco_data, ensure_ascii=False), encoding="utf-8")
    return jsonl, coco
