"""Measure LARGE_IMAGE_MODE (off | refine | tiles) on big canvases of the demo domain.

    nice -n 10 python scripts/eval_large_images.py --n 40 --modes off,refine,tiles

Scenes: ``app.demo.big_scenes`` (3000-6000 px, 1-3 shapes of 150-400 px, seed 19), one asked shape
each, written as an eval cases file (``--cases-dir``). Each mode grounds them in this process through
the grounding service (as ``python -m app eval`` does) and reports: acc_iou50 (the top-scoring box
reaches IoU >= 0.5 with the asked shape), found (any box does), phantoms (boxes that overlap no shape at
all) and phantoms per 20 scenes, boxes on another shape, boxes per scene, and seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.batch.evaluation import load_cases, run_eval  # noqa: E402
from app.batch.grounders import ServiceGrounder  # noqa: E402
from app.batch.in_process import InProcessService  # noqa: E402
from app.demo.big_scenes import SEED, big_scene_rng, make_big_scene  # noqa: E402
from app.demo.scenes import pick_target  # noqa: E402
from app.grounding.evaluation import summarise  # noqa: E402
from app.grounding.geometry import iou  # noqa: E402
from app.grounding.options import GroundingOptions  # noqa: E402
from app.settings import load_settings  # noqa: E402


def write_scenes(n: int, start: int, seed: int, folder: Path) -> Path:
    """``n`` big scenes as PNGs and ``cases.jsonl`` (each line also lists every shape's box, for phantoms)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(start, start + n):
        rng = big_scene_rng(index, seed)
        scene = make_big_scene(rng)
        target = pick_target(rng, scene)
        name = f"images/big-{seed}-{index}.png"
        scene.image.save(folder / name, compress_level=1)
        shapes = [list(o.box) for o in scene.objects]
        lines.append({"id": f"big-{index}", "image": name, "phrase": target.phrase, "boxes": [list(target.box)],
                      "group": f"objects={len(shapes)}", "shapes": shapes})  # fmt: skip
    path = folder / "cases.jsonl"
    path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    return path


class Recording:
    """A grounder that keeps every answer by image path, for counting phantoms."""

    def __init__(self, inner):
        self.inner, self.answers = inner, {}

    def ground(self, phrases, paths, options):
        results = self.inner.ground(phrases, paths, options)
        self.answers.update({str(p): r for p, r in zip(paths, results, strict=True)})
        return results

    def close(self):
        self.inner.close()


def overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def measure(mode: str, cases_path: Path, settings_overrides: dict) -> dict:
    cases = load_cases(cases_path)
    shapes = {}
    for line in cases_path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        shapes[str((cases_path.parent / record["image"]).resolve())] = record["shapes"]
    settings = load_settings(large_image_mode=mode, tiling=False, **settings_overrides)
    grounder = Recording(ServiceGrounder(InProcessService(settings)))
    started = time.perf_counter()
    try:
        outcomes = run_eval(cases, grounder, GroundingOptions(), batch_size=settings.max_batch_size)
    finally:
        grounder.close()
    seconds = time.perf_counter() - started
    report = summarise(outcomes)
    found = phantoms = other = boxes = 0
    scores: dict[str, list] = {"right": [], "other_shape": [], "phantom": []}
    for case in cases:
        answer = grounder.answers[str(Path(case.image).resolve())]
        truth = case.boxes[0]
        found += any(iou(box, truth) >= 0.5 for box in answer.get("boxes", []))
        for box, score in zip(answer.get("boxes", []), answer.get("scores", []), strict=True):
            boxes += 1
            if not any(overlaps(box, shape) for shape in shapes[str(Path(case.image).resolve())]):
                phantoms += 1
                scores["phantom"].append(score)
            elif not overlaps(box, truth):
                other += 1
                scores["other_shape"].append(score)
            elif iou(box, truth) >= 0.5:
                scores["right"].append(score)
    n = len(cases)
    return {
        "mode": mode,
        "scenes": n,
        "acc_iou50": report["acc_iou50"],
        "found": round(found / n, 4),
        "phantoms": phantoms,
        "phantoms_per_20_scenes": round(20 * phantoms / n, 2),
        "boxes_on_other_shapes": other,
        "boxes_per_scene": round(boxes / n, 2),
        "mean_iou": report["mean_iou"],
        "seconds_per_scene": round(seconds / n, 2),
        "failures": [f["id"] for f in report["failures"]],
        "box_scores": {kind: sorted(v) for kind, v in scores.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=40, help="number of big scenes")
    parser.add_argument("--start", type=int, default=0, help="first scene index")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--modes", default="off,refine,tiles", help="comma-separated LARGE_IMAGE_MODE values")
    parser.add_argument("--model", default="demo", help="MODEL_PATH")
    parser.add_argument("--cases-dir", default=None, help="where the scenes are written (default: a temp dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    folder = Path(args.cases_dir or tempfile.mkdtemp(prefix="chord-large-"))
    cases_path = write_scenes(args.n, args.start, args.seed, folder)
    overrides = {"model_path": args.model, "device": "cpu", "max_new_tokens": 128, "log_level": "WARNING"}
    rows = [measure(mode, cases_path, overrides) for mode in args.modes.split(",")]
    print("| mode | acc_iou50 | found | phantoms (per 20 scenes) | boxes on other shapes | boxes/scene | s/scene |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        phantoms = f"{r['phantoms']} ({r['phantoms_per_20_scenes']})"
        print(f"| {r['mode']} | {r['acc_iou50']:.3f} | {r['found']:.3f} | {phantoms} | {r['boxes_on_other_shapes']} "
              f"| {r['boxes_per_scene']} | {r['seconds_per_scene']} |")  # fmt: skip
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
