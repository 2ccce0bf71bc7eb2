"""One ``results.jsonl`` line per image (the command line's batch, the UI's Batch tab). Pure."""

from __future__ import annotations

from collections.abc import Sequence


def image_record(rel_path: str, phrases: Sequence[str], result: dict) -> dict:
    """One results.jsonl line from a result dict or an ``{"error": ...}`` dict."""
    if "error" in result:
        return {"path": rel_path, "phrases": list(phrases), "error": result["error"]}
    return {
        "path": rel_path,
        "image_size": result["image_size"],
        "phrases": list(phrases),
        "boxes": result["boxes"],
        "labels": result["labels"],
        "scores": result["scores"],
        "confidence": result["confidence"],
        "needs_review": result["needs_review"],
        "text": result["text"],
    }
