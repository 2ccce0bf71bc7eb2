"""The UI's Batch and Video tabs: many images or a short clip, one phrase, results to look at and download."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import anyio
import gradio as gr
from PIL import Image

from app.errors import ChordError, InvalidImage, InvalidRequest, MissingImage, PayloadTooLarge
from app.grounding.coco import to_coco
from app.grounding.drawing import annotate
from app.grounding.options import GroundingOptions
from app.grounding.records import image_record
from app.grounding.result import GroundingResult
from app.grounding.tiling import Fit
from app.service.clips import ground_clip
from app.service.frames import AnnotatedVideo, SampledFrame
from app.service.records import RequestRecord
from app.service.service import GroundingService
from app.service.uploads import IMAGE_EXTENSIONS, UploadLimits, decode_upload
from app.ui.texts import T
from app.ui.upload_cache import check_cached_file, upload_folder

logger = logging.getLogger(__name__)

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
            settings = self.service.settings
            limits = UploadLimits(settings.max_upload_bytes, settings.max_image_pixels)
            listed = await anyio.to_thread.run_sync(
                _list_uploads, files or [], settings.max_queue, limits, settings.max_batch_size
            )
            named = await anyio.to_thread.run_sync(_read_all, listed, limits)
            items = [(data, phrases) for _, data in named if isinstance(data, bytes)]
            outcomes = iter(await self.service.ground_uploads(items, GroundingOptions(), record.request_id))
            records, gallery = [], []
            for name, data in named:
                outcome = data if isinstance(data, ChordError) else next(outcomes)
                if isinstance(outcome, GroundingResult):
                    records.append(image_record(name, phrases, outcome.to_dict()))
                    thumbnail = await anyio.to_thread.run_sync(_thumbnail, data, limits, outcome)
                    gallery.append((thumbnail, f"{name} · {len(outcome.boxes)} boxes"))
                else:
                    records.append(image_record(name, phrases, outcome.to_dict(record.request_id)))
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
            folder = Path(tempfile.mkdtemp(prefix="chord-video-"))
            # The upload Gradio stored is opened here; FFmpeg only ever sees the file object.
            with open(video, "rb") as media, AnnotatedVideo(folder / "annotated.mp4", float(fps)) as annotated:
                on_chunk = functools.partial(_annotate_chunk, annotated)
                frames = await ground_clip(self.service, media, phrases, float(fps), GroundingOptions(), on_chunk)
            jsonl = folder / "frames.jsonl"
            lines = "".join(json.dumps(f, ensure_ascii=False) + "\n" for f in frames)
            await anyio.to_thread.run_sync(functools.partial(jsonl.write_text, lines, encoding="utf-8"))
        except ChordError as exc:
            record.finish(self.service.metrics, exc.status, exc.code)
            raise gr.Error(exc.message, title="Could not ground") from None
        record.boxes = sum(len(f["boxes"]) for f in frames)
        record.finish(self.service.metrics, 200)
        summary = f"{len(frames)} frames at {fps:g} fps, {record.boxes} boxes"
        return str(folder / "annotated.mp4"), frames, str(jsonl), summary


@dataclass(frozen=True)
class _Upload:
    """One image to read: an uploaded file, or a member of an uploaded zip (``member`` its name there)."""

    name: str
    path: Path
    member: str | None = None
    declared_bytes: int = 0


def _list_uploads(files: list[str], max_images: int, limits: UploadLimits, max_batch_size: int) -> list[_Upload]:
    """Every uploaded image, a zip's images from its central directory alone: counted and sized before any
    member is read (a few hundred KB of zip may unpack to gigabytes)."""
    listed: list[_Upload] = []
    for file in files:
        path = Path(file)
        if path.suffix.lower() != ".zip":
            listed.append(_Upload(path.name, path))
            continue
        try:
            with zipfile.ZipFile(path) as archive:
                members = sorted(archive.infolist(), key=lambda m: m.filename)
        except (zipfile.BadZipFile, OSError):
            raise InvalidImage(f"{path.name} is not a zip file Chord can read") from None
        for member in members:
            if member.is_dir() or Path(member.filename).suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            if member.file_size > limits.max_bytes:
                raise PayloadTooLarge(
                    f"{member.filename} in {path.name} unpacks to {member.file_size / 1e6:.1f} MB; the limit per "
                    f"image is {limits.max_bytes / 1e6:.1f} MB (MAX_UPLOAD_BYTES)"
                )
            listed.append(_Upload(f"{path.name}/{member.filename}", path, member.filename, member.file_size))
        if len(listed) > max_images:  # before the next zip's directory is even read
            break
    if not listed:
        raise MissingImage("Add images first: several image files, or a zip of them.")
    if len(listed) > max_images:
        raise InvalidRequest(f"At most MAX_QUEUE={max_images} images at once; got {len(listed)} or more.")
    total, most = sum(u.declared_bytes for u in listed), limits.max_bytes * max_batch_size
    if total > most:
        raise PayloadTooLarge(
            f"the zip files unpack to {total / 1e6:.1f} MB; the limit is {most / 1e6:.1f} MB "
            "(MAX_UPLOAD_BYTES x MAX_BATCH_SIZE): send fewer or smaller images"
        )
    return listed


def _read_all(listed: list[_Upload], limits: UploadLimits) -> list[tuple[str, bytes | ChordError]]:
    """Each upload's bytes, read one at a time in memory (a zip is never extracted); failures stay per item."""
    named: list[tuple[str, bytes | ChordError]] = []
    folder = upload_folder()
    with contextlib.ExitStack() as stack:
        archives: dict[Path, zipfile.ZipFile] = {}
        for upload in listed:
            try:
                path = check_cached_file(str(upload.path), folder)
                if upload.member is None:
                    data = _read_capped(path, limits.max_bytes)
                else:
                    if path not in archives:
                        archives[path] = stack.enter_context(zipfile.ZipFile(path))
                    data = _read_member(archives[path], upload)
                named.append((upload.name, data))
            except ChordError as exc:
                named.append((upload.name, exc))
    return named


