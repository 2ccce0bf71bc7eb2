"""Locust load test for a running Chord server (bounded and headless):

    locust -f scripts/locustfile.py --host http://127.0.0.1:7860 --headless -u 16 -r 4 -t 60s --exit-code-on-error 1

Each simulated user posts scenes to /api/ground back to back. A 503 "busy" (backpressure) counts
as a failure, so --exit-code-on-error 1 makes the run fail when the server refuses work.
The users are FastHttpUser (geventhttpclient): on a small machine the load generator shares the
cores with the server, and this client costs less CPU per request than HttpUser (requests).
"""

from __future__ import annotations

import sys
from pathlib import Path

from locust import FastHttpUser, constant, task

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_load import PHRASES, make_images  # noqa: E402

IMAGES = make_images(16)


class GroundingUser(FastHttpUser):
    wait_time = constant(0)

    def on_start(self) -> None:
        self.sent = 0

    @task
    def ground(self) -> None:
        n = self.sent
        self.sent += 1
        files = {"image": ("scene.png", IMAGES[n % len(IMAGES)], "image/png")}
        with self.client.post(
            "/api/ground", files=files, data={"prompt": PHRASES[n % len(PHRASES)]}, catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            elif "boxes" not in response.json():
                response.failure("no boxes field in the result")
