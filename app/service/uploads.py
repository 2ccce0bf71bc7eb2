"""Check and decode what people upload, the same way for the UI and REST.

Order matters: the byte cap is checked before anything is parsed, the format and the pixel count
are read from the header before any pixel is decoded (so a decompression bomb never reaches
memory), and only then is the first frame decoded, made upright and converted to RGB.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

from PIL import ExifTags, Image, UnidentifiedImageError

from app.errors import ImageTooLarge, InvalidImage, PayloadTooLarge, UnsupportedMediaType
from app.grounding.tiling import Fit
from app.service.images import shrunk, to_model_rgb

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
# File names taken as images in folders and zips.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
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
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = {
    Image.Transpose.TRANSPOSE,
    Image.Transpose.ROTATE_270,
    Image.Transpose.TRANSVERSE,
    Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int
    max_pixels: int


@dataclass(frozen=True)
class FittedImage:
    """An upload decoded for the model: upright RGB ``image``, no larger than it was fitted to, and the
    upright size of the image as it was sent (boxes are mapped back to that)."""

    image: Image.Image
    original_wh: tuple[int, int]


def read_header(data: bytes, limits: UploadLimits) -> Image.Image:
    """The upload opened lazily (header only, no pixel decoded) once every cap and format check passed."""
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
    return image


def decode_upload(data: bytes, limits: UploadLimits, fit: Fit | None = None) -> FittedImage:
    """The upright RGB first frame of an upload, decoded straight to the size ``fit`` allows.

    JPEG decodes at a reduced scale (``draft``) and WebP through FFmpeg's scaler where they can,
    so a huge image never exists at full size in memory; every other format is decoded whole and
    shrunk at once. ``fit=None`` keeps every pixel (tiling needs them).
    """
    image = read_header(data, limits)
    try:
        transpose = _TRANSPOSE.get(image.getexif().get(ExifTags.Base.Orientation, 1))
    except (OSError, ValueError, SyntaxError):
        transpose = None
    swapped = transpose in _SWAPS_AXES
    upright_wh = image.size[::-1] if swapped else image.size
    target_wh = fit.wh(upright_wh) if fit else None
    try:
        decoded = _decode_reduced(data, image, target_wh[::-1] if target_wh and swapped else target_wh)
        if decoded is None:
            image.seek(0)  # GIF, TIFF, MPO: the first frame
            image.load()
            decoded = to_model_rgb(image)
        elif transpose is not None:
            decoded = decoded.transpose(transpose)
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InvalidImage(f"could not decode image: {exc}") from None
    return FittedImage(shrunk(decoded, target_wh), upright_wh)


def _decode_reduced(data: bytes, image: Image.Image, stored_target_wh: tuple[int, int] | None) -> Image.Image | None:
    """The image decoded near ``stored_target_wh`` (before EXIF rotation) where the format allows; None
    where it must be decoded whole. A JPEG is left drafted for the caller's whole decode."""
    if stored_target_wh is None:
        return None
    if image.format in ("JPEG", "MPO"):
        image.draft("RGB", stored_target_wh)  # scale 1/2, 1/4 or 1/8, never below the target
        return None
    if image.format == "WEBP" and not getattr(image, "is_animated", False):
        return decode_webp_scaled(data, stored_target_wh)
    return None


def decode_webp_scaled(data: bytes, target_wh: tuple[int, int]) -> Image.Image | None:
    """A still WebP decoded by FFmpeg (YUV, 1.5 bytes a pixel) and scaled to ``target_wh`` on the way to
    RGB; None when FFmpeg cannot decode it (Pillow then decodes it whole). No protocol, one demuxer."""
    import av

    try:
        with av.open(io.BytesIO(data), format="webp_pipe", options={"protocol_whitelist": ""}) as container:
            frame = next(container.decode(video=0))
            has_alpha = frame.format.name.startswith(("yuva", "rgba", "bgra", "argb", "abgr"))
            scaled = frame.reformat(
                width=target_wh[0], height=target_wh[1], format="rgba" if has_alpha else "rgb24", interpolation="AREA"
            )
            decoded = scaled.to_image()
    except (av.FFmpegError, StopIteration, ValueError, OSError):
        return None
    return to_model_rgb(decoded)
