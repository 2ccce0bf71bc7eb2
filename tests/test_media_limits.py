"""What a video or a zip costs the server is counted decoded (pixels, frames, bytes unpacked), not by upload size.

Each test starts its own server (the model in its own process, as in production) and samples the RSS
of the server and the model process every 50 ms while one request runs; the peak growth is printed.
"""

from __future__ import annotations

import threading
import time
import zipfile
from pathlib import Path

import av
import httpx
import numpy as np
import psutil
import pytest
from gradio_client import Client, handle_file
from live_server import start_server

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


class PeakRss:
    """Samples the summed RSS of a process and its children every 50 ms while in the ``with`` block."""

    def __init__(self, pid: int, interval_s: float = 0.05):
        self.process = psutil.Process(pid)
        self.interval_s = interval_s
        self.baseline = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _rss(self) -> int:
        total = 0
        for process in [self.process, *self.process.children(recursive=True)]:
            try:
                total += process.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval_s)

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.baseline) / MB

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


@pytest.fixture(scope="module")
def own_server(tiny_checkpoint, tmp_path_factory):
    """A fresh server, so the memory it grows by is this module's requests' alone."""
    live = start_server(tiny_checkpoint, tmp_path_factory.mktemp("limits-server"), MODEL_PROCESS="true")
    try:
        live.wait_for_health(200)
        yield live
    finally:
        live.stop()


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
    with PeakRss(own_server.process.pid) as all_frames:
        refused = _post(own_server, big_video, fps=10)  # 30 frames of 16.8 megapixels
    with PeakRss(own_server.process.pid) as half:
        answered = _post(own_server, big_video, fps=5)  # 15 frames: within the request's pixel budget
    size_kb = big_video.stat().st_size // 1024
    print(f"\n4096x4096 video of {size_kb} KB, peak RSS growth of server + model process: "
          f"{all_frames.growth_mb:.0f} MB for 30 frames ({refused.status_code}), "
          f"{half.growth_mb:.0f} MB for 15 frames ({answered.status_code})")  # fmt: skip
    assert all_frames.growth_mb <= 1024 and half.growth_mb <= 1024
    assert refused.status_code == 413, refused.text
    error = refused.json()["error"]
    assert error["code"] == "video_too_long"
    assert "megapixels" in error["message"] and "MAX_IMAGE_PIXELS" in error["message"] and "fps" in error["message"]
    assert answered.status_code == 200, answered.text
    frames = answered.json()["frames"]
    assert [f["frame_index"] for f in frames] == list(range(0, 30, 2))
    assert all(f["image_size"] == [4096, 4096] for f in frames)  # boxes are in the frame's own pixels
    assert all(0 <= v <= 4096 for f in frames for box in f["boxes"] for v in box)
    assert httpx.get(f"{own_server.url}/health", timeout=10).status_code == 200


def test_a_frame_over_max_image_pixels_is_refused_before_decoding(tiny_checkpoint, tmp_path):
    clip = make_big_video(tmp_path / "wide.mp4", image_wh=(2048, 1024), frames=3)
    live = start_server(tiny_checkpoint, tmp_path, MAX_IMAGE_PIXELS="1000000")
    try:
        live.wait_for_health(200)
        refused = _post(live, clip, fps=1)
    finally:
        live.stop()
    assert refused.status_code == 413
    error = refused.json()["error"]
    assert error["code"] == "image_too_large" and "2048x1024" in error["message"]
    assert "MAX_IMAGE_PIXELS" in error["message"]


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
