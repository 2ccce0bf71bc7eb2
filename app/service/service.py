"""The grounding service: settings, the engine once loaded, load state and counters.

The model loads in a background thread so the port answers at once. Model work goes through the
batching scheduler (its own threads), so the event loop (and ``/health``) stays free.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from enum import Enum

import anyio
from PIL import Image

from app.engine.base import Engine, GroundingRequest
from app.errors import (
    ChordError,
    ImageTooLarge,
    ModelLoadError,
    ModelNotReady,
    RequestTimeout,
    chord_error_of,
)
from app.grounding.options import GroundingOptions
from app.grounding.prompts import clean_template, split_phrases
from app.grounding.result import GroundingResult
from app.grounding.tiling import Fit, combine, rescale_result, shift_result, tile_windows
from app.service.metrics import Metrics
from app.service.pixel_budget import PixelBudget
from app.service.records import RequestRecord
from app.service.scheduler import BatchScheduler
from app.service.uploads import FittedImage, UploadLimits, decode_upload, read_header
from app.settings import Settings

logger = logging.getLogger(__name__)


Loader = Callable[[Settings], Engine]
# The processor shrinks every image to at most MAX_PIXELS; what it gets is kept at most this many times
# that (twice each side), so the last resize stays the processor's own while a huge upload costs little.
WORKING_AREA_FACTOR = 4


class LoadState(Enum):
    LOADING = "loading"
    READY = "ok"
    FAILED = "failed"


def load_transformers_engine(settings: Settings, own_process: bool | None = None) -> Engine:
    from app.engine.transformers_engine import TransformersEngine

    return TransformersEngine.load(settings, own_process=settings.model_process if own_process is None else own_process)


def load_openai_engine(settings: Settings) -> Engine:
    from app.engine.openai_engine import OpenAIEngine

    return OpenAIEngine.load(settings)


def load_engine(settings: Settings, own_process: bool | None = None) -> Engine:
    """The engine ENGINE names: the model here (in its own process as MODEL_PROCESS or ``own_process`` says), or
    an OpenAI-compatible server."""
    if settings.engine == "openai":
        return load_openai_engine(settings)
    return load_transformers_engine(settings, own_process)


class GroundingService:
    def __init__(
        self,
        settings: Settings,
        loader: Loader = load_engine,
        on_load_failure: Callable[[ChordError], None] | None = None,
    ):
        self.settings = settings
        self.metrics = Metrics()
        self._loader = loader
        self._on_load_failure = on_load_failure
        self._engine: Engine | None = None
        self._scheduler: BatchScheduler | None = None
        self._state = LoadState.LOADING
        self._load_error: ChordError | None = None
        self._load_seconds: float | None = None
        self._started = time.monotonic()
        self._served = 0
        self._in_flight = 0
        self._busy_since = time.monotonic()  # when work last arrived at an idle service
        self._stalled = False  # what stalled_s last found
        self.pixel_budget = PixelBudget(
            settings.decode_budget_pixels, settings.request_timeout_s, self.metrics.decode_pixels.set
        )

    # --- loading -------------------------------------------------------------------------
    def start_loading(self) -> None:
        threading.Thread(target=self._load, name="chord-load", daemon=True).start()

    def load(self) -> None:
        """Load the engine now, in this thread (the command line); the load error is raised."""
        self._load()
        if self._load_error is not None:
            raise self._load_error

    def _load(self) -> None:
        started = time.perf_counter()
        logger.info("loading the model: %s", self.settings.describe())
        try:
            engine = self._loader(self.settings)
        except ChordError as exc:
            self._fail(exc)
            return
        except Exception as exc:  # noqa: BLE001 - any load fault must reach /health, not kill the server
            logger.exception("model load failed")
            self._fail(ModelLoadError(f"could not load the model: {type(exc).__name__}: {exc}"))
            return
        self._load_seconds = time.perf_counter() - started
        self.metrics.model_load_seconds.set(self._load_seconds)
        if engine.info.device.startswith("cuda"):
            self.metrics.watch_gpu_memory(engine.gpu_memory_allocated)
        self.metrics.watch_model(engine.info.model, engine.seconds_since_progress, lambda: self.stalled_s() is not None)
        self.metrics.watch_image_cache(engine.image_cache_counts)
        self._scheduler = BatchScheduler(
            engine,
            max_batch_size=self.settings.max_batch_size,
            max_batch_wait_ms=self.settings.max_batch_wait_ms,
            continuous=self.settings.continuous_batching,
            max_queue=self.settings.max_queue,
            request_timeout_s=self.settings.request_timeout_s,
            observer=self.metrics,
        )
        self._engine = engine
        self._state = LoadState.READY
        self.metrics.model_ready.set(1)
        logger.info("ready: %s in %.1f s", engine.info.to_dict(), self._load_seconds)

    def _fail(self, error: ChordError) -> None:
        self._load_error = error
        self._state = LoadState.FAILED
        logger.error("the model could not be loaded: %s", error.message)
        if self._on_load_failure is not None:
            self._on_load_failure(error)

    def close(self) -> None:
        """Finish what the model holds, fail what is queued, let the model go. A stalled model is let go
        first: what it holds would never finish, and its requests fail at once instead."""
        stalled = self._stalled or self.stalled_s() is not None  # requests cancelled by the shutdown left no work
        if stalled:
            logger.warning("the model is stalled: stopping it before the queue")
            self._engine.close()
        if self._scheduler is not None:
            self._scheduler.stop()
        if self._engine is not None and not stalled:
            self._engine.close()

    # --- state ---------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._state is LoadState.READY

    @property
    def healthy(self) -> bool:
        """Ready, the engine reachable (one behind HTTP answered its last check), and the model not stalled."""
        return self.ready and self._engine.reachable and self.stalled_s() is None

    def stalled_s(self) -> float | None:
        """Seconds the model has made no progress while work waited for it, once past STALL_TIMEOUT_S; else None.

        Idle is never stalled: the quiet time counts from the later of the last progress and the moment
        work arrived.
        """
        if self._engine is None or self._in_flight == 0:
            self._stalled = False
            return None
        since_progress = self._engine.seconds_since_progress()
        if since_progress is None:
            return None
        quiet = min(since_progress, time.monotonic() - self._busy_since)
        self._stalled = quiet > self.settings.stall_timeout_s
        return quiet if self._stalled else None

    @property
    def loading(self) -> bool:
        return self._state is LoadState.LOADING

    def describe(self) -> str:
        """One line for people: what is serving, or what is happening instead."""
        if self._engine is not None:
            info = self._engine.info
            weights = "" if info.quantization == "none" else f", {info.quantization} weights"
            return f"{info.model} ({info.family.display_name}) on {info.device}, {info.dtype}{weights}"
        if self._load_error is not None:
            return f"the model could not be loaded: {self._load_error.message}"
        return f"loading {self.settings.model_path} on {self.settings.device} ..."

    def health(self) -> dict:
        body: dict = {
            "status": self._state.value,
            "uptime_s": round(time.monotonic() - self._started, 1),
            "pid": os.getpid(),
        }
        if self._engine is not None:
            body.update(self._engine.info.to_dict())
            body.update(
                requests_served=self._served,
                queue_depth=self._scheduler.depth if self._scheduler else 0,
                in_flight=self._in_flight,
                load_seconds=round(self._load_seconds, 1),
            )
            engine_health = self._engine.health()
            if engine_health is not None:
                body["engine"] = engine_health
                if not self._engine.reachable:
                    body["status"] = "engine_unreachable"
            stalled = self.stalled_s()
            if stalled is not None:
                body.update(status="stalled", stalled_s=round(stalled, 1))
        elif self._load_error is not None:
            body.update(self._load_error.to_dict())
        else:
            body.update(model=self.settings.model_path, device=self.settings.device)
        return body

    def _require_engine(self) -> Engine:
        if self._engine is not None:
            return self._engine
        if self._load_error is not None:
            raise ModelLoadError(self._load_error.message)
        raise ModelNotReady("the model is still loading; try again in a moment (GET /health says when it is ready)")

    # --- input -----------------------------------------------------------------------------
    def phrases(self, prompt: str | None, record: RequestRecord | None = None) -> tuple[str, ...]:
        """The phrases of a prompt, checked the same way for the UI and REST."""
        phrases = split_phrases(prompt, self.settings.max_prompt_chars)
        if record is not None:
            record.phrase_chars = sum(len(p) for p in phrases)
        return phrases

    def options(
        self,
        max_new_tokens: int | None = None,
        score_threshold: float = 0.0,
        prompt_template: str | None = None,
        tiling: bool | None = None,
    ) -> GroundingOptions:
        """A caller's options, checked the same way for every front end (the template: length, ``{targets}``,
        no control token)."""
        template = clean_template(prompt_template, self.settings.max_prompt_chars)
        return GroundingOptions(max_new_tokens, score_threshold, template, tiling)

    @property
    def fit(self) -> Fit:
        """Images are kept for the model no larger than MAX_IMAGE_SIDE and WORKING_AREA_FACTOR x MAX_PIXELS."""
        return Fit(self.settings.max_image_side, WORKING_AREA_FACTOR * self.settings.max_pixels)

    @property
    def upload_limits(self) -> UploadLimits:
        return UploadLimits(self.settings.max_upload_bytes, self.settings.max_image_pixels)

    def check_request_pixels(self, pixels: int, what: str = "this request") -> None:
        """ImageTooLarge when one request brings more decoded pixels than MAX_REQUEST_PIXELS."""
        limit = self.settings.max_request_pixels
        if pixels > limit:
            raise ImageTooLarge(
                f"{what} holds {pixels / 1e6:.0f} megapixels once decoded; the limit is {limit / 1e6:.0f} "
                "(MAX_REQUEST_PIXELS): send fewer or smaller images"
            )

    async def upload_pixels(self, data: bytes) -> int:
        """Pixels an upload holds once decoded, from its header alone (every upload check applied)."""
        header = await anyio.to_thread.run_sync(read_header, data, self.upload_limits)
        return header.size[0] * header.size[1]

    # --- grounding -----------------------------------------------------------------------
    async def ground_upload(
        self, data: bytes, phrases: tuple[str, ...], record: RequestRecord, options: GroundingOptions
    ) -> GroundingResult:
        """Check, decode and ground an uploaded image; boxes in pixels of the image as sent.

        The decode holds its pixels in the decode budget, then only the fitted image's until the
        answer is in: a huge image is decoded straight to the size the model needs (all of it only
        when it is tiled).
        """
        pixels = await self.upload_pixels(data)
        self.check_request_pixels(pixels)
        async with self.pixel_budget.hold(pixels) as held:
            full = self._tiles(pixels, options)
            fit = None if full else self.fit
            picture = await anyio.to_thread.run_sync(decode_upload, data, self.upload_limits, fit)
            del data
            await held.shrink(picture.image.width * picture.image.height)
            return await self.ground(picture, phrases, record, options)

    async def ground_uploads(
        self, items: list[tuple[bytes, tuple[str, ...]]], options: GroundingOptions, request_id: str
    ) -> list[GroundingResult | ChordError]:
        """Several uploads, ``MAX_BATCH_SIZE`` at a time (one caller never fills the queue); errors per item.

        ImageTooLarge for the whole call when its images together pass MAX_REQUEST_PIXELS.
        """
        total = 0
        for data, _ in items:
            try:
                total += await self.upload_pixels(data)
            except ChordError:
                pass  # reported on its own item below
        self.check_request_pixels(total, f"these {len(items)} images")

        async def one(data: bytes, phrases: tuple[str, ...]) -> GroundingResult | ChordError:
            record = RequestRecord(endpoint="item", request_id=request_id)
            try:
                return await self.ground_upload(data, phrases, record, options)
            except Exception as exc:  # noqa: BLE001 - each item reports its own failure
                error = chord_error_of(exc)
                if error.code == "internal_error":
                    logger.error("request id=%s: a batch item failed", request_id, exc_info=exc)
                return error

        outcomes: list[GroundingResult | ChordError] = []
        for start in range(0, len(items), self._chunk):
            outcomes += await asyncio.gather(*(one(data, p) for data, p in items[start : start + self._chunk]))
        return outcomes

    async def ground(
        self, picture: FittedImage, phrases: tuple[str, ...], record: RequestRecord, options: GroundingOptions
    ) -> GroundingResult:
        """Ground ``phrases`` (from ``phrases()``) in a decoded upload through the scheduler; fills ``record``.

        With tiling (the setting or the request) a huge image is also grounded tile by tile and the
        boxes merged with NMS. Boxes always come back in pixels of the image as sent.
        """
        record.image_wh = picture.original_wh
        w, h = picture.image.size
        if self._tiles(w * h, options) and max(w, h) > self.settings.tile_size:
            result = await self._ground_tiled(picture.image, phrases, options)
        else:
            result = await self.ground_fitted(picture.image, phrases, options)
        if picture.image.size != picture.original_wh:
            result = rescale_result(result, picture.original_wh)
        record.boxes = len(result.boxes)
        return result

    def _tiles(self, pixels: int, options: GroundingOptions) -> bool:
        use_tiling = self.settings.tiling if options.tiling is None else options.tiling
        return use_tiling and pixels > self.settings.tile_size**2

    @property
    def _chunk(self) -> int:
        """Requests one caller may have in the queue at once."""
        return max(1, min(self.settings.max_batch_size, self.settings.max_queue))

    async def ground_fitted(
        self, image: Image.Image, phrases: tuple[str, ...], options: GroundingOptions
    ) -> GroundingResult:
        """``ground_one`` for an image of any size: one larger than ``fit`` allows is downscaled and mapped back."""
        smaller = self.fit.wh(image.size)
        if smaller is None:
            return await self.ground_one(image, phrases, options)
        resized = await anyio.to_thread.run_sync(image.resize, smaller, Image.Resampling.BICUBIC)
        return rescale_result(await self.ground_one(resized, phrases, options), image.size)

    async def _ground_tiled(self, image: Image.Image, phrases: tuple[str, ...], options: GroundingOptions):
        """The whole image, then its tiles, ``MAX_BATCH_SIZE`` at a time; boxes merged with NMS."""
        from app.engine.nms import nms_keep

        windows = tile_windows(image.size, self.settings.tile_size)
        placed = [await self.ground_fitted(image, phrases, options)]
        for start in range(0, len(windows), self._chunk):
            chunk = windows[start : start + self._chunk]
            crops = [await anyio.to_thread.run_sync(image.crop, window) for window in chunk]
            parts = await asyncio.gather(*(self.ground_fitted(crop, phrases, options) for crop in crops))
            placed += [shift_result(r, w, image.size) for r, w in zip(parts, chunk, strict=True)]
        boxes = [b for r in placed for b in r.boxes]
        keep = nms_keep(boxes, [s for r in placed for s in r.scores], [label for r in placed for label in r.labels])
        return combine(placed, keep, image.size)

    async def ground_many(
        self, images: list[Image.Image], phrases: tuple[str, ...], options: GroundingOptions
    ) -> list[GroundingResult | BaseException]:
        """Ground each image, ``MAX_BATCH_SIZE`` at a time (one caller never fills the queue); errors per item."""
        outcomes: list[GroundingResult | BaseException] = []
        for start in range(0, len(images), self._chunk):
            chunk = images[start : start + self._chunk]
            outcomes += await asyncio.gather(
                *(self.ground_fitted(image, phrases, options) for image in chunk), return_exceptions=True
            )
        return outcomes

    async def ground_one(self, image: Image.Image, phrases: tuple[str, ...], options: GroundingOptions):
        """One request through the batching scheduler: 503 busy at once when the queue is full, 504 on timeout."""
        self._require_engine()
        request = GroundingRequest(
            image, phrases, max_new_tokens=options.max_new_tokens, prompt_template=options.prompt_template
        )
        future = self._scheduler.submit(request)
        if self._in_flight == 0:
            self._busy_since = time.monotonic()
        self._in_flight += 1
        self.metrics.in_flight.inc()
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(future), timeout=self.settings.request_timeout_s)
        except asyncio.TimeoutError:  # the builtin TimeoutError on Python >= 3.11
            future.cancel()
            raise RequestTimeout(f"no answer within REQUEST_TIMEOUT_S={self.settings.request_timeout_s:g} s") from None
        finally:
            self._in_flight -= 1
            self.metrics.in_flight.dec()
        self._served += 1
        return result.above(options.score_threshold)
