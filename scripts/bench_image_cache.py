"""Repeat questions about one image, with and without the image cache (IMAGE_CACHE_MB), in one process.

    python scripts/bench_image_cache.py                 # tiny checkpoint, 1280 visual tokens allowed
    python scripts/bench_image_cache.py --model demo --rounds 2

One client asks eight questions about one 1024x768 image, then eight questions about eight
different 1024x768 images, one at a time, through Chord's batching scheduler (continuous batching,
the model in this process), with the cache off and on (two engines, taking turns). Every round uses images not seen
before, so a round's first question about its image is a miss. It prints the time of each case, the
ratio (eight different images over one image) with the cache and without, the cache's hits and
misses, whether every answer with the cache is the answer without it (its text: the same tokens), and
the largest difference of a box score (the question's prefill runs with other matrix shapes, so a
score may differ in its last digits).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.engine.base import GroundingRequest  # noqa: E402
from app.engine.tiny_checkpoint import TinyShape, build_tiny_checkpoint  # noqa: E402
from app.engine.transformers_engine import TransformersEngine  # noqa: E402
from app.service.scheduler import BatchScheduler  # noqa: E402
from app.settings import PIXELS_PER_VISUAL_TOKEN, load_settings  # noqa: E402

QUESTIONS = (
    "the red circle", "a blue square", "the green triangle", "the largest shape", "the dog on the left",
    "a yellow star", "the small purple circle", "the object in the top right corner",
)  # fmt: skip


def images(rng: np.random.Generator, count: int, image_wh: tuple[int, int]) -> list[Image.Image]:
    return [Image.fromarray(rng.integers(0, 256, (image_wh[1], image_wh[0], 3), dtype=np.uint8)) for _ in range(count)]


def load(model_path: str, cache_mb: int, tokens: int) -> tuple[TransformersEngine, BatchScheduler]:
    settings = load_settings(
        model_path=model_path, device="cpu", model_process=False, image_cache_mb=cache_mb, max_new_tokens=tokens,
        max_pixels=1280 * PIXELS_PER_VISUAL_TOKEN,
    )  # fmt: skip
    engine = TransformersEngine.load(settings)
    return engine, BatchScheduler(engine, max_batch_size=8, max_batch_wait_ms=0, continuous=True)


def ask(scheduler: BatchScheduler, pictures: list[Image.Image]) -> tuple[float, list]:
    """Seconds for one client to ask ``QUESTIONS`` in turn, one per picture; the answers (text and scores)."""
    answers = []
    started = time.perf_counter()
    for picture, question in zip(pictures, QUESTIONS, strict=True):
        result = scheduler.ground(GroundingRequest(picture, (question,)))
        answers.append((result.text, result.scores))
    return time.perf_counter() - started, answers


def bench(model_path: str, cache_mb: int, rounds: int, tokens: int, image_wh: tuple[int, int]) -> dict:
    """Both engines loaded; each round runs every case off then on, so both see the same machine."""
    runs = {"off": load(model_path, 0, tokens), "on": load(model_path, cache_mb, tokens)}
    seconds = {(run, case): 0.0 for run in runs for case in ("one image", "eight images")}
    answers: dict[str, list] = {run: [] for run in runs}
    rng = np.random.default_rng(0)
    try:
        warm = images(rng, 1, image_wh)[0]
        for _, scheduler in runs.values():
            scheduler.ground(GroundingRequest(warm, ("warm-up",)))
        for _ in range(rounds):
            cases = {"one image": images(rng, 1, image_wh) * len(QUESTIONS),
                     "eight images": images(rng, len(QUESTIONS), image_wh)}  # fmt: skip
            for case, pictures in cases.items():
                for run, (_, scheduler) in runs.items():
                    took, said = ask(scheduler, pictures)
                    seconds[run, case] += took
                    answers[run] += said
        engine = runs["on"][0]
        visual = int(engine.prepare([GroundingRequest(warm, ("x",))]).inputs["image_grid_thw"][0].prod()) // 4
        counts = {stage: vars(c) for stage, c in engine.image_cache_counts().items()}
    finally:
        for engine, scheduler in runs.values():
            scheduler.stop()
            engine.close()
    return {"seconds": seconds, "answers": answers, "visual_tokens": visual, "counts": counts}


def largest_score_gap(pairs: list[tuple]) -> float:
    """The largest difference of one box's score between the two runs, over answers of the same text."""
    gaps = [abs(a - b) for on, off in pairs if on[0] == off[0]
            for a, b in zip(on[1], off[1], strict=True) if a is not None and b is not None]  # fmt: skip
    return max(gaps, default=0.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="a checkpoint directory or 'demo'; default: a tiny checkpoint")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of both cases (new images each round)")
    parser.add_argument("--tokens", type=int, default=16, help="MAX_NEW_TOKENS: most tokens per answer")
    parser.add_argument("--cache-mb", type=int, default=256, help="IMAGE_CACHE_MB of the cached run")
    parser.add_argument("--out", default="", help="also write the numbers to this JSON file")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="chord-bench-cache-"))
    try:
        model = args.model
        if not model:  # the tests' tiny checkpoint, its processor allowed 1280 visual tokens
            shape = TinyShape(max_pixels=1280 * PIXELS_PER_VISUAL_TOKEN)
            model = str(build_tiny_checkpoint(workdir / "tiny-1280", shape, seed=0, init_std=0.5))
        report = bench(model, args.cache_mb, args.rounds, args.tokens, (1024, 768))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    seconds = report["seconds"]
    pairs = list(zip(report["answers"]["on"], report["answers"]["off"], strict=True))
    same = all(on[0] == off[0] for on, off in pairs)
    score_gap = largest_score_gap(pairs)
    ratio = {run: seconds[run, "eight images"] / seconds[run, "one image"] for run in ("on", "off")}
    questions = args.rounds * len(QUESTIONS)
    print(
        f"model {args.model or 'tiny (1280 visual tokens allowed)'}: 1024x768 images, {report['visual_tokens']} "
        f"visual tokens, answers of at most {args.tokens} tokens, one client, {args.rounds} rounds of 8+8 questions"
    )
    for run in ("off", "on"):
        one, eight = (1000 * seconds[run, case] / questions for case in ("one image", "eight images"))
        print(f"cache {run:>3}: a question about one image {one:.1f} ms, about eight images {eight:.1f} ms")
    print(f"image cache counts: {report['counts']}")
    print(f"answers with the cache identical to those without: {same} ({len(pairs)} answers); "
          f"largest box score difference {score_gap:.4f}")  # fmt: skip
    print(f"ratio (eight images / one image): cache on {ratio['on']:.2f}x, cache off {ratio['off']:.2f}x")
    if args.out:
        out = {"ratio_cache_on": ratio["on"], "ratio_cache_off": ratio["off"], "identical_answers": same,
               "largest_score_difference": score_gap,
               "visual_tokens": report["visual_tokens"], "counts": report["counts"],
               "seconds": {f"{run} {case}": s for (run, case), s in seconds.items()}}  # fmt: skip
        Path(args.out).write_text(json.dumps(out, indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
