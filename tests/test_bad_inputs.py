"""Every kind of upload a long-running service meets, through the real server: each gets its
documented status and code or a correct result, and /health stays 200 after each."""

from __future__ import annotations

import io
import struct
import zlib

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

pytestmark = pytest.mark.slow


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def scene(wh=(64, 48), mode="RGB") -> Image.Image:
    rng = np.random.default_rng(sum(wh))
    return Image.fromarray(rng.integers(0, 255, (wh[1], wh[0], 3), dtype=np.uint8)).convert(mode)


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # a phone held upright: rotate 90 degrees to display
    return encode(scene((80, 40)), "JPEG", exif=exif)


def sixteen_bit_png() -> bytes:
    return encode(Image.fromarray(np.full((30, 40), 40000, dtype=np.uint16)), "PNG")


def animated_gif() -> bytes:
    frames = [scene((50, 30)).convert("P") for _ in range(3)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def multipage_tiff() -> bytes:
    return encode(scene((40, 30)), "TIFF", save_all=True, append_images=[scene((20, 20))])


def png_header(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00\x00\x00\x00IEND\xaeB`\x82"


OK = (200, None)
# (upload bytes, prompt, extra form fields, expected (status, code), expected image_size for a 200)
CASES = {
    "phone jpeg with EXIF rotation": (exif_rotated_jpeg, "cat", {}, OK, [40, 80]),
    "16-bit png": (sixteen_bit_png, "cat", {}, OK, [40, 30]),
    "cmyk jpeg": (lambda: encode(scene(mode="CMYK"), "JPEG"), "cat", {}, OK, [64, 48]),
    "animated gif (first frame)": (animated_gif, "cat", {}, OK, [50, 30]),
    "palette png": (lambda: encode(scene(mode="P"), "PNG"), "cat", {}, OK, [64, 48]),
    "grey + alpha png": (lambda: encode(scene(mode="LA"), "PNG"), "cat", {}, OK, [64, 48]),
    "rgba png": (lambda: encode(scene(mode="RGBA"), "PNG"), "cat", {}, OK, [64, 48]),
    "1-bit png": (lambda: encode(scene(mode="1"), "PNG"), "cat", {}, OK, [64, 48]),
    "1x1 image": (lambda: encode(scene((1, 1)), "PNG"), "cat", {}, OK, [1, 1]),
    "10x3000 image": (lambda: encode(scene((10, 3000)), "PNG"), "cat", {}, OK, [10, 3000]),
    "webp": (lambda: encode(scene(), "WEBP"), "cat", {}, OK, [64, 48]),
    "bmp": (lambda: encode(scene(), "BMP"), "cat", {}, OK, [64, 48]),
    "tiff": (lambda: encode(scene(), "TIFF"), "cat", {}, OK, [64, 48]),
    "multi-page tiff": (multipage_tiff, "cat", {}, OK, [40, 30]),
    "side beyond MAX_IMAGE_SIDE (downscaled)": (lambda: encode(scene((5000, 60)), "PNG"), "cat", {}, OK, [5000, 60]),
    "tiling on a large image": (
        lambda: encode(scene((2400, 1300)), "JPEG"),
        "cat",
        {"tiling": "true"},
        OK,
        [2400, 1300],
    ),
    "control characters in the prompt": (lambda: encode(scene(), "PNG"), "\x00c\x07at\x1b", {}, OK, [64, 48]),
    "emoji and chinese prompt": (lambda: encode(scene(), "PNG"), "🐱 红色的猫", {}, OK, [64, 48]),
    "zero-byte file": (lambda: b"", "cat", {}, (400, "invalid_image"), None),
    "truncated jpeg": (lambda: encode(scene((300, 200)), "JPEG")[:700], "cat", {}, (400, "invalid_image"), None),
    "random bytes": (
        lambda: bytes(np.random.default_rng(1).integers(0, 255, 5000, dtype=np.uint8)),
        "cat",
        {},
        (400, "invalid_image"),
        None,
    ),  # fmt: skip
    "text file": (lambda: b"just some text\n" * 10, "cat", {}, (400, "invalid_image"), None),
    "pdf renamed to .jpg": (
        lambda: b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n" + b"0" * 200,
        "cat",
        {},
        (415, "unsupported_media_type"),
        None,
    ),  # fmt: skip
    "heic photo": (
        lambda: b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 200,
        "cat",
        {},
        (415, "unsupported_media_type"),
        None,
    ),  # fmt: skip
    "svg": (
        lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        "cat",
        {},
        (415, "unsupported_media_type"),
        None,
    ),  # fmt: skip
    "ico (a format Pillow reads but Chord does not accept)": (
        lambda: encode(scene((32, 32)), "ICO"),
        "cat",
        {},
        (415, "unsupported_media_type"),
        None,
    ),  # fmt: skip
    "decompression bomb (20000x20000 header)": (
        lambda: png_header(20000, 20000),
        "cat",
        {},
        (413, "image_too_large"),
        None,
    ),  # fmt: skip
    "over MAX_IMAGE_PIXELS (11000x10000 header)": (
        lambda: png_header(11000, 10000),
        "cat",
        {},
        (413, "image_too_large"),
        None,
    ),  # fmt: skip
    "upload over MAX_UPLOAD_BYTES": (
        lambda: b"\xff\xd8\xff" + b"\x00" * 21_000_000,
        "cat",
        {},
        (413, "payload_too_large"),
        None,
    ),  # fmt: skip
    "50 000-character prompt": (lambda: encode(scene(), "PNG"), "cat " * 12_500, {}, (422, "prompt_too_long"), None),
    "empty prompt": (lambda: encode(scene(), "PNG"), "", {}, (422, "empty_prompt"), None),
    "prompt of control characters only": (
        lambda: encode(scene(), "PNG"),
        "\x00\x01\x02",
        {},
        (422, "empty_prompt"),
        None,
    ),  # fmt: skip
    "max_new_tokens 0": (
        lambda: encode(scene(), "PNG"),
        "cat",
        {"max_new_tokens": "0"},
        (422, "invalid_request"),
        None,
    ),  # fmt: skip
    "max_new_tokens 5000": (
        lambda: encode(scene(), "PNG"),
        "cat",
        {"max_new_tokens": "5000"},
        (422, "invalid_request"),
        None,
    ),  # fmt: skip
    "max_new_tokens not a number": (
        lambda: encode(scene(), "PNG"),
        "cat",
        {"max_new_tokens": "lots"},
        (422, "invalid_request"),
        None,
    ),  # fmt: skip
    "score_threshold -1": (
        lambda: encode(scene(), "PNG"),
        "cat",
        {"score_threshold": "-1"},
        (422, "invalid_request"),
        None,
    ),  # fmt: skip
    "score_threshold 2": (
        lambda: encode(scene(), "PNG"),
        "cat",
        {"score_threshold": "2"},
        (422, "invalid_request"),
        None,
    ),  # fmt: skip
    "tiling not a boolean": (
        lambda: encode(scene(), "PNG"),
        "cat",
        {"tiling": "sometimes"},
        (422, "invalid_request"),
        None,
    ),  # fmt: skip
}


@pytest.mark.parametrize("name", list(CASES))
def test_rest_upload(server, name):
    make, prompt, fields, (status, code), image_size = CASES[name]
    response = httpx.post(
        f"{server.url}/api/ground",
        files={"image": ("upload.jpg", make(), "application/octet-stream")},
        data={"prompt": prompt, "max_new_tokens": "8", **fields},
        timeout=300,
    )
    assert response.status_code == status, response.text[:500]
    body = response.json()
    if status == 200:
        assert body["image_size"] == image_size
        for x1, y1, x2, y2 in body["boxes"]:
            assert 0 <= x1 < x2 <= image_size[0] and 0 <= y1 < y2 <= image_size[1]
        assert all(p and "\x00" not in p for p in body["phrases"])
    else:
        assert body["error"]["code"] == code and body["error"]["message"]
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_control_characters_are_stripped_and_unicode_kept(server):
    files = {"image": ("a.png", encode(scene(), "PNG"), "image/png")}
    body = httpx.post(f"{server.url}/api/ground", files=files, data={"prompt": "\x00c\x07at; 🐱 红色的猫"}, timeout=120)
    assert body.json()["phrases"] == ["cat", "🐱 红色的猫"]


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        ({"image": "data:image/png;base64,", "prompt": "cat"}, 400, "invalid_image"),  # empty data URL
        ({"image": "%%%", "prompt": "cat"}, 400, "invalid_image"),  # not base64
        ({"image": 12345, "prompt": "cat"}, 422, "invalid_request"),  # wrong type
        ({"image": [], "prompt": "cat"}, 422, "invalid_request"),  # wrong type
    ],
)
def test_predict_odd_bodies(server, payload, status, code):
    response = httpx.post(f"{server.url}/api/predict", json=payload, timeout=60)
    assert response.status_code == status and response.json()["error"]["code"] == code
    assert httpx.get(f"{server.url}/health").status_code == 200


@pytest.fixture(scope="module")
def client(server):
    return Client(server.url, verbose=False)


def test_gradio_client_gets_the_same_messages(server, client, tmp_path):
    pdf = tmp_path / "scan.jpg"
    pdf.write_bytes(b"%PDF-1.7\n" + b"0" * 100)
    with pytest.raises(Exception, match="cannot identify image|PDF"):  # Gradio's image input decodes first
        client.predict(handle_file(str(pdf)), "cat", api_name="/ground")
    odd = tmp_path / "tall.png"
    odd.write_bytes(encode(scene((10, 3000)), "PNG"))
    _, result, _, _ = client.predict(handle_file(str(odd)), "cat", api_name="/ground")
    assert result["image_size"] == [10, 3000]
    with pytest.raises(Exception, match="prompt"):
        client.predict(handle_file(str(odd)), "x" * 600, api_name="/ground")
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_no_path_sent_by_a_client_is_opened(server, client):
    secret = {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}, "orig_name": "passwd"}
    with pytest.raises(Exception) as info:
        client.predict(secret, "cat", api_name="/ground")
    assert "root:" not in str(info.value)
    assert httpx.get(f"{server.url}/health").status_code == 200
