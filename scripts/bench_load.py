"""Load benchmark over the real HTTP API: batched server vs the naive one, side by side.

    python scripts/bench_load.py --model /path/to/checkpoint --clients 16 --requests 160
    python scripts/bench_load.py --url http://127.0.0.1:7860 --clients 16 --duration 30

With ``--model`` it starts the server twice on free local ports (MAX_BATCH_SIZE as given, then
MAX_BATCH_SIZE=1: the naive one-at-a-time server), applies the same load to each and prints
req/s, p50/p95/p99 latency, errors by type, the server's own overhead over the engine's time
(sequential requests: client latency minus the result's latency_ms) and the throughput ratio.
Each row also says how the server spent the load: the mean batch and, with continuous batching,
the mean number of rows decoded together (both from ``/metrics``); for servers it started, the
CPU time per request of the server process and of its children (the model process when
``MODEL_PROCESS`` is on), and the load generator's own. The clients send request bodies encoded
once up front (multipart form: the PNG and the prompt), so on a machine shared with the server
the load generator takes as little of its CPU as it can. With ``--url`` it measures one running
server. Writes everything to ``--out`` as JSON.
Only loopback addresses are used; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil
from PIL import Image, ImageDraw
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
PHRASES = ["the red circle", "the blue square", "红色的圆形", "all yellow triangles", "the green square"]


def make_images(count: int, seed: int = 0) -> list[bytes]:
    """Varied PNG scenes (sizes and colours), so batches mix image sizes as real traffic does."""
    rng = random.Random(seed)
    images = []
    for _ in range(count):
        w, h = rng.randint(160, 640), rng.randint(160, 640)
        image = Image.new("RGB", (w, h), tuple(rng.randint(110, 210) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        for _ in range(rng.randint(1, 3)):
            s = rng.randint(20, min(w, h) // 3)
            x, y = rng.randint(0, w - s), rng.randint(0, h - s)
            draw.ellipse((x, y, x + s, y + s), fill=tuple(rng.randint(0, 255) for _ in range(3)))
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        images.append(buffer.getvalue())
    return images


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def encode_bodies(images: list[bytes]) -> list[tuple[bytes, str]]:
    """``POST /api/ground`` bodies (multipart: an image and a phrase) and their content types, encoded once."""
    bodies = []
    for n in range(len(images) * len(PHRASES)):
        files = {"image": ("scene.png", images[n % len(images)], "image/png")}
        request = httpx.Request(
            "POST", "http://chord/api/ground", files=files, data={"prompt": PHRASES[n % len(PHRASES)]}
        )
        bodies.append((request.read(), request.headers["content-type"]))
    return bodies


async def one_request(client: httpx.AsyncClient, url: str, body: tuple[bytes, str]) -> tuple[float, float | None, str]:
    started = time.perf_counter()
    try:
        response = await client.post(f"{url}/api/ground", content=body[0], headers={"content-type": body[1]})
    except httpx.HTTPError as exc:
        return (time.perf_counter() - started) * 1000, None, type(exc).__name__
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        try:
            code = response.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = "unparsed"
        return elapsed, None, f"{response.status_code} {code}"
    return elapsed, float(response.json()["latency_ms"]), "ok"


async def run_load(url: str, clients: int, requests: int, duration: float, bodies: list[tuple[bytes, str]]) -> dict:
    """``clients`` concurrent clients, each sending back-to-back, until ``requests`` or ``duration``."""
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()
    sent = 0
    deadline = time.monotonic() + duration
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client_loop(client: httpx.AsyncClient, index: int) -> None:
        nonlocal sent
        while sent < requests and time.monotonic() < deadline:
            n = sent
            sent += 1
            elapsed, _, outcome = await one_request(client, url, bodies[n % len(bodies)])
            outcomes[outcome] += 1
            if outcome == "ok":
                latencies.append(elapsed)

    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        started, cpu_started = time.perf_counter(), time.process_time()
        await asyncio.gather(*(client_loop(client, i) for i in range(clients)))
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    ok = outcomes.get("ok", 0)
    return {
        "clients": clients,
        "sent": sent,
        "ok": ok,
        "errors": {k: v for k, v in outcomes.items() if k != "ok"},
        "wall_s": round(wall, 2),
        "req_per_s": round(ok / wall, 2) if wall else 0.0,
        "p50_ms": round(percentile(latencies, 50), 1),
        "p95_ms": round(percentile(latencies, 95), 1),
        "p99_ms": round(percentile(latencies, 99), 1),
        "client_cpu_ms_per_request": round(cpu * 1000 / ok, 2) if ok else None,
    }


async def measure_overhead(url: str, count: int, bodies: list[tuple[bytes, str]]) -> dict:
    """Sequential requests: how much the HTTP + server plumbing adds over the engine's own time."""
    overheads = []
    async with httpx.AsyncClient(timeout=300) as client:
        for n in range(count):
            elapsed, engine_ms, outcome = await one_request(client, url, bodies[(n * len(PHRASES)) % len(bodies)])
            if outcome == "ok" and engine_ms is not None:
                overheads.append(elapsed - engine_ms)
    return {"requests": len(overheads), "p50_ms": round(percentile(overheads, 50), 1)}


BATCH_TOTALS = ("chord_batch_size_sum", "chord_batch_size_count", "chord_decode_rows_sum", "chord_decode_rows_count")


