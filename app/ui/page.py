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

from app.demo.examples import write_demo_examples, write_photo_examples
from app.errors import ChordError, EmptyPrompt, MissingImage
from app.grounding.confidence import DEFAULT_REVIEW_THRESHOLD
from app.grounding.drawing import annotate
from app.grounding.result import GroundingResult
from app.grounding.tiling import Fit
from app.service.records import RequestRecord
from app.service.service import GroundingService
from app.service.uploads import UploadLimits, decode_upload
from app.settings import DEMO_MODEL_ALIAS
from app.ui.media import SCHEDULER_DECIDES, build_batch_tab, build_video_tab
from app.ui.texts import ENGLISH, I18N, LANGUAGES, T, boxes_text, label, say
from app.ui.upload_cache import read_cached_upload

logger = logging.getLogger(__name__)

UI_ENDPOINT = "gradio:/ground"
HISTORY_SIZE = 8
THUMBNAIL_WH = (320, 320)
DRAWING_MAX_SIDE = 4096  # a larger upload is drawn on a copy this size (its boxes scaled to it)
IMAGE_HEIGHT = 340  # input and result side by side, with the phrase and Find, fit a 1280x800 window
CSS = """
#chord-top { align-items: center; }
#chord-header p { margin: 0; }
#chord-go { min-height: 3rem; }
#chord-examples img, #chord-examples video { object-fit: contain !important; background: #e5e7eb; }
"""
# The page's language: the browser's at first (Gradio chose its locale from it), then the switch.
BROWSER_LANGUAGE_JS = """
() => ((document.documentElement.lang || navigator.language || "en").toLowerCase().startsWith("zh") ? "zh-CN" : "en")
"""
# The switch re-translates every label in place: Gradio's own locale store, found among the loaded modules.
SET_LOCALE_JS = """
async (language) => {
  const core = performance.getEntriesByType("resource").map((e) => e.name)
    .find((name) => /\\/assets\\/core-[\\w-]+\\.js$/.test(name));
  if (core) { (await import(core)).changeLocale(language); }
  document.documentElement.lang = language;
  return language;
}
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
        language: str = ENGLISH,
        history: list | None = None,
    ) -> tuple[Image.Image, dict, str, str, list]:
        """Ground the phrase(s) in the image; returns annotated image, result JSON, raw answer, latency."""
        record = RequestRecord(endpoint=UI_ENDPOINT)
        metrics = self.service.metrics
        try:
            if image is None:  # named first: with nothing filled in, the image is what to add first
                raise MissingImage("no image")
            phrases = self.service.phrases(phrase, record)
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
            message = _message(exc, bool((phrase or "").strip()), language)
            raise gr.Error(message, title=say("could_not_ground", language)) from None
        except Exception as exc:  # noqa: BLE001 - a person sees a message, the log keeps the traceback
            logger.error("request id=%s failed", record.request_id, exc_info=exc)
            record.finish(metrics, 500, "internal_error")
            raise gr.Error(
                say("unexpected", language, request_id=record.request_id), title=say("error", language)
            ) from None
        record.finish(metrics, 200)
        if not result.boxes:
            gr.Warning(say("no_box", language), duration=6)
        history = _remember(history or [], annotated, result, language)
        return annotated, result.to_dict(), result.text, _latency_text(result, record, language), history

    def status(self, language: str = ENGLISH) -> tuple[str, dict, gr.Timer]:
        """Header line and button state; the timer stops polling once loading has ended."""
        loading = self.service.loading
        button = gr.update(interactive=self.service.ready, value=_button_text(self.service, language))
        return header_text(self.service, language), button, gr.Timer(active=loading)


def _message(exc: ChordError, has_phrase: bool, language: str) -> str:
    """The missing inputs named in the page's language; the service's other messages as they are."""
    if exc.code == MissingImage.code:
        return say("add_image" if has_phrase else "add_image_and_phrase", language)
    if exc.code == EmptyPrompt.code:
        return say("type_phrase", language)
    return exc.message


def review_text(result: dict | None, language: str = ENGLISH, bar: float = DEFAULT_REVIEW_THRESHOLD) -> str:
    """A shown result's own ``confidence`` and ``needs_review``, in the page's language (``bar``: REVIEW_THRESHOLD)."""
    result = result or {}
    if not result.get("boxes"):
        return say("review_none", language)
    confidence = result.get("confidence")
    if confidence is None:
        return say("review_unscored", language)
    key = "review_low" if result.get("needs_review", True) else "confident"
    return say(key, language, score=confidence, bar=bar)


def header_text(service: GroundingService, language: str = ENGLISH) -> str:
    what = _escape_markdown(service.describe())
    start = f"**Chord** · {say('title', language)} · "
    if service.ready:
        return start + say("serving", language, what=what)
    if service.loading:
        return start + say("loading_header", language, what=what)
    return f"{start}⚠ **{what}**"


def _button_key(service: GroundingService) -> str:
    if service.ready:
        return "find"
    return "button_loading" if service.loading else "button_unavailable"


def _button_text(service: GroundingService, language: str = ENGLISH) -> str:
    return say(_button_key(service), language)


def _escape_markdown(text: str) -> str:
    return "".join("\\" + c if c in "\\`*_[]<>#|" else c for c in text)


def drawn(data: bytes, limits: UploadLimits, result: GroundingResult) -> Image.Image:
    """The result drawn on the upload, decoded again no larger than DRAWING_MAX_SIDE."""
    return annotate(decode_upload(data, limits, Fit(DRAWING_MAX_SIDE)).image, result)


def _latency_text(result: GroundingResult, record: RequestRecord, language: str) -> str:
    boxes = boxes_text(len(result.boxes), language)
    return say("latency", language, ms=result.latency_ms, boxes=boxes, request_id=record.request_id)


def _remember(history: list, annotated: Image.Image, result: GroundingResult, language: str) -> list:
    thumbnail = annotated.copy()
    thumbnail.thumbnail(THUMBNAIL_WH)
    caption = f"{boxes_text(len(result.boxes), language)} · {'; '.join(result.phrases)}"
    return [(thumbnail, caption), *history][:HISTORY_SIZE]


def _examples(service: GroundingService) -> tuple[list[list[str]], str]:
    """Examples that fit the loaded model: evaluation scenes for the demo model, photos for a real one."""
    folder = Path(tempfile.gettempdir()) / "chord-examples"
    if service.settings.model_path == DEMO_MODEL_ALIAS:
        return write_demo_examples(folder / "demo-scenes"), "demo_examples"
    return write_photo_examples(folder / "photos"), "photo_examples"


def build_ui(service: GroundingService) -> gr.Blocks:
    ui = ChordUI(service)
    # Gradio keeps uploads and outputs in its cache: every 10 minutes drop files older than 30.
    with gr.Blocks(title="Chord", analytics_enabled=False, delete_cache=(600, 1800)) as demo:
        with gr.Row(elem_id="chord-top"):
            header = gr.Markdown(header_text(service), elem_id="chord-header")
            language = gr.Radio(
                LANGUAGES, value=ENGLISH, label=T("language"), container=False, scale=0, min_width=200,
                elem_id="chord-language",
            )  # fmt: skip
        history = gr.State([])
        with gr.Tabs():
            with gr.Tab(T("tab_image"), id="image") as tab_image:
                with gr.Row(equal_height=False):
                    with gr.Column(scale=1):
                        image = gr.Image(
                            label=T("image"),
                            type="filepath",
                            image_mode=None,
                            sources=["upload", "clipboard"],
                            height=IMAGE_HEIGHT,
                            elem_id="chord-image",
                        )
                        phrase = gr.Textbox(
                            label=T("phrase"),
                            info=T("phrase_info"),
                            placeholder=T("phrase_placeholder"),
                            lines=1,  # Enter submits; Shift+Enter adds a line, up to max_lines
                            max_lines=4,
                            elem_id="chord-phrase",
                        )
                        button = gr.Button(
                            T(_button_key(service)), variant="primary", elem_id="chord-go", interactive=service.ready
                        )
                        with gr.Accordion(T("advanced"), open=False, elem_id="chord-advanced"):
                            max_new_tokens = gr.Slider(
                                1, 2048, value=service.settings.max_new_tokens, step=1, label=T("max_new_tokens"),
                                elem_id="chord-max-new-tokens",
                            )  # fmt: skip
                            score_threshold = gr.Slider(
                                0.0, 1.0, value=0.0, step=0.01, label=T("score_threshold"),
                                elem_id="chord-score-threshold",
                            )  # fmt: skip
                            prompt_template = gr.Textbox(
                                label=T("template"), value="", placeholder=T("template_placeholder"),
                                elem_id="chord-template",
                            )  # fmt: skip
                            tiling = gr.Checkbox(
                                value=service.settings.tiling or service.settings.large_image_mode == "tiles",
                                label=T("tiling"),
                                elem_id="chord-tiling",
                            )
                        examples, examples_label = _examples(service)
                        scenes = gr.Examples(
                            examples=examples,
                            inputs=[image, phrase],
                            label=T(examples_label),
                            cache_examples=False,
                            api_visibility="private",
                            elem_id="chord-examples",
                        )
                        scenes.dataset.headers = []  # the columns speak for themselves (I18n does not reach headers)
                    with gr.Column(scale=1):
                        annotated = gr.Image(
                            label=T("out"),
                            type="pil",
                            format="png",
                            interactive=False,
                            height=IMAGE_HEIGHT,
                            elem_id="chord-out",
                        )
                        confidence = gr.Textbox(label=T("confidence"), interactive=False, elem_id="chord-confidence")
                        latency = gr.Textbox(label=T("latency"), interactive=False, elem_id="chord-latency")
                        result_json = gr.JSON(label=T("result"), height=360, elem_id="chord-json")
                        raw = gr.Textbox(label=T("raw"), lines=3, interactive=False, elem_id="chord-raw")
                gallery = gr.Gallery(
                    label=T("history"),
                    columns=HISTORY_SIZE,
                    fit_columns=False,
                    object_fit="contain",
                    height=190,
                    elem_id="chord-history",
                )
            with gr.Tab(T("tab_batch"), id="batch") as tab_batch:
                build_batch_tab(service)
            with gr.Tab(T("tab_video"), id="video") as tab_video:
                build_video_tab(service)

        inputs = [image, phrase, max_new_tokens, score_threshold, prompt_template, tiling, language, history]
        outputs = [annotated, result_json, raw, latency, history]
        hidden = {"api_visibility": "private", "show_progress": "hidden"}

        def then_show(event) -> None:
            event.success(
                lambda h, result, lang: (h, review_text(result, lang, service.settings.review_threshold)),
                inputs=[history, result_json, language],
                outputs=[gallery, confidence],
                **hidden,
            )

        then_show(
            gr.on(
                triggers=[button.click, phrase.submit],
                fn=ui.ground,
                inputs=inputs,
                outputs=outputs,
                api_name="ground",
                api_description="Find the phrase(s) in the image; returns the annotated image, the result JSON "
                "(boxes as [x1, y1, x2, y2] pixels), the raw model answer and the latency; language ('en' or 'zh-CN') "
                "is the language of the messages.",
                **SCHEDULER_DECIDES,
            )
        )
        image.change(lambda: ([], []), outputs=[history, gallery], **hidden)
        # A click on an example grounds it at once, with the Advanced settings like every other start.
        then_show(scenes.load_input_event.then(ui.ground, inputs=inputs, outputs=outputs, api_visibility="private",
                                               **SCHEDULER_DECIDES))  # fmt: skip

        timer = gr.Timer(2.0)
        status_outputs = [header, button, timer]
        timer.tick(ui.status, inputs=language, outputs=status_outputs, **hidden)
        demo.load(ui.status, inputs=language, outputs=status_outputs, **hidden)
        demo.load(None, js=BROWSER_LANGUAGE_JS, outputs=language, **hidden)
        language.change(None, inputs=language, js=SET_LOCALE_JS, **hidden)
        language.change(ui.status, inputs=language, outputs=status_outputs, **hidden)
        tabs = {"tab_image": tab_image, "tab_batch": tab_batch, "tab_video": tab_video}
        # Gradio re-translates a tab's label only once it is shown: a switch sets them all (on load, I18n has).
        language.input(
            lambda lang: [gr.Tab(label=label(key, lang)) for key in tabs], inputs=language, outputs=list(tabs.values()),
            **hidden,
        )  # fmt: skip
    demo.i18n_instance = I18N  # what launch(i18n=...) sets; mount_gradio_app reads it from the Blocks
    return demo
