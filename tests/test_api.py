"""The REST API, /health, /metrics and /docs of the real server, over HTTP."""

from __future__ import annotations

import base64
import io
import threading
import time

import httpx
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

RESULT_KEYS = {"boxes", "labels", "scores", "points", "text", "image_size", "model", "latency_ms"}


def _assert_result(body: dict, image_wh: list[int]) -> None:
    assert RESULT_KEYS <= body.keys()
    assert body["image_size"] == image_wh
    assert body["model"]
    assert isinstance(body["text"], str)
    assert body["latency_ms"] > 0
    assert len(body["boxes"]) == len(body["labels"]) == len(body["scores"])
    for box in body["boxes"]:
        assert len(box) == 4 and all(isinstance(v, int) for v in box)
        x1, y1, x2, y2 = box
        assert 0 <= x1 <= x2 <= image_wh[0] and 0 <= y1 <= y2 <= image_wh[1]


def _metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_health_answers_what_serves(server):
    # Only 503 (loading: the model process forked from the keeper usually loads the tiny checkpoint before the
    # port is bound) then 200; the loading answer itself is test_browser's loading test (PRELOAD_MODEL_CODE=false).
    assert set(server.health_seen) <= {503, 200} and server.health_seen[-1] == 200
    body = httpx.get(f"{server.url}/health").json()
    assert body["status"] == "ok"
    assert body["device"] == "cpu"
    assert body["family"] == "qwen2.5-vl"
    assert {"model", "uptime_s", "requests_served", "queue_depth"} <= body.keys()


def test_ground_multipart_returns_result_for_the_uploaded_image(server, sample_png):
    with open(sample_png, "rb") as f:
        response = httpx.post(
            f"{server.url}/api/ground",
            files={"image": ("sample.png", f, "image/png")},
            data={"prompt": "the red square; 蓝色的圆", "max_new_tokens": "16", "score_threshold": "0.1"},
            timeout=120,
        )
    assert response.status_code == 200, response.text
    body = response.json()
    _assert_result(body, [320, 240])
    assert body["phrases"] == ["the red square", "蓝色的圆"]  # ';' separates phrases
    assert all(s is None or s >= 0.1 for s in body["scores"])


def test_ground_reports_the_upright_size_of_a_rotated_jpeg(server):
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    Image.new("RGB", (300, 200), (120, 160, 90)).save(buffer, format="JPEG", exif=exif)
    response = httpx.post(
        f"{server.url}/api/ground",
        files={"image": ("photo.jpg", buffer.getvalue(), "image/jpeg")},
        data={"prompt": "the tree"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    _assert_result(response.json(), [200, 300])


def test_predict_json_base64_returns_the_same_shape(server, sample_png):
    with open(sample_png, "rb") as f:
        encoded = base64.b64encode(f.read()).decode()
    for image in (encoded, "data:image/png;base64," + encoded):
        response = httpx.post(
            f"{server.url}/api/predict",
            json={"image": image, "prompt": "the blue circle", "max_new_tokens": 16},
            timeout=120,
        )
        assert response.status_code == 200, response.text
        _assert_result(response.json(), [320, 240])
        assert response.json()["phrases"] == ["the blue circle"]


def test_metrics_count_requests_by_endpoint_and_status(server, sample_png):
    def scrape() -> str:
        response = httpx.get(f"{server.url}/metrics")
        assert response.status_code == 200  # a plain route: no redirect to /metrics/
        assert response.headers["content-type"].startswith("text/plain")
        return response.text

    before = scrape()
    with open(sample_png, "rb") as f:
        response = httpx.post(f"{server.url}/api/ground", files={"image": f}, data={"prompt": "a shape"}, timeout=120)
    assert response.status_code == 200
    httpx.post(f"{server.url}/api/ground", data={"prompt": "no image"})
    after = scrape()
    ok = 'chord_requests_total{endpoint="/api/ground",status="200"}'
    assert _metric(after, ok) == _metric(before, ok) + 1
    missing = 'chord_errors_total{code="missing_image"}'
    assert _metric(after, missing) == _metric(before, missing) + 1
    count = 'chord_request_seconds_count{endpoint="/api/ground"}'
    assert _metric(after, count) == _metric(before, count) + 2
    assert _metric(after, "chord_model_ready") == 1
    assert _metric(after, "chord_model_load_seconds") > 0
    assert "chord_in_flight_requests" in after


def test_each_request_gets_one_log_line_with_its_id(server, sample_png):
    with open(sample_png, "rb") as f:
        response = httpx.post(
            f"{server.url}/api/ground", files={"image": f}, data={"prompt": "the red square"}, timeout=120
        )
    request_id = response.headers["x-request-id"]
    lines = [line for line in server.log().splitlines() if f"id={request_id}" in line]
    assert len(lines) == 1
    assert "endpoint=/api/ground image=320x240 phrase_chars=14 boxes=" in lines[0]
    assert "status=200" in lines[0]


def test_health_answers_while_the_model_is_busy(server, sample_png):
    def long_request():
        with open(sample_png, "rb") as f:
            httpx.post(
                f"{server.url}/api/ground",
                files={"image": f},
                data={"prompt": "everything", "max_new_tokens": "160"},
                timeout=120,
            )

    worker = threading.Thread(target=long_request)
    worker.start()
    try:
        busy = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and worker.is_alive():
            started = time.perf_counter()
            response = httpx.get(f"{server.url}/health", timeout=5)
            elapsed = time.perf_counter() - started
            if response.json().get("in_flight", 0) >= 1:
                busy = (response, elapsed)
                break
            time.sleep(0.02)
    finally:
        worker.join(timeout=120)
    assert busy is not None, "never saw the request in flight"
    response, elapsed = busy
    assert response.status_code == 200
    assert elapsed < 1.0


def test_docs_describe_every_field(server):
    assert httpx.get(f"{server.url}/docs").status_code == 200
    schema = httpx.get(f"{server.url}/openapi.json").json()
    ground = schema["paths"]["/api/ground"]["post"]
    assert {"200", "400", "422", "503"} <= ground["responses"].keys()
    form_ref = ground["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[1]
    components = schema["components"]["schemas"]
    for name in ("prompt", "max_new_tokens", "score_threshold", "image"):
        assert components[form_ref]["properties"][name].get("description"), name
    for model in ("GroundingResponse", "PredictRequest"):
        for name, prop in components[model]["properties"].items():
            assert prop.get("description"), f"{model}.{name} has no description"
            assert prop.get("examples") is not None, f"{model}.{name} has no example"
    assert "/health" in schema["paths"] and "/metrics" in schema["paths"]


def test_the_ui_is_served_at_the_root(server):
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200
    assert "<title>Chord</title>" in page.text or "Chord" in page.text
