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
from dataclasses import dataclass, field
from enum import Enum

import anyio
from PIL import Image

from app.engine.base import Engine, GroundingRequest
from app.engine.model_spawn import SpawnedModel
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
from app.grounding.tiling import Fit, rescale_result
from app.grounding.zoom import resolve_mode
from app.service.large_images import ground_large
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
    SWAPPING = "swapping"  # an in-place swap: the old model is gone, the new one not yet serving


@dataclass
class Serving:
    """One loaded engine and the scheduler feeding it: what answers requests now (or did, until a swap)."""

    engine: Engine
    scheduler: BatchScheduler
    settings: Settings  # MODEL_PATH is this engine's
    load_seconds: float
    outstanding: int = 0  # requests submitted to this scheduler and not yet answered (event-loop thread only)
    busy_since: float = field(default_factory=time.monotonic)  # when work last arrived while it was idle


def load_transformers_engine(
    settings: Settings, own_process: bool | None = None, spawned: SpawnedModel | None = None
) -> Engine:
    from app.engine.transformers_engine import TransformersEngine

    own_process = settings.model_process if own_process is None else own_process
    return TransformersEngine.load(settings, own_process=own_process, spawned=spawned)


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
        self._serving: Serving | None = None
        self._state = LoadState.LOADING
        self._load_error: ChordError | None = None
        self._started = time.monotonic()
        self._served = 0
        self._in_flight = 0
        self._stalled = False  # what stalled_s last found
        self.pixel_budget = PixelBudget(
            settings.decode_budget_pixels, settings.request_timeout_s, self.metrics.decode_pixels.set
        )
        self.metrics.watch_model(self._seconds_since_progress, lambda: self.stalled_s() is not None)
        self.metrics.watch_image_cache(self._image_cache_counts)

    @property
    def _engine(self) -> Engine | None:
        return self._serving.engine if self._serving is not None else None

    # --- loading -------------------------------------------------------------------------
    def start_loading(self) -> None:
        threading.Thread(target=self._load, name="chord-load", daemon=True).start()

    def load(self) -> None:
        """Load the engine now, in this thread (the command line); the load error is raised."""
        self._load()
        if self._load_error is not None:
            raise self._load_error

    def _load(self) -> None:
        logger.info("loading the model: %s", self.settings.describe())
        try:
            serving = self.load_serving(self.settings)
        except ChordError as exc:
            self._fail(exc)
            return
        self.switch_to(serving)

    def load_serving(self, settings: Settings) -> Serving:
        """Load the engine ``settings`` name and give it a scheduler; ChordError (ModelLoadError) when it cannot."""
        started = time.perf_counter()
        try:
            engine = self._loader(settings)
        except ChordError:
            raise
        except Exception as exc:  # noqa: BLE001 - any load fault must reach /health, not kill the server
            logger.exception("model load failed")
            raise ModelLoadError(f"could not load the model: {type(exc).__name__}: {exc}") from exc
        return self.serve_engine(engine, settings, time.perf_counter() - started)

    def serve_engine(self, engine: Engine, settings: Settings, load_seconds: float) -> Serving:
        """A scheduler for a loaded engine: ready to be switched to."""
        scheduler = BatchScheduler(
            engine,
            max_batch_size=settings.max_batch_size,
            max_batch_wait_ms=settings.max_batch_wait_ms,
            continuous=settings.continuous_batching,
            max_queue=settings.max_queue,
            request_timeout_s=settings.request_timeout_s,
            observer=self.metrics,
        )
        return Serving(engine, scheduler, settings, load_seconds)

    def switch_to(self, serving: Serving | None) -> Serving | None:
        """Send new requests to ``serving`` from now on (None: refuse them while a model is swapped in place).

        Returns what served until now; the caller retires it (``retire``): requests it already holds
        are answered by it.
        """
        previous, self._serving = self._serving, serving
        if serving is None:
            self._state = LoadState.SWAPPING
            self.metrics.model_ready.set(0)
            return previous
        self.settings = serving.settings
        engine = serving.engine
        self.metrics.model_load_seconds.set(serving.load_seconds)
        self.metrics.serving_model(engine.info.model, engine.gpu_memory)
        self._load_error = None
        self._state = LoadState.READY
        self.metrics.model_ready.set(1)
        logger.info("ready: %s in %.1f s", engine.info.to_dict(), serving.load_seconds)
        return previous

    def retire(self, serving: Serving, close_engine: bool = True) -> None:
        """Wait (up to REQUEST_TIMEOUT_S) until ``serving`` has answered what it holds, stop its scheduler, and
        let its engine go unless ``close_engine`` is false (kept for a switch back)."""
        deadline = time.monotonic() + serving.settings.request_timeout_s
        while serving.outstanding > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        serving.scheduler.stop()
        if close_engine:
            serving.engine.close()

    def _fail(self, error: ChordError) -> None:
        self._load_error = error
        self._state = LoadState.FAILED
        logger.error("the model could not be loaded: %s", error.message)
        if self._on_load_failure is not None:
            self._on_load_failure(error)

    def close(self) -> None:
        """Finish what the model holds, fail what is queued, let the model go. A stalled model is let go
        first: what it holds would never finish, and its requests fail at once instead."""
        serving = self._serving
        if serving is None:
            return
        stalled = self._stalled or self.stalled_s() is not None  # requests cancelled by the shutdown left no work
        if stalled:
            logger.warning("the model is stalled: stopping it before the queue")
            serving.engine.close()
        serving.scheduler.stop()
        if not stalled:
            serving.engine.close()

    # --- state ---------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._state is LoadState.READY

    @property
    def healthy(self) -> bool:
        """Ready, the engine reachable (one behind HTTP answered its last check), and the model not stalled."""
        return self.ready and self._engine.reachable and self.stalled_s() is None

    def _image_cache_counts(self) -> dict:
        engine = self._engine
        return engine.image_cache_counts() if engine is not None else {}

    def _seconds_since_progress(self) -> float | None:
        engine = self._engine
        return engine.seconds_since_progress() if engine is not None else None

    def stalled_s(self) -> float | None:
        """Seconds the model has made no progress while work waited for it, once past STALL_TIMEOUT_S; else None.

        Idle is never stalled: the quiet time counts from the later of the last progress and the moment
        work arrived. Only the serving model's own work counts (not a swapped-out model's last requests).
        """
        serving = self._serving
        if serving is None or serving.outstanding == 0:
            self._stalled = False
            return None
        since_progress = serving.engine.seconds_since_progress()
        if since_progress is None:
            return None
        quiet = min(since_progress, time.monotonic() - serving.busy_since)
        self._stalled = quiet > self.settings.stall_timeout_s
        return quiet if self._stalled else None

    @property
    def loading(self) -> bool:
        return self._state in (LoadState.LOADING, LoadState.SWAPPING)

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
        serving = self._serving
        if serving is not None:
            engine = serving.engine
            body.update(engine.info.to_dict())
            body.update(
                requests_served=self._served,
                queue_depth=serving.scheduler.depth,
                in_flight=self._in_flight,
                load_seconds=round(serving.load_seconds, 1),
            )
            engine_health = engine.health()
            if engine_health is not None:
                body["engine"] = engine_health
                if not engine.reachable:
                    body["status"] = "engine_unreachable"
            stalled = self.stalled_s()
            if stalled is not None:
                body.update(status="stalled", stalled_s=round(stalled, 1))
        elif self._load_error is not None:
            body.update(self._load_error.to_dict())
        else:
            body.update(model=self.settings.model_path, device=self.settings.device)
        return body

    def _require_serving(self) -> Serving:
        if self._serving is not None:
            return self._serving
        if self._load_error is not None:
            raise ModelLoadError(self._load_error.message)
        if self._state is LoadState.SWAPPING:
            raise ModelNotReady("the model is being swapped; try again in a moment (GET /health says when it is ready)")
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
        in LARGE_IMAGE_MODE ``tiles``).
        """
        pixels = await self.upload_pixels(data)
        self.check_request_pixels(pixels)
        async with self.pixel_budget.hold(pixels) as held:
            full = self.large_image_mode(pixels, options) == "tiles"
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

        A large image is grounded as LARGE_IMAGE_MODE (or the request's ``tiling``) says
        (``app.service.large_images``). Boxes always come back in pixels of the image as sent.
        """
        record.image_wh = picture.original_wh
        result = await self._ground_image(picture.image, phrases, options, tiles=True)
        if picture.image.size != picture.original_wh:
            result = rescale_result(result, picture.original_wh)
        result = result.reviewed(self.settings.review_threshold)  # merged boxes: the kept ones decide
        record.boxes = len(result.boxes)
        return result

    def large_image_mode(self, pixels: int, options: GroundingOptions) -> str:
        """``off``, ``refine`` or ``tiles`` for an image of ``pixels``: LARGE_IMAGE_MODE (TILING=true, the old
        setting, means ``tiles``) or the request's ``tiling``; images of at most TILE_SIZE^2 pixels are ``off``."""
        setting = "tiles" if self.settings.tiling else self.settings.large_image_mode
        mode = resolve_mode(setting, options.tiling)
        return mode if pixels > self.settings.tile_size**2 else "off"

    async def _ground_image(
        self, image: Image.Image, phrases: tuple[str, ...], options: GroundingOptions, tiles: bool
    ) -> GroundingResult:
        """One image as held (fitted, or whole for ``tiles``) in its large-image mode; ``tiles`` false lowers
        ``tiles`` to ``refine`` (video frames are not tiled). Sub-requests share one deadline."""
        mode = self.large_image_mode(image.width * image.height, options)
        if mode == "off":
            return await self.ground_fitted(image, phrases, options)
        deadline = time.monotonic() + self.settings.request_timeout_s

        async def ground_crop(crop: Image.Image) -> GroundingResult:
            return await self.ground_fitted(crop, phrases, options, deadline)

        mode = mode if tiles else "refine"
        return await ground_large(image, phrases, mode, self.settings.tile_size, ground_crop)

    @property
    def _chunk(self) -> int:
        """Requests one caller may have in the queue at once."""
        return max(1, min(self.settings.max_batch_size, self.settings.max_queue))

    async def ground_fitted(
        self, image: Image.Image, phrases: tuple[str, ...], options: GroundingOptions, deadline: float | None = None
    ) -> GroundingResult:
        """``ground_one`` for an image of any size: one larger than ``fit`` allows is downscaled and mapped back."""
        smaller = self.fit.wh(image.size)
        if smaller is None:
            return await self.ground_one(image, phrases, options, deadline)
        resized = await anyio.to_thread.run_sync(image.resize, smaller, Image.Resampling.BICUBIC)
        return rescale_result(await self.ground_one(resized, phrases, options, deadline), image.size)

    async def ground_many(
        self, images: list[Image.Image], phrases: tuple[str, ...], options: GroundingOptions
    ) -> list[GroundingResult | BaseException]:
        """Ground each image, ``MAX_BATCH_SIZE`` at a time (one caller never fills the queue); errors per item.

        A large image is refined as LARGE_IMAGE_MODE says, but never tiled."""
        outcomes: list[GroundingResult | BaseException] = []
        for start in range(0, len(images), self._chunk):
            chunk = images[start : start + self._chunk]
            outcomes += await asyncio.gather(
                *(self._ground_image(image, phrases, options, tiles=False) for image in chunk),
                return_exceptions=True,
            )
        return outcomes

    async def ground_one(
        self, image: Image.Image, phrases: tuple[str, ...], options: GroundingOptions, deadline: float | None = None
    ):
        """One request through the batching scheduler: 503 busy at once when the queue is full, 504 on timeout
        (REQUEST_TIMEOUT_S, or what is left until ``deadline``, a ``time.monotonic()`` shared by sub-requests)."""
        serving = self._require_serving()
        timeout_s = self.settings.request_timeout_s
        if deadline is not None:
            timeout_s = min(timeout_s, deadline - time.monotonic())
            if timeout_s <= 0:
                raise RequestTimeout(f"no answer within REQUEST_TIMEOUT_S={self.settings.request_timeout_s:g} s")
        request = GroundingRequest(
            image, phrases, max_new_tokens=options.max_new_tokens, prompt_template=options.prompt_template
        )
        future = serving.scheduler.submit(request)
        if serving.outstanding == 0:
            serving.busy_since = time.monotonic()
        self._in_flight += 1
        serving.outstanding += 1
        self.metrics.in_flight.inc()
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(future), timeout=timeout_s)
        except asyncio.TimeoutError:  # the builtin TimeoutError on Python >= 3.11
            future.cancel()
            raise RequestTimeout(f"no answer within REQUEST_TIMEOUT_S={self.settings.request_timeout_s:g} s") from None
        finally:
            self._in_flight -= 1
            serving.outstanding -= 1
            self.metrics.in_flight.dec()
        self._served += 1
        return result.above(options.score_threshold).reviewed(self.settings.review_threshold)
