"""Every error of the REST API has the documented status and {"error": {"code", "message", "request_id"}}."""

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


def _assert_error_shape(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    return error


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/nope"),  # a path no route has
        ("POST", "/api/ground/nope"),  # below a real route
        ("DELETE", "/api/"),  # the bare prefix
    ],
)
def test_an_unknown_api_path_is_not_found_in_the_error_shape(server, method, path):
    response = httpx.request(method, f"{server.url}{path}")
    _assert_error_shape(response, 404, "not_found")
    assert f"id={response.headers['x-request-id']}" in server.log()


@pytest.mark.parametrize("path", ["/api/ground", "/api/predict", "/api/ground/batch", "/api/ground/video"])
def test_a_wrong_method_is_not_allowed_and_says_which_is(server, path):
    response = httpx.get(f"{server.url}{path}")
    error = _assert_error_shape(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST"
    assert "POST" in error["message"]


@pytest.mark.parametrize(
    ("files", "data", "limit"),
    [
        ([("images", ("a.png", b"x", "image/png"))] * 1001, {"prompt": "x"}, "Too many files"),  # 1000 files at most
        (None, {"prompt": "x", **{f"field{i}": "v" for i in range(1001)}}, "Too many fields"),  # 1000 fields at most
        ([("images", ("a.png", b"x", "image/png"))], {"prompt": "x" * (1024 * 1024 + 1)}, "exceeded maximum size"),
    ],
)
def test_a_multipart_form_past_its_limits_is_an_invalid_request(server, files, data, limit):
    response = httpx.post(f"{server.url}/api/ground/batch", files=files, data=data, timeout=60)
    error = _assert_error_shape(response, 422, "invalid_request")
    assert limit in error["message"]


def test_a_failed_batch_item_carries_the_request_id(server, sample_png):
    with open(sample_png, "rb") as f:
        png = f.read()
    files = [("images", ("good.png", png, "image/png")), ("images", ("bad.png", b"not an image", "image/png"))]
    response = httpx.post(f"{server.url}/api/ground/batch", files=files, data={"prompt": "the cat"}, timeout=60)
    assert response.status_code == 200, response.text
    good, bad = response.json()["results"]
    assert good["image_size"] == [320, 240]
    assert bad["error"]["code"] == "invalid_image"
    assert bad["error"]["request_id"] == response.headers["x-request-id"]
