"""``python -m app video``: sample a video's frames, ground them in batches, write frames.jsonl (+ MP4)."""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from app.batch.in_process import InProcessService
from app.batch.jsonl import JsonlWriter
from app.grounding.drawing import annotate
from app.grounding.options import GroundingOptions
from app.grounding.result import GroundingResult
from app.service.clips import ground_clip
from app.service.frames import AnnotatedVideo, SampledFrame

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
    chord: InProcessService,
    video_path: str | Path,
    phrases: tuple[str, ...],
    out_dir: str | Path,
    *,
    fps: float,
    annotated: bool = False,
    options: GroundingOptions | None = None,
) -> VideoSummary:
    """Write ``out_dir/frames.jsonl`` (replacing an earlier one) and, with ``annotated``, ``annotated.mp4``.

    The frames go through the grounding service as the video route's do, a chunk at a time, without
    the server's length caps; each chunk's lines are written as it is answered.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / FRAMES_NAME).unlink(missing_ok=True)
    summary = VideoSummary()
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(tqdm(unit="frame", file=sys.stderr, dynamic_ncols=True))
        writer = stack.enter_context(JsonlWriter(out_dir / FRAMES_NAME))
        video = stack.enter_context(AnnotatedVideo(out_dir / ANNOTATED_NAME, fps)) if annotated else None
        media = stack.enter_context(open(video_path, "rb"))

        def record_chunk(chunk: list[tuple[SampledFrame, GroundingResult, dict]]) -> None:
            for frame, result, record in chunk:
                writer.write(record)
                summary.frames += 1
                summary.boxes += len(record.get("boxes", []))
                if video is not None:
                    video.add(annotate(frame.image, result))
            bar.update(len(chunk))

        clip = ground_clip(
            chord.service, media, phrases, fps, options or GroundingOptions(), record_chunk, capped=False
        )
        chord.run(clip)
    summary.seconds = time.perf_counter() - started
    return summary
