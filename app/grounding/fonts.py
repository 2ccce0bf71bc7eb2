"""Find a font that can draw CJK labels; fall back to Pillow's built-in font and say so."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from PIL import ImageFont

logger = logging.getLogger(__name__)

# Debian/Ubuntu packages fonts-wqy-microhei, fonts-noto-cjk, fonts-droid-fallback; macOS; Windows.
CJK_FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/System/Library/Fonts/PingFang.ttc",
    "C:/Windows/Fonts/msyh.ttc",
)


@functools.lru_cache(maxsize=32)
def label_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """A font of ``size`` pixels that renders Chinese where such a font is installed."""
    path = cjk_font_path()
    if path is not None:
        return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size)


@functools.lru_cache(maxsize=1)
def cjk_font_path() -> Path | None:
    for candidate in CJK_FONT_CANDIDATES:
        if Path(candidate).is_file():
            return Path(candidate)
    logger.warning(
        "no CJK font found (tried %s): Chinese labels will be drawn as boxes; "
        "install one, e.g. `apt-get install fonts-wqy-microhei`",
        ", ".join(CJK_FONT_CANDIDATES),
    )
    return None
