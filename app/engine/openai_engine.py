"""The ``openai`` engine: grounding through any OpenAI-compatible server (vLLM, SGLang, ``transformers serve``).

Each request is one ``POST {ENGINE_URL}/v1/chat/completions`` with the image as a base64 data URL
and the same grounding prompt the in-process engine uses; the answer becomes the same result
object. Qwen2.5-VL answers in pixels of the image the *server's* processor resized, so Chord
computes that size with transformers' own ``smart_resize`` and the same min/max pixels, and
sends the image already at that size: a server whose max_pixels is at least MAX_PIXELS leaves it
as it is, so both sides agree on the coordinate system (docs/scale-out.md). Scores come from the
token log-probabilities the server returns (vLLM and SGLang do); without them they are None.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from PIL import Image
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

from app.engine.base import EngineInfo, GroundingRequest
from app.engine.pixels import checkpoint_processor_size, effective_pixel_range, image_processor_config
from app.errors import ChordError, EngineRejected, EngineTimeout, EngineUnavailable, ModelLoadError
from app.grounding.answers import build_result
from app.grounding.families import Family, family_from_model_type, family_from_name
from app.grounding.prompts import grounding_prompt
from app.grounding.result import GroundingResult
from app.grounding.scoring import decoded_prefixes
from app.settings import Settings

logger = logging.getLogger(__name__)

HEALTH_PROBE_INTERVAL_S = 2.0  # how often GET /v1/models is asked; /health reads the last answer
HEALTH_PROBE_TIMEOUT_S = 3.0
# Pixels per side of one visual token after merging (patch size x merge size), per family.
RESIZE_FACTOR = {Family.QWEN2_VL: 28, Family.QWEN2_5_VL: 28, Family.QWEN3_VL: 32}
# Model-name fragments that name a family, most specific first (used only when ENGINE_FAMILY=auto
# and MODEL_PATH is not a local checkpoint).
_NAME_FAMILIES = (("qwen2.5-vl", Family.QWEN2_5_VL), ("qwen3-vl", Family.QWEN3_VL), ("qwen2-vl", Family.QWEN2_VL))
_ERROR_EXCERPT = 300


class OpenAIEngine:
    """Grounding over HTTP; ``ground`` sends a batch's requests concurrently (up to ENGINE_CONCURRENCY)."""

    def __init__(self, settings: Settings, family: Family, pixel_range: tuple[int, int], resize_factor: int):
        self.settings = settings
        self.family = family
        self.pixel_range = pixel_range
        self.resize_factor = resize_factor
        self.url = settings.engine_url.rstrip("/")
        self.info = EngineInfo(
            model=settings.engine_model,
            family=family,
            device=self.url,
            dtype="remote",
            attn_impl="remote",
            backend="openai",
            quantization="remote",
        )
        headers = {"Authorization": f"Bearer {settings.engine_api_key}"} if settings.engine_api_key else {}
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(settings.engine_timeout_s, connect=settings.engine_connect_timeout_s),
            limits=httpx.Limits(
                max_connections=settings.engine_pool_size, max_keepalive_connections=settings.engine_pool_size
            ),
        )
        self._pool = ThreadPoolExecutor(max_workers=settings.engine_concurrency, thread_name_prefix="chord-engine")
        self._reachable: bool | None = None
        self._last_problem: str | None = None
        self._checked_at: float | None = None
        self._stop = threading.Event()
        self._prober = threading.Thread(target=self._probe_loop, name="chord-engine-probe", daemon=True)

    @classmethod
    def load(cls, settings: Settings) -> OpenAIEngine:
        """No weights to load: settle the family and pixel range, then start watching the engine."""
        model_dir = Path(settings.resolved_model_path())
        local = model_dir.is_dir()
        family = _engine_family(settings, model_dir if local else None)
        processor = image_processor_config(model_dir) if local else {}
        factor = RESIZE_FACTOR[family]
        if processor.get("patch_size") and processor.get("merge_size"):
            factor = int(processor["patch_size"]) * int(processor["merge_size"])
        pixel_range = effective_pixel_range(settings, checkpoint_processor_size(processor))
        engine = cls(settings, family, pixel_range, factor)
        logger.info(
            "engine %s at %s: %s, pixels %d..%d (resize factor %d); keep the engine's min/max pixels in step",
            settings.engine_model, engine.url, family.display_name, *engine.pixel_range, factor,
        )  # fmt: skip
        engine._prober.start()
        return engine

    @property
    def batching(self) -> None:
        """The engine server batches the concurrent requests itself."""
        return None

    def gpu_memory(self) -> dict[str, tuple[float, float]]:
        """The engine server's GPUs are its own (and its own metrics')."""
        return {}

    def image_cache_counts(self) -> dict:
        return {}  # the server behind ENGINE_URL keeps its own caches

    def seconds_since_progress(self) -> None:
        """The engine server's progress is its own (it has its own health); its reachability is probed."""
        return None

    def close(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    # --- grounding -----------------------------------------------------------------------
    def ground(self, requests: Sequence[GroundingRequest]) -> list[GroundingResult | ChordError]:
        """One chat completion per request, concurrently; a failed one gets its error in its place."""
        futures = [self._pool.submit(self._ground_one, request) for request in requests]
        results: list[GroundingResult | ChordError] = []
        for future in futures:
            try:
                results.append(future.result())
            except ChordError as exc:
                results.append(exc)
        return results

    def input_wh(self, image_wh: tuple[int, int]) -> tuple[int, int]:
        """The size the server's processor resizes an image of ``image_wh`` to (its own smart_resize)."""
        height, width = smart_resize(
            image_wh[1], image_wh[0], factor=self.resize_factor, min_pixels=self.pixel_range[0],
            max_pixels=self.pixel_range[1],
        )  # fmt: skip
        return int(width), int(height)

    def _ground_one(self, request: GroundingRequest) -> GroundingResult:
        started = time.perf_counter()
        input_wh = self.input_wh(request.image.size)
        prompt = grounding_prompt(request.phrases, self.family, request.prompt_template)
        body = {
            "model": self.settings.engine_model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": _data_url(request.image, input_wh)}},
                        {"type": "text", "text": prompt},
                    ],
                }
            ],
            "max_tokens": request.max_new_tokens or self.settings.max_new_tokens,
            "temperature": 0.0,
            "logprobs": True,
        }
        answer = self._post(body)
        text, prefixes, logprobs = _read_answer(answer)
        return build_result(
            text=text,
            family=self.family,
            image_wh=request.image.size,
            input_wh=input_wh,
            phrases=request.phrases,
            model=self.info.model,
            latency_ms=(time.perf_counter() - started) * 1000,
            token_prefixes=prefixes,
            token_logprobs=logprobs,
        )

    def _post(self, body: dict) -> dict:
        where = f"the engine at {self.url}"
        try:
            response = self._client.post(f"{self.url}/v1/chat/completions", json=body)
        except httpx.ConnectTimeout as exc:
            limit = f"ENGINE_CONNECT_TIMEOUT_S={self.settings.engine_connect_timeout_s:g} s"
            raise self._unreachable(f"no connection to {where} within {limit}") from exc
        except httpx.TimeoutException as exc:
            limit = f"ENGINE_TIMEOUT_S={self.settings.engine_timeout_s:g} s"
            raise EngineTimeout(f"{where} gave no answer within {limit}") from exc
        except httpx.TransportError as exc:
            raise self._unreachable(f"{where} could not be reached: {type(exc).__name__}: {exc}") from exc
        status = response.status_code
        self._seen(reachable=status < 500, problem=f"HTTP {status}")
        if status >= 500:
            raise EngineUnavailable(f"{where} failed: HTTP {status}: {_excerpt(response)}")
        if status >= 400:
            raise EngineRejected(f"{where} refused the request: HTTP {status}: {_excerpt(response)}")
        try:
            return response.json()
        except ValueError:
            raise EngineUnavailable(f"the engine at {self.url} answered with something that is not JSON") from None

    # --- reachability ----------------------------------------------------------------------
    def health(self) -> dict:
        """The engine's reachability as last seen (by the probe or a request); never blocks."""
        checked = None if self._checked_at is None else round(time.monotonic() - self._checked_at, 1)
        body = {"url": self.url, "reachable": bool(self._reachable), "checked_s_ago": checked}
        if self._last_problem and not self._reachable:
            body["problem"] = self._last_problem
        return body

    @property
    def reachable(self) -> bool:
        return bool(self._reachable)

    def _probe_loop(self) -> None:
        while not self._stop.is_set():
            self._probe()
            self._stop.wait(HEALTH_PROBE_INTERVAL_S)

    def _probe(self) -> None:
        try:
            response = self._client.get(f"{self.url}/v1/models", timeout=HEALTH_PROBE_TIMEOUT_S)
        except httpx.HTTPError as exc:
            self._seen(reachable=False, problem=f"GET /v1/models: {type(exc).__name__}: {exc}")
            return
        if response.status_code >= 500:
            self._seen(reachable=False, problem=f"GET /v1/models: HTTP {response.status_code}")
        else:
            self._seen(reachable=True)

    def _seen(self, reachable: bool, problem: str | None = None) -> None:
        if reachable and self._reachable is not True:
            logger.info("engine at %s is reachable", self.url)
        elif not reachable and self._reachable is not False:
            logger.warning("engine at %s is unreachable: %s", self.url, problem)
        self._reachable = reachable
        self._last_problem = problem
        self._checked_at = time.monotonic()

    def _unreachable(self, message: str) -> EngineUnavailable:
        self._seen(reachable=False, problem=message)
        return EngineUnavailable(message)


