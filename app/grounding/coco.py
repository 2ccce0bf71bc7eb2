"""Batch results -> COCO detection format. Pure: dicts in, a dict out.

Images are the results without an ``error`` (ids from 1, in order); categories are the phrases
(ids from 1, in order), then any other label the model gave; annotations carry ``bbox`` as
``[x, y, w, h]`` pixels, ``area``, ``iscrowd`` 0 and the box's ``score`` where it has one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def to_coco(records: Iterable[dict], phrases: Sequence[str]) -> dict:
    """COCO dict for ``records`` (results.jsonl lines: ``path``, ``image_size`` [w, h], ``boxes`` xyxy, ...)."""
    categories: dict[str, int] = {}
    for phrase in phrases:
        categories.setdefault(_key(phrase), len(categories) + 1)
    names = {categories[_key(p)]: p for p in phrases}
    images: list[dict] = []
    annotations: list[dict] = []
    for record in records:
        if record.get("error") is not None:
            continue
        image_id = len(images) + 1
        width, height = record["image_size"]
        images.append({"id": image_id, "file_name": record["path"], "width": width, "height": height})
        boxes = record.get("boxes", [])
        labels = record.get("labels") or [None] * len(boxes)
        scores = record.get("scores") or [None] * len(boxes)
        for box, label, score in zip(boxes, labels, scores, strict=True):
            name = label if label else (phrases[0] if len(phrases) == 1 else "object")
            if _key(name) not in categories:
                categories[_key(name)] = len(categories) + 1
                names[categories[_key(name)]] = name
            annotations.append(_annotation(len(annotations) + 1, image_id, categories[_key(name)], box, score))
    return {
        "info": {"description": "Chord grounding results"},
        "images": images,
        "categories": [{"id": cid, "name": names[cid], "supercategory": "phrase"} for cid in sorted(names)],
        "annotations": annotations,
    }


def xyxy_to_xywh(box: Sequence[float]) -> list[float]:
    """``[x1, y1, x2, y2]`` -> ``[x, y, w, h]``; ValueError unless it has four numbers with x1 <= x2, y1 <= y2."""
    if len(box) != 4:
        raise ValueError(f"a box is [x1, y1, x2, y2], got {list(box)!r}")
    x1, y1, x2, y2 = box
    if x2 < x1 or y2 < y1:
        raise ValueError(f"a box needs x1 <= x2 and y1 <= y2, got {list(box)!r}")
    return [x1, y1, x2 - x1, y2 - y1]


def _annotation(ann_id: int, image_id: int, category_id: int, box: Sequence[float], score: float | None) -> dict:
    bbox = xyxy_to_xywh(box)
    annotation = {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": bbox,
        "area": bbox[2] * bbox[3],
        "iscrowd": 0,
    }
    if score is not None:
        annotation["score"] = score
    return annotation


def _key(name: str) -> str:
    return " ".join(name.split()).casefold()