def _read_capped(path: Path, limit: int) -> bytes:
    with open(path, "rb") as file:
        data = file.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"{path.name} is larger than {limit / 1e6:.1f} MB (MAX_UPLOAD_BYTES)")
    return data


def _read_member(archive: zipfile.ZipFile, upload: _Upload) -> bytes:
    """A zip member's bytes, reading at most one byte past the size its directory declares."""
    try:
        with archive.open(upload.member) as stream:
            data = stream.read(upload.declared_bytes + 1)
    except (zipfile.BadZipFile, RuntimeError, OSError, EOFError, zlib.error) as exc:
        raise InvalidImage(f"could not unpack {upload.member}: {exc}") from None
    if len(data) > upload.declared_bytes:
        raise PayloadTooLarge(
            f"{upload.member} unpacks to more than the {upload.declared_bytes} bytes its zip declares"
        )
    return data


def _thumbnail(data: bytes, limits: UploadLimits, result: GroundingResult) -> Image.Image:
    return annotate(decode_upload(data, limits, Fit(max(THUMBNAIL_WH))).image, result)


def _write_exports(records: list[dict], phrases: tuple[str, ...]) -> list[str]:
    folder = Path(tempfile.mkdtemp(prefix="chord-batch-"))
    jsonl = folder / "results.jsonl"
    jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    coco = folder / "coco.json"
    coco.write_text(json.dumps(to_coco(records, phrases), ensure_ascii=False), encoding="utf-8")
    return [str(jsonl), str(coco)]


def _annotate_chunk(video: AnnotatedVideo, chunk: list[tuple[SampledFrame, GroundingResult, dict]]) -> None:
    """One chunk of grounded frames drawn and appended to the annotated MP4 (boxes in the frames' own images)."""
    for frame, result, _ in chunk:
        video.add(annotate(frame.image, result))


def build_batch_tab(service: GroundingService) -> None:
    ui = MediaUI(service)
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            files = gr.File(
                label=T("batch_files"),
                file_count="multiple",
                file_types=["image", ".zip"],
                elem_id="chord-batch-files",
            )
            phrase = gr.Textbox(label=T("phrase"), placeholder=T("batch_placeholder"), lines=1,
                                elem_id="chord-batch-phrase")  # fmt: skip
            button = gr.Button(T("batch_go"), variant="primary", elem_id="chord-batch-go")
            summary = gr.Textbox(label=T("summary"), interactive=False, lines=2, elem_id="chord-batch-summary")
            downloads = gr.File(label=T("batch_downloads"), file_count="multiple", interactive=False,
                                elem_id="chord-batch-downloads")  # fmt: skip
        with gr.Column(scale=2):
            gallery = gr.Gallery(label=T("batch_gallery"), columns=3, object_fit="contain", height=560,
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
            video = gr.Video(label=T("video_in") + f" (≤ {settings.video_max_seconds:g} s)", sources=["upload"],
                             elem_id="chord-video-in")  # fmt: skip
            phrase = gr.Textbox(label=T("phrase"), placeholder=T("video_placeholder"), lines=1,
                                elem_id="chord-video-phrase")  # fmt: skip
            fps = gr.Slider(0.2, 10, value=1, step=0.1, label=T("fps"))
            button = gr.Button(T("video_go"), variant="primary", elem_id="chord-video-go")
            summary = gr.Textbox(label=T("summary"), interactive=False, elem_id="chord-video-summary")
        with gr.Column(scale=1):
            annotated = gr.Video(label=T("video_out"), interactive=False, elem_id="chord-video-out")
            download = gr.File(label="frames.jsonl", interactive=False, elem_id="chord-video-download")
            frames = gr.JSON(label=T("frames"), height=320, elem_id="chord-video-json")
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
