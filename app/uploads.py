"""Check and decode what people upload, the same way for the UI and REST.

Order matters: the byte cap is checked before anything is parsed, the format and the pixel count
are read from the header before any pixel is decoded (so a decompression bomb never reaches
memory), and only then is the first frame decoded, made upright and converted to RGB.
"""

from __future__ import annotations

import io
import re
import unicodedata
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from app.errors import ChordError, InvalidImage, InvalidRequest
from app.images import to_model_rgb

ACCEPTED_FORMATS = {
    "JPEG": "JPEG",
    "PNG": "PNG",
    "WEBP": "WebP",
    "BMP": "BMP",
    "GIF": "GIF",
    "TIFF": "TIFF",
    "MPO": "JPEG",
}
ACCEPTED_TEXT = "JPEG, PNG, WebP, BMP, GIF (first frame), TIFF"
# Containers people send by mistake, recognised by their first bytes.
_KNOWN_OTHERS = (
    (
        re.compile(rb"^....ftyp(heic|heix|hevc|mif1|msf1|avif)", re.DOTALL),
        "a HEIC/AVIF photo: convert it to JPEG or PNG first",
    ),
    (re.compile(rb"^%PDF"), "a PDF document: export the page as a PNG or JPEG image"),
    (re.compile(rb"^....ftyp", re.DOTALL), "a video or MP4-family file, not an image"),
    (re.compile(rb"^<svg|^<\?xml", re.IGNORECASE), "an SVG/XML file: export it as PNG"),
)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class UnsupportedMediaType(ChordError):
    status = 415
    code = "unsupported_media_type"


class PayloadTooLarge(ChordError):
    status = 413
    code = "payload_too_large"


class ImageTooLarge(ChordError):
    status = 413
    code = "image_too_large"


class PromptTooLong(InvalidRequest):
    code = "prompt_too_long"


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int
    max_pixels: int


def decode_upload(data: bytes, limits: UploadLimits) -> Image.Image:
    """The upright RGB first frame of an uploaded image, or a ChordError saying what is wrong."""
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(
            f"the upload is {len(data) / 1e6:.1f} MB; the limit is {limits.max_bytes / 1e6:.1f} MB (MAX_UPLOAD_BYTES)"
        )
    if not data:
        raise InvalidImage("could not decode image: the file is empty")
    for pattern, what in _KNOWN_OTHERS:
        if pattern.match(data[:64]):
            raise UnsupportedMediaType(f"this is {what}. Accepted: {ACCEPTED_TEXT}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own cap is checked below
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(
            f"the image has too many pixels to decode safely ({exc}); the limit is "
            f"{limits.max_pixels / 1e6:.0f} megapixels (MAX_IMAGE_PIXELS)"
        ) from None
    except UnidentifiedImageError:
        raise InvalidImage(f"could not decode image: not a file of a known image format ({ACCEPTED_TEXT})") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidImage(f"could not decode image: {exc}") from None
    if image.format not in ACCEPTED_FORMATS:
        raise UnsupportedMediaType(f"{image.format} images are not accepted. Accepted: {ACCEPTED_TEXT}")
    w, h = image.size
    if w * h > limits.max_pixels:
        raise ImageTooLarge(
            f"the image is {w}x{h} = {w * h / 1e6:.0f} megapixels; the limit is "
            f"{limits.max_pixels / 1e6:.0f} megapixels (MAX_IMAGE_PIXELS)"
        )
    try:
        image.seek(0)  # GIF, TIFF, MPO: the first frame
        image.load()
        return to_model_rgb(image)
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InvalidImage(f"could not decode image: {exc}") from None


def clean_prompt(text: str | None, max_chars: int) -> str:
    """Control characters removed (newlines kept: they separate phrases), Unicode kept, length capped."""
    cleaned = unicodedata.normalize("NFC", _CONTROL.sub("", text or ""))
    if len(cleaned) > max_chars:
        raise PromptTooLong(f"the prompt has {len(cleaned)} characters; the limit is {max_chars} (MAX_PROMPT_CHARS)")
    return cleaned
