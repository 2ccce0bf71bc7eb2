"""The browser UI (Gradio Blocks): drop an image, name what to find, see the boxes.

The grounding event is also Gradio's auto API ``/ground``: inputs image and phrase, every other
input has a default, and the output carries the boxes as numbers in the result JSON.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import anyio
import gradio as gr
from PIL import Image

from app.demo.examples import write_demo_examples
from app.errors import ChordError, MissingImage
from app.grounding.drawing import annotate
from app.grounding.result import GroundingResult
from app.grounding.tiling import Fit
from app.service.records import RequestRecord
from app.service.service import GroundingService
from app.service.uploads import UploadLimits, decode_upload
from app.ui.media import SCHEDULER_DECIDES, build_batch_tab, build_video_tab
from app.ui.upload_cache import read_cached_upload

logger = logging.getLogger(__name__)

UI_ENDPOINT = "gradio:/ground"
HISTORY_SIZE = 8
THUMBNAIL_WH = (320, 320)
DRAWING_MAX_SIDE = 4096  # a larger upload is drawn on a copy this size (its boxes scaled to it)
EXAMPLES = [
    ["the person"],
    ["the red car; the dog"],
    ["a cup on the table"],
    ["穿红衣服的人"],
    ["桌子上的杯子；椅子"],
]
PHRASE_HELP = "e.g. the red car; the person on the left (several phrases: separate them with ; or a new line)"
TEMPLATE_HELP = "Leave empty for the built-in prompt. A custom one must contain {targets}, e.g. 'Find {targets}.'"
CSS = """
#chord-header p { margin: 0; }
#chord-go { min-height: 3rem; }
"""


class ChordUI:
    """The UI's event handlers, reaching the model only through the service."""

    def __init__(self, service: GroundingService):
        self.service = service

    async def ground(
        self,
        image: str | None,
        phrase: str,
        max_new_tokens: float = 512,
        score_threshold: float = 0.0,
        prompt_template: str = "",
        tiling: bool = False,
        history: list | None = None,
    ) -> tuple[Image.Image, dict, str, str, list]:
        """Ground the phrase(s) in the image; returns annotated image, result JSON, raw answer, latency."""
        record = RequestRecord(endpoint=UI_ENDPOINT)
        metrics = self.service.metrics
        try:
            phrases = self.service.phrases(phrase, record)
            if image is None:
                raise MissingImage("Add an image first: drop it in, paste it or click to upload.")
            options = self.service.options(
                int(max_new_tokens) if max_new_tokens else None,
                float(score_threshold or 0.0),
                prompt_template,
                bool(tiling),
            )
            data = await read_cached_upload(image, self.service.settings.max_upload_bytes)
            result = await self.service.ground_upload(data, phrases, record, options)
            annotated = await anyio.to_thread.run_sync(drawn, data, self.service.upload_limits, result)
        except ChordError as exc:
            record.finish(metrics, exc.status, exc.code)
            raise gr.Error(exc.message, title="Could not ground") from None
        except Exception as exc:  # noqa: BLE001 - a person sees a message, the log keeps the traceback
            logger.error("request id=%s failed", record.request_id, exc_info=exc)
            record.finish(metrics, 500, "internal_error")
            raise gr.Error(f"Unexpected server error (request id {record.request_id}).", title="Error") from None
        record.finish(metrics, 200)
        if not result.boxes:
            gr.Warning("No box found. Try other words, or lower the score threshold under Advanced.", duration=6)
        history = _remember(history or [], annotated, result)
        return annotated, result.to_dict(), result.text, _latency_text(result, record), history

    def status(self) -> tuple[str, dict, gr.Timer]:
        """Header line and button state; the timer stops polling once loading has ended."""
        loading = self.service.loading
        button = gr.update(interactive=self.service.ready, value=_button_text(self.service))
        return header_text(self.service), button, gr.Timer(active=loading)


def header_text(service: GroundingService) -> str:
    what = _escape_markdown(service.describe())
    if service.ready:
        return f"**Chord** · visual grounding · serving {what}"
    if service.loading:
        return f"**Chord** · visual grounding · {what} Find is enabled once the model is ready."
    return f"**Chord** · visual grounding · ⚠ **{what}**"


def _button_text(service: GroundingService) -> str:
    if service.ready:
        return "Find"
    return "The model is loading ..." if service.loading else "The model is unavailable (see above)"


def _escape_markdown(text: str) -> str:
    return "".join("\\" + c if c in "\\`*_[]<>#|" else c for c in text)


def drawn(data: bytes, limits: UploadLimits, result: GroundingResult) -> Image.Image:
    """The result drawn on the upload, decoded again no larger than DRAWING_MAX_SIDE."""
    return annotate(decode_upload(data, limits, Fit(DRAWING_MAX_SIDE)).image, result)


def _latency_text(result: GroundingResult, record: RequestRecord) -> str:
    return f"{result.latency_ms:.0f} ms model time · {_boxes_text(len(result.boxes))} · request {record.request_id}"


