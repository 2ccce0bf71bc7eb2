"""Every route and the error handler, in process: the real app (``create_app``) on the tiny checkpoint,
driven by Starlette's ``TestClient`` so the fast set covers them without starting a server.

One app for the whole module (its lifespan loads the model in the background; /health is polled
until 200). The slow files (test_api.py, test_error_shape.py, test_bad_inputs.py) still check the
same things over real HTTP; this is the representative subset a developer runs in seconds.
"""

from __future__ import annotations

import base64
import io
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageDraw
from starlette.testclient import TestClient

from app.server.main import create_app
from app.service.frames import AnnotatedVideo
from app.settings import load_settings

RESULT_KEYS = {"boxes", "labels", "scores", "points", "text", "image_size", "model", "latency_ms", "phrases",
               "confidence", "needs_review"}  # fmt: skip
READY_TIMEOUT_S = 120


def png_bytes(image_wh: tuple[int, int] = (320, 240)) -> bytes:
    """A red square and a blue circle on grey, wider than tall unless told otherwise."""
    image = Image.new("RGB", image_wh, (235, 235, 225))
    draw = ImageDraw.Draw(image)
    w, h = image_wh
    draw.rectangle((w // 8, h // 4, w // 2, 3 * h // 4), fill=(200, 30, 30))
    draw.ellipse((w // 2 + 10, h // 5, w - 10, h // 2 + 20), fill=(30, 90, 200))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


SAMPLE = ("sample.png", png_bytes(), "image/png")


def wait_until_healthy(client: TestClient, wanted: int = 200) -> dict:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        response = client.get("/health")
        if response.status_code == wanted and response.json()["status"] != "loading":
            return response.json()
        time.sleep(0.05)
    raise TimeoutError(f"/health did not answer {wanted} within {READY_TIMEOUT_S} s: {response.text}")


@pytest.fixture(scope="module")
def gradio_cache(tmp_path_factory) -> Iterator[Path]:
    """Gradio's upload cache (GRADIO_TEMP_DIR, read at call time) in a temp folder, as live_server sets it."""
    folder = tmp_path_factory.mktemp("gradio-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_TEMP_DIR", str(folder))
        yield folder


@pytest.fixture(scope="module")
def client(tiny_checkpoint, gradio_cache) -> Iterator[TestClient]:
    settings = load_settings(
        model_path=tiny_checkpoint, device="cpu", max_new_tokens=8, max_pixels=50176, model_process=False
    )
    with TestClient(create_app(settings)) as client:
        wait_until_healthy(client)
        yield client


def assert_error(response, status: int, code: str) -> dict:
    """The one error shape, with the request id that the X-Request-ID header also carries."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    return error


def assert_result(body: dict, image_wh: list[int]) -> None:
    """A grounding answer for an image of ``image_wh``: its size back, and boxes in its pixels."""
    assert RESULT_KEYS <= body.keys()
    assert body["image_size"] == image_wh
    assert body["model"] and isinstance(body["text"], str)
    assert len(body["boxes"]) == len(body["labels"]) == len(body["scores"])
    known = [s for s in body["scores"] if s is not None]
    assert body["confidence"] == (max(known) if known else None)  # the best box's score
    assert body["needs_review"] is (body["confidence"] is None or body["confidence"] < 0.7)
    for x1, y1, x2, y2 in body["boxes"]:
        assert 0 <= x1 <= x2 <= image_wh[0] and 0 <= y1 <= y2 <= image_wh[1]


def test_health_says_ready_on_cpu(client):
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["device"] == "cpu" and body["family"] == "qwen2.5-vl"
    assert {"model", "uptime_s", "requests_served", "queue_depth"} <= body.keys()


def test_ground_multipart_answers_in_pixels_of_the_sent_image(client):
    response = client.post(
        "/api/ground",
        files={"image": ("sample.png", png_bytes((320, 240)), "image/png")},
        data={"prompt": "the red square; 蓝色的圆", "score_threshold": "0.1"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"]
    body = response.json()
    assert_result(body, [320, 240])
    assert body["phrases"] == ["the red square", "蓝色的圆"]  # ';' separates phrases
    assert all(score is None or score >= 0.1 for score in body["scores"])


def test_predict_takes_base64_and_data_urls(client):
    encoded = base64.b64encode(png_bytes((200, 300))).decode()  # taller than wide: a swap would show
    for image in (encoded, "data:image/png;base64," + encoded):
        response = client.post("/api/predict", json={"image": image, "prompt": "the blue circle\nthe red square"})
        assert response.status_code == 200, response.text
        assert_result(response.json(), [200, 300])
        assert response.json()["phrases"] == ["the blue circle", "the red square"]  # newlines separate too


def test_batch_answers_each_image_in_order_and_a_bad_one_alone(client):
    files = [
        ("images", ("wide.png", png_bytes((320, 240)), "image/png")),
        ("images", ("bad.png", b"not an image", "image/png")),
        ("images", ("tall.png", png_bytes((90, 160)), "image/png")),
    ]
    response = client.post("/api/ground/batch", files=files, data={"prompt": "the red square; the blue circle"})
    assert response.status_code == 200, response.text
    wide, bad, tall = response.json()["results"]
    assert_result(wide, [320, 240])
    assert_result(tall, [90, 160])
    assert wide["phrases"] == ["the red square", "the blue circle"]
    assert bad["error"]["code"] == "invalid_image"
    assert bad["error"]["request_id"] == response.headers["x-request-id"]


def test_video_answers_each_sampled_frame(client, tmp_path):
    path = tmp_path / "clip.mp4"
    with AnnotatedVideo(path, 10) as video:  # 1 s at 10 fps, a red square moving right
        for i in range(10):
            image = Image.new("RGB", (96, 64), (240, 240, 230))
            ImageDraw.Draw(image).rectangle((5 + 4 * i, 20, 25 + 4 * i, 40), fill=(200, 30, 30))
            video.add(image)
    response = client.post(
        "/api/ground/video",
        files={"video": ("clip.mp4", path.read_bytes(), "video/mp4")},
        data={"prompt": "the red square; the blue circle", "fps": "2"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["phrases"] == ["the red square", "the blue circle"] and body["fps"] == 2
    assert [frame["frame_index"] for frame in body["frames"]] == [0, 5]
    assert [frame["timestamp"] for frame in body["frames"]] == [0.0, 0.5]
    for frame in body["frames"]:
        assert frame["image_size"] == [96, 64]
        for x1, y1, x2, y2 in frame["boxes"]:
            assert 0 <= x1 <= x2 <= 96 and 0 <= y1 <= y2 <= 64


def test_metrics_count_answers_and_errors(client):
    def scrape() -> dict[str, float]:
        response = client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in response.text.splitlines()
            if line and not line.startswith("#")
        }

    ok = 'chord_requests_total{endpoint="/api/ground",status="200"}'
    missing = 'chord_errors_total{code="missing_image"}'
    before = scrape()
    assert client.post("/api/ground", files={"image": png_bytes()}, data={"prompt": "a shape"}).status_code == 200
    assert client.post("/api/ground", data={"prompt": "no image"}).status_code == 422
    after = scrape()
    assert after[ok] == before.get(ok, 0) + 1
    assert after[missing] == before.get(missing, 0) + 1
    assert after["chord_model_ready"] == 1


def test_metrics_count_image_cache_hits_for_a_repeat_question(client):
    hits, misses = 'chord_image_cache_hits_total{stage="prefix"}', 'chord_image_cache_misses_total{stage="prefix"}'

    def scrape() -> dict[str, float]:
        lines = [line for line in client.get("/metrics").text.splitlines() if line.startswith("chord_image_cache")]
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines}

    picture = io.BytesIO()
    Image.effect_noise((200, 150), 64).convert("RGB").save(picture, format="PNG")  # an image no other test sends
    before = scrape()
    for prompt in ("the red square", "a blue circle"):
        files = {"image": ("noise.png", picture.getvalue())}
        response = client.post("/api/ground", files=files, data={"prompt": prompt})
        assert response.status_code == 200, response.text
    after = scrape()
    assert (after[hits] - before[hits], after[misses] - before[misses]) == (1, 1)
    assert after['chord_image_cache_bytes{stage="prefix"}'] > 0


# A representative row per error code of /api/ground; tests/test_error_shape.py has the full table over HTTP.
@pytest.mark.parametrize(
    ("files", "data", "status", "code"),
    [
        (None, {"prompt": "the cat"}, 422, "missing_image"),  # no image field
        ({"image": ("empty.png", b"", "image/png")}, {"prompt": "the cat"}, 400, "invalid_image"),  # zero bytes
        ({"image": ("notes.txt", b"hello", "text/plain")}, {"prompt": "x"}, 400, "invalid_image"),  # not an image
        ({"image": SAMPLE}, {"prompt": " ; \n ;"}, 422, "empty_prompt"),  # only separators
        ({"image": SAMPLE}, {"prompt": "x", "max_new_tokens": "0"}, 422, "invalid_request"),  # out of range
    ],
)
def test_ground_errors_have_the_one_shape(client, files, data, status, code):
    assert_error(client.post("/api/ground", files=files, data=data), status, code)


def test_predict_refuses_bad_base64_and_a_body_that_is_not_json(client):
    assert_error(client.post("/api/predict", json={"image": "not base64!!", "prompt": "x"}), 400, "invalid_image")
    response = client.post("/api/predict", content=b"image=abc", headers={"content-type": "application/json"})
    assert_error(response, 422, "invalid_request")


def test_an_enormous_image_is_refused_from_its_header(client):
    ihdr = struct.pack(">IIBBBBB", 20000, 10000, 8, 2, 0, 0, 0)  # claims 20000 x 10000 pixels
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    png = b"\x89PNG\r\n\x1a\n" + chunk + b"\x00\x00\x00\x00IEND\xaeB`\x82"
    response = client.post("/api/ground", files={"image": ("huge.png", png, "image/png")}, data={"prompt": "x"})
    assert "MAX_IMAGE_PIXELS" in assert_error(response, 413, "image_too_large")["message"]


@pytest.mark.parametrize(("method", "path"), [("GET", "/api/nope"), ("POST", "/api/ground/nope")])
def test_an_unknown_api_path_is_not_found(client, method, path):
    assert_error(client.request(method, path), 404, "not_found")


def test_a_wrong_method_is_not_allowed_and_says_which_is(client):
    response = client.get("/api/ground")
    assert "POST" in assert_error(response, 405, "method_not_allowed")["message"]
    assert response.headers["allow"] == "POST"


def test_openapi_lists_every_route_and_docs_render(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in ("/health", "/metrics", "/api/ground", "/api/predict", "/api/ground/batch", "/api/ground/video"):
        assert path in paths, path
    assert client.get("/docs").status_code == 200


def test_the_ui_is_served_at_the_root(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "Chord" in response.text


@pytest.mark.parametrize(
    "path",
    [
        "/etc/passwd",  # a server file
        "/proc/self/environ",  # the process environment
        "{cache}/../outside.txt",  # dot-dot out of the upload cache
    ],
)
def test_gradio_call_refuses_a_file_outside_the_upload_cache(client, gradio_cache, path):
    (gradio_cache.parent / "outside.txt").write_text("chord-secret\n")
    file_data = {"path": path.format(cache=gradio_cache), "meta": {"_type": "gradio.FileData"}, "orig_name": "x.png"}
    response = client.post("/gradio_api/call/ground", json={"data": [file_data, "the cat", 8, 0, "", []]})
    assert_error(response, 403, "forbidden_path")
    assert "chord-secret" not in response.text and "root:" not in response.text


def test_a_model_that_cannot_load_keeps_the_app_up_and_says_why(tmp_path):
    settings = load_settings(model_path=str(tmp_path / "no-such-model"), device="cpu", model_process=False)
    with TestClient(create_app(settings)) as broken:
        health = wait_until_healthy(broken, wanted=503)
        assert health["status"] == "failed" and health["error"]["code"] == "model_load_failed"
        assert "no-such-model" in health["error"]["message"]
        response = broken.post("/api/ground", files={"image": png_bytes()}, data={"prompt": "x"})
        assert_error(response, 503, "model_load_failed")
