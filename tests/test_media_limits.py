"""What a video or a zip costs the server is counted decoded (pixels, frames, bytes unpacked), not by upload size.

Each test starts its own server (the model in its own process, as in production) and samples the RSS
of the server and the model process every 50 ms while one request runs; the peak growth is printed.
"""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from live_server import PeakRss, running_server, start_server

pytestmark = pytest.mark.slow

MB = 1024 * 1024


def make_big_video(path: Path, image_wh: tuple[int, int] = (4096, 4096), frames: int = 30, rate: int = 10) -> Path:
    """A few hundred KB of MPEG-4 that decodes to ``frames`` frames of ``image_wh`` (a red square moving right)."""
    width, height = image_wh
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate, stream.gop_size = 200_000, frames
        for i in range(frames):
            pixels = np.full((height, width, 3), 230, dtype=np.uint8)
            pixels[height // 4 : height // 2, 64 * i : 64 * i + width // 4] = (200, 30, 30)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def own_server(tiny_checkpoint, tmp_path_factory):
    """A fresh server, so the memory it grows by is this module's requests' alone."""
    with running_server(tiny_checkpoint, tmp_path_factory.mktemp("limits-server"), MODEL_PROCESS="true") as live:
        yield live


@pytest.fixture(scope="module")
def big_video(tmp_path_factory) -> Path:
    return make_big_video(tmp_path_factory.mktemp("big") / "big.mp4")


def _post(server, path: Path, fps: float) -> httpx.Response:
    with path.open("rb") as handle:
        files = {"video": (path.name, handle, "video/mp4")}
        return httpx.post(
            f"{server.url}/api/ground/video", files=files, data={"prompt": "the ramp", "fps": str(fps)}, timeout=600
        )


def test_a_4096_square_video_is_decoded_small_and_in_chunks(own_server, big_video):
    assert big_video.stat().st_size < 1 * MB
    with PeakRss(own_server.process.pid) as peak:
        answered = _post(own_server, big_video, fps=10)  # all 30 frames of 16.8 megapixels
    size_kb = big_video.stat().st_size // 1024
    print(f"\n4096x4096 video of {size_kb} KB, 30 frames: peak RSS growth of server + model process "
          f"{peak.growth_mb:.0f} MB ({answered.status_code})")  # fmt: skip
    assert peak.growth_mb <= 1024
    assert answered.status_code == 200, answered.text
    frames = answered.json()["frames"]
    assert [f["frame_index"] for f in frames] == list(range(30))
    assert all(f["image_size"] == [4096, 4096] for f in frames)  # boxes are in the frame's own pixels
    assert all(0 <= v <= 4096 for f in frames for box in f["boxes"] for v in box)
    assert httpx.get(f"{own_server.url}/health", timeout=10).status_code == 200


def test_frames_over_the_pixel_caps_are_refused_before_decoding(tiny_checkpoint, tmp_path):
    wide = make_big_video(tmp_path / "wide.mp4", image_wh=(2048, 1024), frames=30)  # 3 s
    square = make_big_video(tmp_path / "square.mp4", image_wh=(2048, 2048), frames=3)
    # Each 2048x1024 frame is kept at 4 x MAX_PIXELS = 200704 pixels: 3 of them pass 500000.
    live = start_server(tiny_checkpoint, tmp_path, MAX_IMAGE_PIXELS="3000000", MAX_REQUEST_PIXELS="500000")
    try:
        live.wait_for_health(200)
        too_big = _post(live, square, fps=1)
        too_many = _post(live, wide, fps=1)
        fine = _post(live, wide, fps=0.5)
    finally:
        live.stop()
    assert too_big.status_code == 413
    error = too_big.json()["error"]
    assert error["code"] == "image_too_large" and "2048x2048" in error["message"]
    assert "MAX_IMAGE_PIXELS" in error["message"]
    assert too_many.status_code == 413
    error = too_many.json()["error"]
    assert error["code"] == "video_too_long" and "MAX_REQUEST_PIXELS" in error["message"] and "fps" in error["message"]
    assert fine.status_code == 200, fine.text


def test_a_zip_bomb_is_refused_from_its_directory_before_any_member_is_read(own_server, sample_png, tmp_path):
    bomb = tmp_path / "zeros.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for i in range(8):
            archive.writestr(f"zeros-{i}.png", bytes(64 * MB))
    assert bomb.stat().st_size < 2 * MB
    client = Client(own_server.url, verbose=False, download_files=str(tmp_path / "downloads"))
    started = time.perf_counter()
    with PeakRss(own_server.process.pid) as peak:
        try:
            answer = client.predict([handle_file(str(bomb))], "the red square", api_name="/ground_batch")
        except Exception as exc:  # noqa: BLE001 - gradio_client raises AppError with the UI's message
            answer = exc
    seconds = time.perf_counter() - started
    size_kb = bomb.stat().st_size // 1024
    print(f"\nzip of 8 x 64 MB zeros ({size_kb} KB): peak RSS growth {peak.growth_mb:.0f} MB, {seconds:.1f} s")
    assert peak.growth_mb < 200 and seconds < 30
    assert isinstance(answer, Exception), answer
    assert "MAX_UPLOAD_BYTES" in str(answer) and "zeros-0.png" in str(answer)

    fine = tmp_path / "fine.zip"
    with zipfile.ZipFile(fine, "w") as archive:
        archive.write(sample_png, "a.png")
        archive.write(sample_png, "b.png")
    _, _, summary = client.predict([handle_file(str(fine))], "the red square", api_name="/ground_batch")
    assert summary.startswith("2 images")