def _boxes_text(count: int) -> str:
    return f"{count} box" + ("" if count == 1 else "es")


def _remember(history: list, annotated: Image.Image, result: GroundingResult) -> list:
    thumbnail = annotated.copy()
    thumbnail.thumbnail(THUMBNAIL_WH)
    caption = f"{_boxes_text(len(result.boxes))} · {'; '.join(result.phrases)}"
    return [(thumbnail, caption), *history][:HISTORY_SIZE]


def build_ui(service: GroundingService) -> gr.Blocks:
    ui = ChordUI(service)
    # Gradio keeps uploads and outputs in its cache: every 10 minutes drop files older than 30.
    with gr.Blocks(title="Chord", analytics_enabled=False, delete_cache=(600, 1800)) as demo:
        header = gr.Markdown(header_text(service), elem_id="chord-header")
        history = gr.State([])
        with gr.Tabs():
            with gr.Tab("Image", id="image"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=1):
                        image = gr.Image(
                            label="Image (drop, paste or click to upload)",
                            type="filepath",
                            image_mode=None,
                            sources=["upload", "clipboard"],
                            height=380,
                            elem_id="chord-image",
                        )
                        phrase = gr.Textbox(
                            label="What to find",
                            placeholder=PHRASE_HELP,
                            lines=2,
                            elem_id="chord-phrase",
                        )
                        gr.Examples(examples=EXAMPLES, inputs=[phrase], label="Examples (click one)")
                        demo_scenes = gr.Examples(
                            examples=write_demo_examples(Path(tempfile.gettempdir()) / "chord-demo-scenes"),
                            inputs=[image, phrase],
                            label="Demo scenes (click one: it is grounded at once)",
                            cache_examples=False,
                            api_visibility="private",
                            elem_id="chord-demo-scenes",
                        )
                        with gr.Accordion("Advanced", open=False, elem_id="chord-advanced"):
                            max_new_tokens = gr.Slider(
                                1, 2048, value=service.settings.max_new_tokens, step=1, label="Max new tokens",
                                elem_id="chord-max-new-tokens",
                            )  # fmt: skip
                            score_threshold = gr.Slider(
                                0.0, 1.0, value=0.0, step=0.01, label="Score threshold", elem_id="chord-score-threshold"
                            )
                            prompt_template = gr.Textbox(
                                label="Prompt template", value="", placeholder=TEMPLATE_HELP, elem_id="chord-template"
                            )
                            tiling = gr.Checkbox(
                                value=service.settings.tiling,
                                label="Large images: also ground tile by tile (small objects in big scans)",
                                elem_id="chord-tiling",
                            )
                        button = gr.Button(
                            _button_text(service), variant="primary", elem_id="chord-go", interactive=service.ready
                        )
                    with gr.Column(scale=1):
                        annotated = gr.Image(
                            label="Image with boxes",
                            type="pil",
                            format="png",
                            interactive=False,
                            height=380,
                            elem_id="chord-out",
                        )
                        latency = gr.Textbox(label="Latency", interactive=False, elem_id="chord-latency")
                        result_json = gr.JSON(label="Result", height=360, elem_id="chord-json")
                        raw = gr.Textbox(label="Raw model answer", lines=3, interactive=False, elem_id="chord-raw")
                gallery = gr.Gallery(
                    label="Earlier results for this image (newest first)",
                    columns=HISTORY_SIZE,
                    fit_columns=False,
                    object_fit="contain",
                    height=190,
                    elem_id="chord-history",
                )
            with gr.Tab("Batch", id="batch"):
                build_batch_tab(service)
            with gr.Tab("Video", id="video"):
                build_video_tab(service)

        gr.on(
            triggers=[button.click, phrase.submit],
            fn=ui.ground,
            inputs=[image, phrase, max_new_tokens, score_threshold, prompt_template, tiling, history],
            outputs=[annotated, result_json, raw, latency, history],
            api_name="ground",
            api_description="Find the phrase(s) in the image; returns the annotated image, the result JSON "
            "(boxes as [x1, y1, x2, y2] pixels), the raw model answer and the latency.",
            **SCHEDULER_DECIDES,
        ).success(lambda h: h, inputs=history, outputs=gallery, api_visibility="private", show_progress="hidden")
        image.change(lambda: ([], []), outputs=[history, gallery], api_visibility="private", show_progress="hidden")
        demo_scenes.load_input_event.then(  # a click on a demo scene grounds it at once, with the Advanced settings
            ui.ground,
            inputs=[image, phrase, max_new_tokens, score_threshold, prompt_template, tiling, history],
            outputs=[annotated, result_json, raw, latency, history],
            api_visibility="private",
            **SCHEDULER_DECIDES,
        ).success(lambda h: h, inputs=history, outputs=gallery, api_visibility="private", show_progress="hidden")

        timer = gr.Timer(2.0)
        status_outputs = [header, button, timer]
        timer.tick(ui.status, outputs=status_outputs, api_visibility="private", show_progress="hidden")
        demo.load(ui.status, outputs=status_outputs, api_visibility="private", show_progress="hidden")
    return demo
