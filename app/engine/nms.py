"""Merge overlapping boxes with torchvision's NMS (per label), for tiled grounding."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.ops import batched_nms


def nms_keep(
    boxes: Sequence[Sequence[int]], scores: Sequence[float | None], labels: Sequence[str], iou: float = 0.5
) -> list[int]:
    """Indices of the boxes to keep, best first; boxes of different labels never suppress each other."""
    if not boxes:
        return []
    label_ids = {label: i for i, label in enumerate(dict.fromkeys(labels))}
    keep = batched_nms(
        torch.tensor(boxes, dtype=torch.float32),
        torch.tensor([1.0 if s is None else s for s in scores], dtype=torch.float32),
        torch.tensor([label_ids[label] for label in labels]),
        iou,
    )
    return sorted(keep.tolist())
