"""The UI's Batch and Video tabs: many images or a short clip, one phrase, results to look at and download."""

from __future__ import annotations

import json
import logging
import tempfile
import zipfile
from pathlib import Path

import anyio
import gradio as gr
from PIL import Image

from app.batch.coco import to_coco
from app.batch.files import IMAGE_EXTENSIONS
from app.batch.runner import image_record
from app.batch.video import AnnotatedVideo
from app.drawing import draw_result
from app.errors import ChordError, InvalidImage, InvalidRequest
from app.fonts import label_font
from app.options import GroundingOptions
from app.server.errors import MissingImage, as_chord_error
from app.server.records import RequestRecord
from app.server.routes_video import ground_clip
from app.server.service import GroundingService
from app.uploads import UploadLimits, decode_upload

logger = logging.getLogger(__name__)

MAX_ZIP_MEMBER_BYTES = 64 * 1024 * 1024
THUMBNAIL_WH = (480, 480)

# Gradio runs each event listener one call at a time unless told otherwise. Grounding events go
# straight to the batching scheduler instead: it forms the batches, and refuses with "busy" when
# its queue is full, for UI and REST callers alike.
SCHEDULER_DECIDES = {"concurrency_limit": None}


class MediaUI:
    """Handlers of the Batch and Video tabs, reaching the model only through the service."""

    def __init__(self, service: GroundingService):
        self.service = service

    async def ground_batch(self, files: list[str] | None, phrase: str) -> tuple[list, list[str], str]:
        """Ground the phrase(s) in every image (or every image of a zip); gallery, [JSONL, COCO], summary."""
        record = RequestRecord(endpoint="gradio:/ground_batch")
        try:
            phrases = self.service.phrases(phrase, record)
            named = await anyio.to_thread.run_sync(_read_uploads, files or [])
            if not named:
                raise MissingImage("Add images first: several image files, or a zip of them.")
            limit = self.service.settings.max_queue
            if len(named) > limit:
                raise InvalidRequest(f"At most MAX_QUEUE={limit} images at once; got {len(named)}.")
            limits = UploadLimits(self.service.settings.max_upload_bytes, self.service.settings.max_image_pixels)
            decoded = await anyio.to_thread.run_sync(_decode_all, named, limits)
            readable = [image for _, image in decoded if not isinstance(image, ChordError)]
            outcomes = iter(await self.service.ground_many(readable, phrases, GroundingOptions()))
            records, gallery = [], []
            for name, image in decoded:
                outcome = image if isinstance(image, ChordError) else next(outcomes)
                result = as_chord_error(outcome).to_dict() if isinstance(outcome, BaseException) else outcome.to_dict()
                records.append(image_record(name, phrases, result))
                if not isinstance(image, ChordError) and "error" not in result:
                    caption = f"{name} · {len(result['boxes'])} boxes"
                    gallery.append((_thumbnail(_annotate(image, records[-1])), caption))
            downloads = await anyio.to_thread.run_sync(_write_exports, records, phrases)
        except ChordError as exc:
            record.finish(self.service.metrics, exc.status, exc.code)
            raise gr.Error(exc.message, title="Could not ground") from None
        failures = sum("error" in r for r in records)
        boxes = sum(len(r.get("boxes", [])) for r in records)
        record.boxes = boxes
        record.finish(self.service.metrics, 200)
        failed = "".join(f"\n{r['path']}: {r['error']['message']}" for r in records if "error" in r)
        return gallery, downloads, f"{len(records)} images, {boxes} boxes, {failures} failures{failed}"

    async def ground_video(self, video: str | None, phrase: str, fps: float) -> tuple[str, list, str, str]:
        """Ground the phrase(s) in a short clip's frames; annotated MP4, frames, frames.jsonl, summary."""
        record = RequestRecord(endpoint="gradio:/ground_video")
        try:
            phrases = self.service.phrases(phrase, record)
            if not video:
                raise MissingImage("Add a video first.")
            images: list[Image.Image] = []
            frames = await ground_clip(self.service, str(video), phrases, float(fps), keep_images=images)
            paths = await anyio.to_thread.run_sync(_write_video_outputs, frames, images, float(fps))
        except ChordError as exc:
            record.finish(self.service.metrics, exc.status, exc.code)
            raise gr.Error(exc.message, title="Could not ground") from None
        record.boxes = sum(len(f["boxes"]) for f in frames)
        record.finish(self.service.metrics, 200)
        return paths[0], frames, paths[1], f"{len(frames)} frames at {fps:g} fps, {record.boxes} boxes"


def _read_uploads(files: list[str]) -> list[tuple[str, bytes]]:
    """(name, bytes) of every uploaded image, a zip's images included (read in memory, never extracted)."""
    named: list[tuple[str, bytes]] = []
    for file in files:
        path = Path(file)
        if path.suffix.lower() != ".zip":
            named.append((path.name, path.read_bytes()))
            continue
        try:
            with zipfile.ZipFile(path) as archive:
                for member in sorted(archive.infolist(), key=lambda m: m.filename):
                    if member.is_dir() or Path(member.filename).suffix.lower() not in IMAGE_EXTENSIONS:
                        continue
                    if member.file_size > MAX_ZIP_MEMBER_BYTES:
                        raise InvalidImage(f"{member.filename} in {path.name} is larger than 64 MiB")
                    named.append((f"{path.name}/{member.filename}", archive.read(member)))
        except zipfile.BadZipFile:
            raise InvalidImage(f"{path.name} is not a zip file Chord can read") from None
    return named