def batch_totals(url: str) -> dict[str, float]:
    """The server's batch-size and rows-decoding histogram totals so far, from ``/metrics``."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    totals = dict.fromkeys(BATCH_TOTALS, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] = sample.value
    return totals


def mean_between(before: dict[str, float], after: dict[str, float], name: str) -> float | None:
    """Mean of histogram ``name`` over the observations made between two ``batch_totals``."""
    count = after[f"{name}_count"] - before[f"{name}_count"]
    return round((after[f"{name}_sum"] - before[f"{name}_sum"]) / count, 2) if count else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m app serve`` on a free loopback port, with extra settings in its environment."""

    def __init__(self, model: str, settings: dict[str, str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "MODEL_PATH": model, "HOST": "127.0.0.1", "PORT": str(self.port), **settings}
        env.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
        self.log = open(os.devnull, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen([sys.executable, "-m", "app", "serve"], cwd=ROOT, env=env,
                                        stdout=self.log, stderr=subprocess.STDOUT)  # fmt: skip

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the server was not ready within {timeout} s")

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU seconds used so far by the server process, and by its children (the model process)."""
        server = psutil.Process(self.process.pid)
        children = 0.0
        for child in server.children(recursive=True):
            try:
                times = child.cpu_times()
            except psutil.NoSuchProcess:
                continue
            children += times.user + times.system
        times = server.cpu_times()
        return times.user + times.system, children

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def bench_one(url: str, args, bodies: list[tuple[bytes, str]], server: Server | None = None) -> dict:
    asyncio.run(run_load(url, min(args.clients, 4), min(8, args.requests), args.duration, bodies))  # warm-up
    before = batch_totals(url)
    cpu_before = server.cpu_seconds() if server else None
    load = asyncio.run(run_load(url, args.clients, args.requests, args.duration, bodies))
    after = batch_totals(url)
    load["mean_batch"] = mean_between(before, after, "chord_batch_size")
    load["mean_rows_decoding"] = mean_between(before, after, "chord_decode_rows")
    if server and load["ok"]:
        cpu_after = server.cpu_seconds()
        load["server_cpu_ms_per_request"] = round((cpu_after[0] - cpu_before[0]) * 1000 / load["ok"], 2)
        load["children_cpu_ms_per_request"] = round((cpu_after[1] - cpu_before[1]) * 1000 / load["ok"], 2)
    return {"load": load, "overhead": asyncio.run(measure_overhead(url, args.overhead_requests, bodies))}


def print_row(name: str, result: dict) -> None:
    load, overhead = result["load"], result["overhead"]
    print(
        f"{name:<10} {load['req_per_s']:>8.2f} req/s  p50 {load['p50_ms']:>8.1f} ms  p95 {load['p95_ms']:>8.1f} ms"
        f"  p99 {load['p99_ms']:>8.1f} ms  ok {load['ok']}/{load['sent']}  errors {load['errors'] or 0}"
        f"  overhead p50 {overhead['p50_ms']:.1f} ms"
    )
    spent = f"{'':<10} mean batch {load['mean_batch']}"
    if load.get("mean_rows_decoding"):
        spent += f" (continuous: {load['mean_rows_decoding']} rows decoding together)"
    if "server_cpu_ms_per_request" in load:
        spent += (
            f"  CPU per request: server process {load['server_cpu_ms_per_request']:.1f} ms,"
            f" its children (the model process) {load['children_cpu_ms_per_request']:.1f} ms,"
            f" the load generator {load['client_cpu_ms_per_request']:.1f} ms"
        )
    print(spent)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--model", help="checkpoint: start batched and naive servers on it")
    target.add_argument("--url", help="measure this running server only")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=160, help="requests per phase")
    parser.add_argument("--duration", type=float, default=120, help="seconds per phase, at most")
    parser.add_argument("--overhead-requests", type=int, default=20)
    parser.add_argument(
        "--batch-size",
        default="12",
        help="MAX_BATCH_SIZE of the batched server (12: below the 16 clients, so a queue keeps the running"
        " batch full; the sweep is in docs/benchmarks.md)",
    )
    parser.add_argument("--server-env", action="append", default=[], help="extra KEY=VALUE for both servers")
    parser.add_argument("--out", default="bench_load.json")
    args = parser.parse_args()
    bodies = encode_bodies(make_images(32))
    report: dict = {"clients": args.clients, "requests": args.requests, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    if args.url:
        report["server"] = bench_one(args.url.rstrip("/"), args, bodies)
        print_row("server", report["server"])
    else:
        extra = dict(item.split("=", 1) for item in args.server_env)
        for name, batch_size in (("batched", args.batch_size), ("naive", "1")):
            server = Server(args.model, {**extra, "MAX_BATCH_SIZE": batch_size, "MAX_QUEUE": "1024"})
            try:
                server.wait_ready()
                report[name] = bench_one(server.url, args, bodies, server)
            finally:
                server.stop()
            print_row(name, report[name])
        batched, naive = report["batched"]["load"], report["naive"]["load"]
        report["throughput_ratio"] = round(batched["req_per_s"] / naive["req_per_s"], 2) if naive["req_per_s"] else None
        report["batched_p99_over_p50"] = round(batched["p99_ms"] / batched["p50_ms"], 2) if batched["p50_ms"] else None
        print(f"throughput ratio batched/naive: {report['throughput_ratio']}x")
        print(f"batched p99/p50: {report['batched_p99_over_p50']}")
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
