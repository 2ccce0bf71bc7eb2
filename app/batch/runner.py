"""``python -m app batch``: a folder in, ``results.jsonl`` (+ annotated images, COCO) out, resumable.

Images are read, grounded and recorded one chunk at a time; each result line is complete and
synced before the next chunk starts, so an interrupted run loses at most the chunk in flight and
a re-run with the same output folder skips every image already recorded.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from app.batch.files import find_images
from app.batch.jsonl import JsonlWriter, read_records
from app.grounding.coco import to_coco
from app.grounding.drawing import annotate
from app.grounding.options import GroundingOptions
from app.grounding.records import image_record
from app.grounding.result import GroundingResult
from app.service.images import open_image

logger = logging.getLogger(__name__)

RESULTS_NAME = "results.jsonl"
ANNOTATED_DIR = "annotated"


class Grounder(Protocol):
    """Grounds image files; one result or error dict per file, in order (app/batch/grounders.py)."""

    def ground(self, phrases: tuple[str, ...], paths: Sequence[Path], options: GroundingOptions) -> list[dict]: ...

    def close(self) -> None: ...


@dataclass
class BatchSummary:
    """What one run did; ``skipped`` were already in results.jsonl from an earlier run."""

    images: int = 0
    skipped: int = 0
    boxes: int = 0
    failures: int = 0
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (
            f"{self.images} images ({self.skipped} already done), {self.boxes} boxes, {self.failures} failures, "
            f"{self.seconds:.1f} s, {self.images_per_s:.2f} images/s"
        )


def run_batch(
    input_dir: str | Path,
    phrases: tuple[str, ...],
    out_dir: str | Path,
    grounder: Grounder,
    *,
    batch_size: int,
    recursive: bool = False,
    annotated: bool = False,
    coco_path: str | Path | None = None,
    options: GroundingOptions | None = None,
) -> BatchSummary:
    """Ground every image of ``input_dir`` not yet in ``out_dir/results.jsonl``; progress bar on stderr."""
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    input_dir, out_dir = Path(input_dir), Path(out_dir)
    paths = find_images(input_dir, recursive)
    results_path = out_dir / RESULTS_NAME
    done = recorded_paths(results_path, phrases)
    todo = [p for p in paths if _rel(p, input_dir) not in done]
    summary = BatchSummary(skipped=len(paths) - len(todo))
    started = time.perf_counter()
    bar = tqdm(total=len(paths), initial=summary.skipped, unit="img", file=sys.stderr, dynamic_ncols=True)
    try:
        with JsonlWriter(results_path) as writer:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                results = grounder.ground(phrases, chunk, options or GroundingOptions())
                for path, result in zip(chunk, results, strict=True):
                    record = image_record(_rel(path, input_dir), phrases, result)
                    writer.write(record)
                    summary.images += 1
                    summary.boxes += len(record.get("boxes", []))
                    summary.failures += "error" in record
                    if "error" in record:
                        logger.warning("skipped %s: %s", path, record["error"]["message"])
                    elif annotated:
                        _save_annotated(path, result, out_dir / ANNOTATED_DIR / _rel(path, input_dir))
                bar.update(len(chunk))
                bar.set_postfix(boxes=summary.boxes, failures=summary.failures, refresh=False)
    finally:
        bar.close()
        summary.seconds = time.perf_counter() - started
    if coco_path is not None:
        write_json_atomic(coco_path, to_coco(read_records(results_path), phrases))
    return summary


def recorded_paths(results_path: str | Path, phrases: tuple[str, ...]) -> set[str]:
    """Paths already in ``results_path``; ValueError when it holds results for other phrases."""
    results_path = Path(results_path)
    records = read_records(results_path)
    for record in records:
        if tuple(record.get("phrases", ())) != tuple(phrases):
            raise ValueError(
                f"{results_path} holds results for other phrases ({record.get('phrases')}); "
                "use another --out folder, or the same phrases to resume"
            )
    return {record["path"] for record in records if "path" in record}


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _save_annotated(path: Path, result: dict, target: Path) -> None:
    drawn = annotate(open_image(path), GroundingResult.from_dict(result))
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix.lower() in (".jpg", ".jpeg"):
        drawn.save(target, quality=90)
    else:
        drawn.save(target)


def write_json_atomic(path: str | Path, data: dict) -> None:
    """Write JSON to a temporary file beside ``path`` and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        json.dump(data, handle, ensure_ascii=False)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
