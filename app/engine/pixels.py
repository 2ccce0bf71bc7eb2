"""The processor's pixel range for a checkpoint: settings narrowed to what the checkpoint allows. No torch.

Both engines use it: the in-process one hands it to the processor, the OpenAI-compatible one
computes the size the server resizes each image to (Qwen2.5-VL answers in pixels of that size).
"""

from __future__ import annotations

import json
from pathlib import Path

from app.settings import Settings

# Where a checkpoint keeps its image processor settings: the classic file, or (transformers >= 5)
# the "image_processor" entry of processor_config.json.
_PROCESSOR_FILES = (("preprocessor_config.json", None), ("processor_config.json", "image_processor"))


def effective_pixel_range(settings: Settings, checkpoint_size: dict) -> tuple[int, int]:
    """MIN_PIXELS/MAX_PIXELS narrowed to the checkpoint's own processor range, never widened past it.

    A real Qwen2.5-VL allows up to 16k visual tokens, so MAX_PIXELS (1280 tokens) applies; a small
    checkpoint trained at low resolution keeps its own, smaller limit.
    """
    lo = max(settings.min_pixels, int(checkpoint_size.get("shortest_edge") or 0))
    hi = min(settings.max_pixels, int(checkpoint_size.get("longest_edge") or settings.max_pixels))
    return min(lo, hi), hi


def image_processor_config(model_dir: str | Path) -> dict:
    """A local checkpoint's image processor settings; {} when it has none."""
    for name, entry in _PROCESSOR_FILES:
        path = Path(model_dir) / name
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        config = config.get(entry) if entry else config
        if isinstance(config, dict) and config:
            return config
    return {}


def checkpoint_processor_size(config: dict) -> dict:
    """``{"shortest_edge": min_pixels, "longest_edge": max_pixels}`` from image processor settings.

    Reads ``size`` or the older ``min_pixels``/``max_pixels`` keys; {} when neither is there.
    """
    size = dict(config.get("size") or {})
    if config.get("min_pixels"):
        size.setdefault("shortest_edge", config["min_pixels"])
    if config.get("max_pixels"):
        size.setdefault("longest_edge", config["max_pixels"])
    return {k: int(size[k]) for k in ("shortest_edge", "longest_edge") if size.get(k)}
