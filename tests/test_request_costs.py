"""Work is bounded by what it costs decoded, bodies are refused while they arrive, text fields are
capped, and one caller never takes the whole queue: through the real server."""

from __future__ import annotations

import io
import select
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import httpx
import pytest
from gradio_client import Client, handle_file
from live_server import PeakRss, running_server, start_server
from PIL import Image

pytestmark = pytest.mark.slow
MB = 1_000_000


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def huge_webp(seed: int) -> bytes:
    """10000x10000 pixels in a few hundred KB: a flat field with one square."""
    image = Image.new("RGB", (10000, 10000), (230, 230, 220))
    image.paste((40 * seed % 255, 90, 200), (4000 + seed * 300, 4000, 5000 + seed * 300, 5000))
    return encoded(image, "WEBP", quality=30, method=0)


@pytest.fixture(scope="module")
def costs_server(tiny_checkpoint, tmp_path_factory):
    with running_server(tiny_checkpoint, tmp_path_factory.mktemp("costs"), MAX_NEW_TOKENS="8") as live:
        yield live


def test_four_huge_webps_in_one_batch_stay_within_a_gigabyte(costs_server):
    files = [("images", (f"big{i}.webp", huge_webp(i), "image/webp")) for i in range(4)]
    assert sum(len(f[1][1]) for f in files) < 4 * MB
    with PeakRss(costs_server.process.pid) as memory:
        response = httpx.post(f"{costs_server.url}/api/ground/batch", files=files, data={"prompt": "the square"},
                              timeout=300)  # fmt: skip
    print(f"four 10000x10000 WebPs in one batch: peak growth {memory.growth_mb:.0f} MB")
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["image_size"] for r in results] == [[10000, 10000]] * 4
    assert memory.growth_mb <= 1000
    assert httpx.get(f"{costs_server.url}/health", timeout=5).status_code == 200


def test_more_pixels_than_one_request_may_bring_is_413_before_decoding(costs_server):
    files = [("images", (f"big{i}.webp", huge_webp(i), "image/webp")) for i in range(5)]  # 500 MP > 400 MP
    with PeakRss(costs_server.process.pid) as memory:
        response = httpx.post(f"{costs_server.url}/api/ground/batch", files=files, data={"prompt": "x"}, timeout=120)
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "image_too_large"
    assert "MAX_REQUEST_PIXELS" in response.json()["error"]["message"]
    assert memory.growth_mb < 150


def raw_post(url: str, path: str, headers: dict[str, str], body_chunks) -> tuple[int, bytes]:
    """POST over a plain socket, stopping the body when the server answers or stops reading; (status, answer)."""
    address = urlparse(url)
    with socket.create_connection((address.hostname, address.port), timeout=30) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: {address.hostname}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        sock.sendall(head.encode())
        sock.settimeout(5)
        try:
            for chunk in body_chunks:
                readable, _, _ = select.select([sock], [], [], 0)
                if readable:
                    break  # the server has answered
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the server stopped reading
        sock.settimeout(30)
        answer = b""
        while b"\r\n\r\n" not in answer:
            try:
                more = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not more:
                break
            answer += more
    return int(answer.split(b" ", 2)[1]), answer


