"""A short clip grounded frame by frame, a chunk at a time: the video route's and the UI Video tab's way through."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import BinaryIO

import anyio

from app.grounding.options import GroundingOptions
from app.grounding.result import GroundingResult
from app.grounding.tiling import rescale_result
from app.service.frames import SampledFrame, frame_record, sample_frames
from app.service.service import GroundingService

# Decoded pixels held at once: about 150 MB of RGB frames (and what the processor makes of them); at least a frame.
CHUNK_PIXELS = 48_000_000

# A chunk of frames: each frame, its answer in pixels of the frame's (possibly smaller) image, and its record
# (frames.jsonl line, in the video's own pixels).
ChunkHandler = Callable[[list[tuple[SampledFrame, GroundingResult, dict]]], None]


async def ground_clip(
    service: GroundingService,
    media: BinaryIO,
    phrases: tuple[str, ...],
    fps: float,
    options: GroundingOptions,
    on_chunk: ChunkHandler | None = None,
    capped: bool = True,
) -> list[dict]:
    """Frame records of a clip (within the server's caps); the first frame that fails fails the request.

    Frames are decoded, grounded and let go a chunk at a time: at most MAX_BATCH_SIZE frames, and no more
    decoded pixels than CHUNK_PIXELS unless a single frame is that large. ``on_chunk`` (run
    off the event loop) sees each chunk's frames before they are let go. Boxes come back in pixels of the
    frames as the video holds them.
    """
    settings = service.settings
    if capped:  # a client's clip; the command line's own files have no length cap
        caps = (settings.video_max_seconds, settings.video_max_frames, settings.max_image_pixels, service.fit,
                settings.max_request_pixels)  # fmt: skip
    else:
        caps = (None, None, None, service.fit, None)
    frames = sample_frames(media, fps, *caps)
    take = functools.partial(_next_chunk, frames, settings.max_batch_size, CHUNK_PIXELS)
    records: list[dict] = []
    try:
        while True:
            grounded = await _ground_chunk(service, take, phrases, options, on_chunk)
            if grounded is None:
                break
            records += grounded
    finally:
        await anyio.to_thread.run_sync(frames.close)
    return records


async def _ground_chunk(service, take, phrases, options, on_chunk) -> list[dict] | None:
    """The next chunk's frame records (None when no frame is left); its images are let go on return."""
    chunk = await anyio.to_thread.run_sync(take)
    if not chunk:
        return None
    outcomes = await service.ground_many([f.image for f in chunk], phrases, options)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    records = [
        frame_record(frame, rescale_result(outcome, frame.image_wh).to_dict())
        for frame, outcome in zip(chunk, outcomes, strict=True)
    ]
    if on_chunk is not None:
        await anyio.to_thread.run_sync(on_chunk, list(zip(chunk, outcomes, records, strict=True)))
    return records


def _next_chunk(frames: Iterator[SampledFrame], max_frames: int, max_pixels: int) -> list[SampledFrame]:
    """Up to ``max_frames`` frames holding at most ``max_pixels`` pixels (always one, if any is left)."""
    chunk: list[SampledFrame] = []
    pixels = 0
    for frame in frames:
        chunk.append(frame)
        pixels += frame.image.width * frame.image.height
        if len(chunk) == max_frames or pixels + pixels // len(chunk) > max_pixels:
            break
    return chunk
