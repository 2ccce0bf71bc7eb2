"""Replicas behind nginx: Debian's nginx with the project's config over two real Chord servers.

Requests are spread over both replicas; a ``kill -9`` of one loses no request (nginx resends the
ones that replica had, grounding being side-effect free), and the other keeps answering.
Counts and nginx's own log lines are printed (pytest -s shows them).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from live_server import PROJECT_ROOT, free_port, start_server

pytestmark = [pytest.mark.slow, pytest.mark.nginx]

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def served(replica_url: str) -> int:
    """POST /api/ground answered 200 by this replica, from its own /metrics."""
    text = httpx.get(f"{replica_url}/metrics", timeout=5).text
    match = re.search(r'^chord_requests_total\{endpoint="/api/ground",status="200"\} (\S+)$', text, re.MULTILINE)
    return int(float(match.group(1))) if match else 0


@pytest.fixture(scope="module")
def replicas(tiny_checkpoint, tmp_path_factory):
    live = [start_server(tiny_checkpoint, tmp_path_factory.mktemp(f"replica-{i}")) for i in range(2)]
    try:
        for server in live:
            server.wait_for_health(200)
        yield live
    finally:
        for server in live:
            if server.process.poll() is None:
                server.stop()


@pytest.fixture(scope="module")
def nginx(replicas, tmp_path_factory):
    prefix = tmp_path_factory.mktemp("nginx")
    port = free_port()
    conf = prefix / "nginx.conf"
    ports = [server.url.rsplit(":", 1)[1] for server in replicas]
    replica_args = [arg for p in ports for arg in ("--replica", f"127.0.0.1:{p}")]
    render = [sys.executable, str(PROJECT_ROOT / "scripts" / "render_nginx_conf.py"), "--standalone", str(prefix)]
    subprocess.run([*render, "--listen", f"127.0.0.1:{port}", *replica_args, "-o", str(conf)], check=True)
    process = subprocess.Popen(
        [NGINX, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL, stderr=(prefix / "stderr.log").open("wb"),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, (prefix / "stderr.log").read_text()
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "nginx did not answer"
            time.sleep(0.2)
        yield url, prefix
    finally:
        process.terminate()
        process.wait(timeout=15)


def ground(url: str, image: bytes, prompt: str = "the red square") -> int:
    files = {"image": ("sample.png", image, "image/png")}
    return httpx.post(f"{url}/api/ground", files=files, data={"prompt": prompt}, timeout=120).status_code


def test_requests_are_spread_over_both_replicas(nginx, replicas, sample_png):
    url, _ = nginx
    image = Path(sample_png).read_bytes()
    before = [served(r.url) for r in replicas]
    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = list(pool.map(lambda i: ground(url, image, f"thing {i}"), range(16)))
    after = [served(r.url) for r in replicas]
    counts = [a - b for a, b in zip(after, before, strict=True)]
    print(f"\n16 requests through nginx: {statuses.count(200)} x 200; per replica: {counts}")
    assert statuses == [200] * 16
    assert sum(counts) == 16 and all(c > 0 for c in counts), counts


def test_kill_9_of_one_replica_loses_no_request(nginx, replicas, sample_png):
    url, prefix = nginx
    image = Path(sample_png).read_bytes()
    victim, survivor = replicas
    stop = threading.Event()
    statuses: list[int | str] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        i = 0
        while not stop.is_set():
            try:
                status: int | str = ground(url, image, f"client {n} request {i}")
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            with lock:
                statuses.append(status)
            i += 1

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while len(statuses) < 8:  # load is flowing to both replicas
        assert time.monotonic() < deadline
        time.sleep(0.05)
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait(timeout=10)
    at_kill = len(statuses)
    while len(statuses) < at_kill + 24:  # keep sending while nginx finds out
        assert time.monotonic() < deadline + 60, statuses
        time.sleep(0.05)
    stop.set()
    for thread in threads:
        thread.join(timeout=130)

    after = [ground(url, image, f"after {i}") for i in range(6)]
    victim_port = victim.url.rsplit(":", 1)[1]
    retried = [line for line in (prefix / "logs" / "chord.access.log").read_text().splitlines() if ", " in line]
    errors = [line for line in (prefix / "logs" / "error.log").read_text().splitlines() if victim_port in line]
    seen = sorted(set(map(str, statuses)))
    print(f"\nkill -9 of replica :{victim_port} after {at_kill} requests; {len(statuses)} sent in all; "
          f"statuses: {seen}; retried on the other replica: {len(retried)}; afterwards: {after}")  # fmt: skip
    for line in retried[:3] + errors[:3]:
        print("  " + re.sub(r"^\S+ \S+ \S+ \S+ ", "", line)[:220])
    assert statuses and all(s == 200 for s in statuses), statuses
    assert after == [200] * 6
    assert survivor.process.poll() is None
