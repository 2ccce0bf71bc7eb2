"""COMPILE=false against COMPILE=true (torch.compile of the language model), in one process.

    python scripts/bench_compile.py                      # a tiny checkpoint on the CPU
    python scripts/bench_compile.py --model models/Qwen2.5-VL-7B-Instruct --device cuda

For each setting it loads the model as the server does (the model in this process, continuous
batching), then times the first request (compilation happens there), eight requests one after
another and eight at once (different images, so the image cache does not help), and prints them
with whether the answers of both settings are the same.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.engine.base import GroundingRequest  # noqa: E402
from app.engine.tiny_checkpoint import build_tiny_checkpoint  # noqa: E402
from app.engine.transformers_engine import TransformersEngine  # noqa: E402
from app.service.scheduler import BatchScheduler  # noqa: E402
from app.settings import load_settings  # noqa: E402


def run(model: str, device: str, compile_: bool, tokens: int) -> tuple[dict, list]:
    settings = load_settings(model_path=model, device=device, compile=compile_, model_process=False,
                             max_new_tokens=tokens, image_cache_mb=0)  # fmt: skip
    engine = TransformersEngine.load(settings)
    scheduler = BatchScheduler(engine, max_batch_size=8, max_batch_wait_ms=0, request_timeout_s=3600)
    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)) for _ in range(17)]
    answers, seconds = [], {}
    try:
        started = time.perf_counter()
        answers.append(scheduler.ground(GroundingRequest(pictures[0], ("the red circle",))).text)
        seconds["first request"] = time.perf_counter() - started
        started = time.perf_counter()
        answers += [scheduler.ground(GroundingRequest(p, ("a blue square",))).text for p in pictures[1:9]]
        seconds["8 one after another"] = time.perf_counter() - started
        started = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            requests = [GroundingRequest(p, ("the cat",)) for p in pictures[9:]]
            answers += [result.text for result in pool.map(scheduler.ground, requests)]
        seconds["8 at once"] = time.perf_counter() - started
    finally:
        scheduler.stop()
        engine.close()
    return seconds, answers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="a checkpoint directory; default: a tiny checkpoint")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="chord-bench-compile-"))
    try:
        model = args.model or str(build_tiny_checkpoint(folder / "tiny", seed=0, init_std=0.5))
        results = {flag: run(model, args.device, flag, args.tokens) for flag in (False, True)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    for flag, (seconds, _) in results.items():
        print(f"COMPILE={str(flag).lower():>5}: " + ", ".join(f"{name} {s:.2f} s" for name, s in seconds.items()))
    same = results[False][1] == results[True][1]
    print(f"answers the same with and without compile: {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
