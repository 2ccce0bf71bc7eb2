"""``python -m app video``: sample a video's frames, ground them in batches, write frames.jsonl (+ MP4)."""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from app.batch.jsonl import JsonlWriter
from app.batch.runner import Grounder
from app.grounding.drawing import draw_result
from app.grounding.fonts import label_font
from app.service.frames import AnnotatedVideo, frame_record, sample_frames

FRAMES_NAME = "frames.jsonl"
ANNOTATED_NAME = "annotated.mp4"


@dataclass
class VideoSummary:
    frames: int = 0
    boxes: int = 0
    failures: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        rate = self.frames / self.seconds if self.seconds > 0 else 0.0
        return (
            f"{self.frames} frames, {self.boxes} boxes, {self.failures} failures, "
            f"{self.seconds:.1f} s, {rate:.2f} frames/s"
        )


def run_video(
    video_path: str | Path,
    phrases: tuple[str, ...],
    out_dir: str | Path,
    grounder: Grounder,
    *,
    fps: float,
    batch_size: int,
    annotated: bool = False,
    max_new_tokens: int | None = None,
) -> VideoSummary:
    """Write ``out_dir/frames.jsonl`` (replacing an earlier one) and, with ``annotated``, ``annotated.mp4``."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / FRAMES_NAME).unlink(missing_ok=True)
    summary = VideoSummary()
    started = time.perf_counter()
    bar = tqdm(unit="frame", file=sys.stderr, dynamic_ncols=True)
    with contextlib.ExitStack() as stack:
        stack.callback(bar.close)
        writer = stack.enter_context(JsonlWriter(out_dir / FRAMES_NAME))
        video = stack.enter_context(AnnotatedVideo(out_dir / ANNOTATED_NAME, fps)) if annotated else None
        chunk = []
        for frame in sample_frames(video_path, fps):
            chunk.append(frame)
            if len(chunk) == batch_size:
                _ground_frames(chunk, phrases, grounder, max_new_tokens, writer, video, summary)
                bar.update(len(chunk))
                chunk = []
        if chunk:
            _ground_frames(chunk, phrases, grounder, max_new_tokens, writer, video, summary)
            bar.update(len(chunk))
    summary.seconds = time.perf_counter() - started
    return summary


def _ground_frames(chunk, phrases, grounder, max_new_tokens, writer, video, summary) -> None:
    results = grounder.ground(phrases, [(Path(f"frame-{f.frame_index}"), f.image) for f in chunk], max_new_tokens)
    for frame, result in zip(chunk, results, strict=True):
        record = frame_record(frame, result)
        writer.write(record)
        summary.frames += 1
        summary.boxes += len(record.get("boxes", []))
        summary.failures += "error" in record
        if video is not None:
            font = label_font(max(12, min(frame.image.size) // 30))
            labels = record.get("labels", [])
            video.add(draw_result(frame.image, record.get("boxes", []), labels, record.get("scores"), font=font))
