"""Images are read upright and as RGB before anything sees them."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from app.errors import InvalidImage
from app.service.images import open_image


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def test_exif_orientation_is_applied():
    landscape = Image.new("RGB", (200, 100), (255, 0, 0))
    landscape.paste((0, 0, 255), (0, 0, 20, 20))  # a blue mark in the top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image = open_image(encoded(landscape, "JPEG", exif=exif, quality=95))
    assert image.size == (100, 200)
    r, g, b = image.getpixel((90, 5))  # the mark now sits top-right
    assert b > 200 and r < 60


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("RGBA", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("L", "PNG"), ("1", "PNG"), ("CMYK", "JPEG"), ("I;16", "PNG")],
)
def test_every_mode_becomes_rgb(mode, fmt):
    image = open_image(encoded(Image.new(mode, (30, 20)), fmt))
    assert image.mode == "RGB" and image.size == (30, 20)


def test_sixteen_bit_values_are_scaled_not_clipped():
    wide = Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16))
    assert abs(open_image(encoded(wide, "PNG")).getpixel((0, 0))[0] - 128) <= 1


def test_transparency_is_composited_on_white():
    assert open_image(encoded(Image.new("RGBA", (4, 4), (0, 0, 0, 0)), "PNG")).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("payload", [b"", b"not an image", b"%PDF-1.4\n" + b"0" * 100, b"\x89PNG\r\n\x1a\n\x00"])
def test_undecodable_bytes_are_a_clear_error(payload):
    with pytest.raises(InvalidImage, match="could not decode image"):
        open_image(payload)
