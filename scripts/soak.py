"""Soak a running Chord server: N requests at C concurrency, then report what a 30-day run would show.

    python scripts/soak.py --url http://127.0.0.1:7860 --requests 5000 --concurrency 8

Prints requests sent and answered, errors by type, the server's RSS (from its /health pid) at the
start (after --warmup requests, when given) and end, and the number of files in the temp
directories at the start and end. A mix of good and bad uploads is sent, so the error paths are
soaked too. Loopback only; bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil
from PIL import Image
from tqdm import tqdm


def uploads(seed: int = 0) -> list[tuple[str, bytes, str]]:
    """(name, bytes, prompt): mostly good images of several sizes and formats, some bad ones."""
    rng = random.Random(seed)
    items = []
    for i in range(24):
        w, h = rng.randint(16, 900), rng.randint(16, 900)
        image = Image.new("RGB", (w, h), tuple(rng.randint(0, 255) for _ in range(3)))
        buffer = io.BytesIO()
        fmt = ["PNG", "JPEG", "WEBP"][i % 3]
        image.save(buffer, fmt)
        items.append((f"good-{i}.{fmt.lower()}", buffer.getvalue(), rng.choice(["cat", "红色的圆形", "a; b"])))
    items += [
        ("empty.png", b"", "cat"),
        ("text.jpg", b"not an image at all", "cat"),
        ("doc.jpg", b"%PDF-1.7\n" + b"0" * 100, "cat"),
        ("good-long-prompt.png", items[0][1], "x" * 2000),
    ]
    return items


def temp_file_count(folders: list[Path]) -> int:
    return sum(len(files) for folder in folders if folder.exists() for _, _, files in os.walk(folder))


def server_rss(url: str) -> int | None:
    try:
        pid = httpx.get(f"{url}/health", timeout=5).json().get("pid")
        return psutil.Process(pid).memory_info().rss if pid else None
    except (httpx.HTTPError, psutil.Error, ValueError):
        return None


async def soak(url: str, total: int, concurrency: int, items: list) -> Counter:
    outcomes: Counter[str] = Counter()
    sent = 0
    progress = tqdm(total=total, unit="req", file=sys.stderr)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal sent
        while sent < total:
            name, data, prompt = items[sent % len(items)]
            sent += 1
            try:
                response = await client.post(
                    f"{url}/api/ground", files={"image": (name, data, "application/octet-stream")},
                    data={"prompt": prompt, "max_new_tokens": "16"},
                )  # fmt: skip
                if response.status_code == 200:
                    outcomes["200 ok"] += 1
                else:
                    outcomes[f"{response.status_code} {response.json()['error']['code']}"] += 1
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                outcomes[f"unanswered {type(exc).__name__}"] += 1
            progress.update()

    async with httpx.AsyncClient(timeout=300) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    progress.close()
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:7860")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=0, help="requests sent before the RSS baseline is taken")
    parser.add_argument("--temp-dir", action="append", default=[], help="extra folder to count files in")
    parser.add_argument("--out", default=None, help="also write the report as JSON here")
    args = parser.parse_args()
    url = args.url.rstrip("/")
    folders = [Path(tempfile.gettempdir()) / "gradio", *map(Path, args.temp_dir)]
    items = uploads()
    if args.warmup:
        asyncio.run(soak(url, args.warmup, args.concurrency, items))  # caches and allocator arenas fill up
    rss_start, files_start = server_rss(url), temp_file_count(folders)
    started = time.monotonic()
    outcomes = asyncio.run(soak(url, args.requests, args.concurrency, items))
    rss_end, files_end = server_rss(url), temp_file_count(folders)
    answered = sum(v for k, v in outcomes.items() if not k.startswith("unanswered"))
    report = {
        "requests_sent": args.requests,
        "answered": answered,
        "unanswered": args.requests - answered,
        "outcomes": dict(sorted(outcomes.items())),
        "seconds": round(time.monotonic() - started, 1),
        "rss_start_mb": None if rss_start is None else round(rss_start / 2**20, 1),
        "rss_end_mb": None if rss_end is None else round(rss_end / 2**20, 1),
        "rss_growth_pct": None if not (rss_start and rss_end) else round(100 * (rss_end - rss_start) / rss_start, 2),
        "temp_files_start": files_start,
        "temp_files_end": files_end,
    }
    for key, value in report.items():
        print(f"{key}: {value}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0 if report["unanswered"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
