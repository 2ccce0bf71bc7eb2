"""Read images at the edge: decode, apply EXIF orientation, convert to RGB."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from app.errors import InvalidImage


def open_image(source: str | Path | bytes) -> Image.Image:
    """Decode an image file or bytes into an upright RGB image; InvalidImage if it cannot be decoded."""
    try:
        if isinstance(source, (bytes, bytearray)):
            image = Image.open(io.BytesIO(source))
        else:
            image = Image.open(source)
        image.load()
    except FileNotFoundError:
        raise InvalidImage(f"image file not found: {source}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InvalidImage(f"could not decode image: {exc}") from None
    return to_model_rgb(image)


def to_model_rgb(image: Image.Image) -> Image.Image:
    """Upright (EXIF orientation applied) RGB ``image``; transparency composited on white.

    Takes a freshly decoded image and may change it in place: an upright RGB image is returned
    as it is, not copied (a copy of every upload is measurable CPU on a busy server).
    """
    ImageOps.exif_transpose(image, in_place=True)
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        return _sixteen_bit_to_rgb(image)
    return image.convert("RGB")


def _sixteen_bit_to_rgb(image: Image.Image) -> Image.Image:
    # Pillow's "I;16" -> "RGB" clips to 255; scale the 16-bit range down instead.
    wide = image.convert("I")
    return wide.point(lambda v: v / 256).convert("L").convert("RGB")


def shrunk(image: Image.Image, target_wh: tuple[int, int] | None) -> Image.Image:
    """``image`` resized to ``target_wh`` the one way every door does it (bicubic), or as it is."""
    if target_wh is None or image.size == target_wh:
        return image
    return image.resize(target_wh, Image.Resampling.BICUBIC)