def _engine_family(settings: Settings, model_dir: Path | None) -> Family:
    """ENGINE_FAMILY, else the local checkpoint's config.json, else the model name; never a guess from numbers."""
    if settings.engine_family != "auto":
        return family_from_name(settings.engine_family)
    if model_dir is not None and (model_dir / "config.json").is_file():
        model_type = _read_json(model_dir / "config.json").get("model_type", "")
        try:
            return family_from_model_type(model_type)
        except ValueError as exc:
            raise ModelLoadError(f"MODEL_PATH {str(model_dir)!r}: {exc}") from None
    name = settings.engine_model.lower()
    for fragment, family in _NAME_FAMILIES:
        if fragment in name:
            return family
    raise ModelLoadError(
        f"cannot tell the coordinate system of ENGINE_MODEL={settings.engine_model!r}: set ENGINE_FAMILY "
        "(qwen2-vl, qwen2.5-vl or qwen3-vl), or MODEL_PATH to a local copy of the checkpoint"
    )


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _data_url(image: Image.Image, input_wh: tuple[int, int]) -> str:
    """The image at the size the server will use (bicubic, as the processor resizes), as a PNG data URL."""
    if image.size != input_wh:
        image = image.resize(input_wh, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _read_answer(answer: dict) -> tuple[str, list[str] | None, list[float] | None]:
    """Text, decoded token prefixes and log-probabilities of a chat completion; None, None without logprobs."""
    try:
        choice = answer["choices"][0]
        text = choice["message"].get("content") or ""
    except (KeyError, IndexError, TypeError, AttributeError):
        raise EngineUnavailable("the engine answered with something that is not a chat completion") from None
    entries = ((choice.get("logprobs") or {}).get("content")) or []
    try:
        pieces = [bytes(e["bytes"]) if e.get("bytes") is not None else e["token"] for e in entries]
        logprobs = [float(e["logprob"]) for e in entries]
    except (KeyError, TypeError, ValueError):
        return text, None, None
    prefixes = decoded_prefixes(pieces, text)
    if prefixes is None:
        return text, None, None
    return text, prefixes, logprobs[: len(prefixes)]


def _excerpt(response: httpx.Response) -> str:
    text = response.text.strip().replace("\n", " ")
    return text[:_ERROR_EXCERPT] + ("..." if len(text) > _ERROR_EXCERPT else "")
