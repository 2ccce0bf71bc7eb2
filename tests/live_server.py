"""Start the real server (``python -m app serve``) as a subprocess on a free port, for tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class PeakRss:
    """Samples the summed RSS of a process and its children (the model process) every 50 ms in a ``with`` block."""

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
        return (self.peak - self.baseline) / 2**20

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    """A running ``python -m app serve``; ``health_seen`` holds every /health status polled at start-up."""

    process: subprocess.Popen
    url: str
    log_path: Path
    health_seen: list[int] = field(default_factory=list)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for_health(self, wanted: int = 200, timeout_s: float = 180, loading_ok: bool = False) -> dict:
        """Poll /health until it answers ``wanted`` (with ``loading_ok``, the first answer while loading will do)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                response = httpx.get(f"{self.url}/health", timeout=5)
            except httpx.TransportError:
                time.sleep(0.1)
                continue
            self.health_seen.append(response.status_code)
            if response.status_code == wanted and (loading_ok or response.json()["status"] != "loading"):
                return response.json()
            time.sleep(0.1)
        raise TimeoutError(f"/health did not answer {wanted} within {timeout_s} s:\n{self.log()}")

    @property
    def serving_pid(self) -> int:
        """The serving process's pid (/health's): ``process`` is its keeper, which forked it."""
        return httpx.get(f"{self.url}/health", timeout=5).json()["pid"]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)


def start_server(model_path: str, log_dir: Path, **env: str) -> LiveServer:
    port = free_port()
    log_path = log_dir / f"server-{port}.log"
    environ = {
        **os.environ,
        "MODEL_PATH": model_path,
        "DEVICE": "cpu",
        "MAX_NEW_TOKENS": "24",
        "MAX_PIXELS": "50176",
        "HF_HUB_OFFLINE": "1",
        "GRADIO_TEMP_DIR": str(log_dir / "gradio"),
        **env,
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--port", str(port)],
            cwd=PROJECT_ROOT,
            env=environ,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return LiveServer(process=process, url=f"http://127.0.0.1:{port}", log_path=log_path)


@contextlib.contextmanager
def running_server(model_path: str, log_dir: Path, wanted: int = 200, **env: str) -> Iterator[LiveServer]:
    """``start_server``, waited for until /health answers ``wanted``, stopped on leaving the block."""
    live = start_server(model_path, log_dir, **env)
    try:
        live.wait_for_health(wanted)
        yield live
    finally:
        live.stop()
