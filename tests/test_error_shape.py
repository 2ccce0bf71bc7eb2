"""Every error of the REST API has the documented status and {"error": {"code", "message"}}."""

from __future__ import annotations

import struct
import zlib

import httpx
import pytest

pytestmark = pytest.mark.slow


def _post_ground(server, files: dict | None, prompt: str | None, **fields: str) -> httpx.Response:
    data = {k: v for k, v in {"prompt": prompt, **fields}.items() if v is not None}
    return httpx.post(f"{server.url}/api/ground", files=files, data=data, timeout=60)


def _png(sample_png: str) -> dict:
    with open(sample_png, "rb") as f:
        return {"image": ("sample.png", f.read(), "image/png")}


@pytest.mark.parametrize(
    ("make_files", "prompt", "fields", "status", "code"),
    [
        (lambda png: None, "the cat", {}, 422, "missing_image"),  # no image field
        (lambda png: {"image": ("empty.png", b"", "image/png")}, "the cat", {}, 400, "invalid_image"),  # zero bytes
        (_png, "", {}, 422, "empty_prompt"),  # empty phrase
        (_png, "  ; \n ;", {}, 422, "empty_prompt"),  # only separators
        (_png, None, {}, 422, "empty_prompt"),  # no prompt field
        (lambda png: {"image": ("notes.txt", b"hello, not an image", "text/plain")}, "x", {}, 400, "invalid_image"),
        (lambda png: {"image": ("fake.png", b"\x89PNG\r\n\x1a\nbroken", "image/png")}, "x", {}, 400, "invalid_image"),
        (_png, "the cat", {"max_new_tokens": "0"}, 422, "invalid_request"),  # out of range
        (_png, "the cat", {"score_threshold": "high"}, 422, "invalid_request"),  # not a number
    ],
)
def test_ground_errors(server, sample_png, make_files, prompt, fields, status, code):
    response = _post_ground(server, make_files(sample_png), prompt, **fields)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    assert httpx.get(f"{server.url}/health").status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"prompt": "the cat"}, 422, "missing_image"),  # no image key
        ({"image": "", "prompt": "the cat"}, 400, "invalid_image"),  # zero bytes
        ({"image": "not base64!!", "prompt": "the cat"}, 400, "invalid_image"),  # bad base64
        ({"image": "aGVsbG8=", "prompt": "the cat"}, 400, "invalid_image"),  # base64 of text
        ({"image": "aGVsbG8=", "prompt": ""}, 422, "empty_prompt"),  # empty phrase
        ({"image": "aGVsbG8=", "prompt": "x", "max_new_tokens": 99999}, 422, "invalid_request"),  # out of range
    ],
)
def test_predict_errors(server, body, status, code):
    response = httpx.post(f"{server.url}/api/predict", json=body, timeout=60)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_predict_rejects_a_body_that_is_not_json(server):
    response = httpx.post(
        f"{server.url}/api/predict", content=b"image=abc", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"


def test_a_model_that_cannot_load_keeps_the_server_up_and_says_why(broken_server, sample_png):
    response = httpx.get(f"{broken_server.url}/health")
    assert response.status_code == 503
    health = response.json()
    assert health["status"] == "failed"
    assert health["error"]["code"] == "model_load_failed"
    assert "no-such-model" in health["error"]["message"]
    response = _post_ground(broken_server, _png(sample_png), "the cat")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "model_load_failed"
    assert broken_server.process.poll() is None


def test_an_enormous_image_is_refused_not_a_server_fault(server):
    # A valid PNG header claiming 20000 x 10000 pixels: refused from the header, before decoding.
    header = zlib.crc32(b"IHDR" + struct.pack(">IIBBBBB", 20000, 10000, 8, 2, 0, 0, 0))
    ihdr = struct.pack(">I", 13) + b"IHDR" + struct.pack(">IIBBBBB", 20000, 10000, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + ihdr + struct.pack(">I", header) + b"\x00\x00\x00\x00IEND\xaeB`\x82"
    response = _post_ground(server, {"image": ("huge.png", png, "image/png")}, "the cat")
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "image_too_large"
    assert "MAX_IMAGE_PIXELS" in response.json()["error"]["message"]


def test_by_default_a_model_that_cannot_load_ends_the_process_with_the_cause(tmp_path):
    from live_server import start_server

    live = start_server(str(tmp_path / "no-such-model"), tmp_path)
    try:
        assert live.process.wait(timeout=120) == 3
    finally:
        live.stop()
    assert "does not exist" in live.log() and "no-such-model" in live.log()