def multipart_head(boundary: str) -> bytes:
    return (
        f'--{boundary}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\ncat\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_body_over_the_cap_is_refused_before_it_is_read(costs_server, declared):
    boundary = "chordboundary"
    size = 300 * MB
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    if declared:
        headers["Content-Length"] = str(size)
        chunks = (multipart_head(boundary) if i == 0 else b"\0" * MB for i in range(size // MB))
    else:
        headers["Transfer-Encoding"] = "chunked"
        pieces = (multipart_head(boundary) if i == 0 else b"\0" * MB for i in range(size // MB))
        chunks = (b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces)
    started = time.monotonic()
    with PeakRss(costs_server.process.pid) as memory:
        status, answer = raw_post(costs_server.url, "/api/ground", headers, chunks)
    print(f"300 MB body ({'declared' if declared else 'chunked'}): {status} after {time.monotonic() - started:.1f} s, "
          f"peak growth {memory.growth_mb:.0f} MB")  # fmt: skip
    assert status == 413, answer[:300]
    assert b"payload_too_large" in answer and b"x-request-id" in answer.lower()
    assert memory.growth_mb < 100
    assert httpx.get(f"{costs_server.url}/health", timeout=5).status_code == 200


def test_a_gradio_upload_over_the_cap_is_refused(tiny_checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("upload-cap")
    live = start_server(tiny_checkpoint, folder, MAX_REQUEST_BYTES="3000000")
    try:
        live.wait_for_health(200)
        big = {"files": ("big.png", b"\0" * 4_000_000, "image/png")}
        response = httpx.post(f"{live.url}/gradio_api/upload", files=big, timeout=60)
        assert response.status_code == 413, response.text
        assert response.json()["error"]["code"] == "payload_too_large"
        stored = [p for p in (folder / "gradio").rglob("*") if p.is_file() and p.stat().st_size >= 3_000_000]
        assert stored == []
        small = {"files": ("small.png", encoded(Image.new("RGB", (8, 8)), "PNG"), "image/png")}
        assert httpx.post(f"{live.url}/gradio_api/upload", files=small, timeout=60).status_code == 200
    finally:
        live.stop()


def test_a_huge_prompt_template_is_refused_at_once(costs_server, sample_png):
    client = Client(costs_server.url, verbose=False)
    started = time.monotonic()
    with pytest.raises(Exception, match="prompt template has 66"):
        client.predict(handle_file(sample_png), "the cat", 8, 0, "Find {targets}. " + "x" * 66_000, api_name="/ground")
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("token", ["<|image_pad|>", "<|video_pad|>", "<|im_end|>", "<|vision_start|>"])
def test_the_models_control_tokens_in_a_prompt_are_a_422(costs_server, sample_png, token):
    with open(sample_png, "rb") as f:
        response = httpx.post(
            f"{costs_server.url}/api/ground", files={"image": f}, data={"prompt": f"the cat {token}"}, timeout=60
        )
    assert response.status_code == 422, response.text
    assert token in response.json()["error"]["message"]
    client = Client(costs_server.url, verbose=False)
    with pytest.raises(Exception, match="control token"):
        client.predict(handle_file(sample_png), "the cat", 8, 0, f"Find {{targets}} {token}", api_name="/ground")


def test_a_big_batch_leaves_room_for_single_requests(costs_server, sample_png):
    png = open(sample_png, "rb").read()
    batch = [("images", (f"{i}.png", png, "image/png")) for i in range(64)]

    def single(_: int) -> int:
        return httpx.post(
            f"{costs_server.url}/api/ground", files={"image": png}, data={"prompt": "cat"}, timeout=120
        ).status_code

    with ThreadPoolExecutor(9) as pool:
        big = pool.submit(
            httpx.post, f"{costs_server.url}/api/ground/batch", files=batch, data={"prompt": "cat"}, timeout=300
        )
        time.sleep(0.5)  # the batch is in the queue first
        singles = list(pool.map(single, range(8)))
        response = big.result()
    assert singles == [200] * 8
    assert response.status_code == 200
    assert all("boxes" in r for r in response.json()["results"])


def test_a_huge_tiled_image_is_answered_on_an_idle_server(costs_server):
    image = Image.new("RGB", (10000, 10000), (230, 230, 220))
    image.paste((200, 30, 30), (6000, 6000, 6400, 6400))
    data = encoded(image, "PNG", compress_level=1)
    response = httpx.post(
        f"{costs_server.url}/api/ground",
        files={"image": ("huge.png", data, "image/png")},
        data={"prompt": "the red square", "tiling": "true"},
        timeout=600,
    )
    assert response.status_code == 200, response.text
    assert response.json()["image_size"] == [10000, 10000]