def _decode_all(named: list[tuple[str, bytes]], limits: UploadLimits) -> list[tuple[str, Image.Image | ChordError]]:
    """Each upload checked and decoded like any other (app/uploads.py); failures stay per item."""
    decoded: list[tuple[str, Image.Image | ChordError]] = []
    for name, data in named:
        try:
            decoded.append((name, decode_upload(data, limits).image))
        except ChordError as exc:
            decoded.append((name, exc))
    return decoded


def _annotate(image: Image.Image, record: dict) -> Image.Image:
    font = label_font(max(12, min(image.size) // 30))
    return draw_result(image, record["boxes"], record["labels"], record["scores"], font=font)


def _thumbnail(image: Image.Image) -> Image.Image:
    image.thumbnail(THUMBNAIL_WH)
    return image


def _write_exports(records: list[dict], phrases: tuple[str, ...]) -> list[str]:
    folder = Path(tempfile.mkdtemp(prefix="chord-batch-"))
    jsonl = folder / "results.jsonl"
    jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    coco = folder / "coco.json"
    coco.write_text(json.dumps(to_coco(records, phrases), ensure_ascii=False), encoding="utf-8")
    return [str(jsonl), str(coco)]


def _write_video_outputs(frames: list[dict], images: list[Image.Image], fps: float) -> tuple[str, str]:
    folder = Path(tempfile.mkdtemp(prefix="chord-video-"))
    with AnnotatedVideo(folder / "annotated.mp4", fps) as video:
        for frame, image in zip(frames, images, strict=True):
            video.add(_annotate(image, frame))
    jsonl = folder / "frames.jsonl"
    jsonl.write_text("".join(json.dumps(f, ensure_ascii=False) + "\n" for f in frames), encoding="utf-8")
    return str(folder / "annotated.mp4"), str(jsonl)


def build_batch_tab(service: GroundingService) -> None:
    ui = MediaUI(service)
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            files = gr.File(
                label="Images, or a zip of images",
                file_count="multiple",
                file_types=["image", ".zip"],
                elem_id="chord-batch-files",
            )
            phrase = gr.Textbox(label="What to find", placeholder="e.g. glass bottle with a gold label", lines=1,
                                elem_id="chord-batch-phrase")  # fmt: skip
            button = gr.Button("Find in all", variant="primary", elem_id="chord-batch-go")
            summary = gr.Textbox(label="Summary", interactive=False, lines=2, elem_id="chord-batch-summary")
            downloads = gr.File(label="results.jsonl and COCO", file_count="multiple", interactive=False,
                                elem_id="chord-batch-downloads")  # fmt: skip
        with gr.Column(scale=2):
            gallery = gr.Gallery(label="Images with boxes", columns=3, object_fit="contain", height=560,
                                 elem_id="chord-batch-gallery")  # fmt: skip
    gr.on(
        triggers=[button.click, phrase.submit],
        fn=ui.ground_batch,
        inputs=[files, phrase],
        outputs=[gallery, downloads, summary],
        api_name="ground_batch",
        api_description="Find the phrase(s) in several images (or a zip of them); returns annotated images, "
        "results.jsonl and a COCO file, and a summary.",
        **SCHEDULER_DECIDES,
    )


def build_video_tab(service: GroundingService) -> None:
    ui = MediaUI(service)
    settings = service.settings
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            video = gr.Video(label=f"A short video (at most {settings.video_max_seconds:g} s)", sources=["upload"],
                             elem_id="chord-video-in")  # fmt: skip
            phrase = gr.Textbox(label="What to find", placeholder="e.g. the forklift", lines=1,
                                elem_id="chord-video-phrase")  # fmt: skip
            fps = gr.Slider(0.2, 10, value=1, step=0.1, label="Frames per second to ground")
            button = gr.Button("Find in every frame", variant="primary", elem_id="chord-video-go")
            summary = gr.Textbox(label="Summary", interactive=False, elem_id="chord-video-summary")
        with gr.Column(scale=1):
            annotated = gr.Video(label="Sampled frames with boxes", interactive=False, elem_id="chord-video-out")
            download = gr.File(label="frames.jsonl", interactive=False, elem_id="chord-video-download")
            frames = gr.JSON(label="Frames", height=320, elem_id="chord-video-json")
    gr.on(
        triggers=[button.click, phrase.submit],
        fn=ui.ground_video,
        inputs=[video, phrase, fps],
        outputs=[annotated, frames, download, summary],
        api_name="ground_video",
        api_description="Find the phrase(s) in a short video's frames sampled at fps; returns the annotated "
        "video, the frames (timestamp, boxes, labels, scores), frames.jsonl and a summary.",
        **SCHEDULER_DECIDES,
    )
