"""Swapping the serving model without stopping the server.

The new model loads beside the old one (its own model process), answers a canary request, and only
then takes the traffic: new requests go to it, the old one finishes what it holds. For a watch
period the service must stay healthy; if it does not, traffic goes back to the old model, which is
let go only when the watch is over. Any failure leaves the old model serving and is reported with
its reason. ``in_place`` (a GPU too small for two models) lets the old model go first and says how
long requests were refused.

Why in the server's own process: the model already runs in a child process, so two models side by
side are two children; the port, the Gradio session state and the queue stay where they are, and
no front process or proxy reload stands between a client and the answer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image, ImageDraw

from app.engine.base import GroundingRequest
from app.errors import ChordError
from app.grounding.result import GroundingResult
from app.service.service import GroundingService, Serving

logger = logging.getLogger(__name__)

HEALTH_POLL_S = 0.2


@dataclass(frozen=True)
class Canary:
    """A request the new model must answer, with a well-formed result, before it gets any traffic."""

    image: Image.Image
    phrases: tuple[str, ...]
    need_boxes: bool = False  # the operator's own canary must find something; the built-in one need not


def default_canary() -> Canary:
    """A red square on grey: any grounding model answers it; its answer must be well-formed, not right."""
    image = Image.new("RGB", (448, 336), (150, 150, 150))
    ImageDraw.Draw(image).rectangle((160, 100, 280, 220), fill=(220, 40, 40))
    return Canary(image, ("the red square",))


@dataclass(frozen=True)
class SwapPlan:
    model_path: str
    canary: Canary = field(default_factory=default_canary)
    watch_s: float = 10.0  # after the switch, how long the new model must stay healthy
    in_place: bool = False


@dataclass(frozen=True)
class SwapOutcome:
    ok: bool
    model: str  # what serves afterwards (the checkpoint folder's name)
    reason: str = ""  # why the swap failed
    seconds: float = 0.0
    downtime_s: float | None = None  # in place: from the old model's stop until a model served again


class SwapFailed(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def canary_problem(outcome: GroundingResult | ChordError, image_size: tuple[int, int], need_boxes: bool) -> str | None:
    """What is wrong with a canary answer, or None when it is well-formed: no error, boxes inside the image,
    one label and score per box, and (for the operator's own canary) at least one box."""
    if isinstance(outcome, ChordError):
        return f"the canary request failed: {outcome.message}"
    w, h = image_size
    if outcome.image_size != [w, h]:
        return f"the canary answer is for a {outcome.image_size} image, not {w}x{h}"
    if not len(outcome.boxes) == len(outcome.labels) == len(outcome.scores):
        return "the canary answer's boxes, labels and scores do not line up"
    for x1, y1, x2, y2 in outcome.boxes:
        if not (0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h):
            return f"the canary answer has a box outside the image: {[x1, y1, x2, y2]}"
    if need_boxes and not outcome.boxes:
        return f"the canary found nothing for {list(outcome.phrases)} (raw answer: {outcome.text[:200]!r})"
    return None


class ModelSwap:
    """One swap at a time on a service; ``run`` reports each stage through ``say`` and returns the outcome."""

    def __init__(self, service: GroundingService):
        self._service = service
        self._lock = threading.Lock()

    def run(self, plan: SwapPlan, say: Callable[[str, str], None]) -> SwapOutcome:
        if not self._lock.acquire(blocking=False):
            return SwapOutcome(False, self._serving_model(), "another swap is running")
        started = time.monotonic()
        try:
            downtime = self._in_place(plan, say) if plan.in_place else self._beside(plan, say)
        except SwapFailed as failure:
            say("failed", failure.reason)
            logger.error("model swap to %s failed: %s", plan.model_path, failure.reason)
            return SwapOutcome(False, self._serving_model(), failure.reason, time.monotonic() - started)
        finally:
            self._lock.release()
        took = time.monotonic() - started
        say("done", f"{self._serving_model()} serves (swap took {took:.1f} s)")
        logger.info("model swap to %s done in %.1f s", plan.model_path, took)
        return SwapOutcome(True, self._serving_model(), seconds=took, downtime_s=downtime)

    # --- the two ways ---------------------------------------------------------------------
    def _beside(self, plan: SwapPlan, say: Callable[[str, str], None]) -> None:
        service = self._service
        new = self._load(plan, say)
        previous = service.switch_to(new)
        say("switched", f"new requests go to {new.engine.info.model}")
        if previous is not None:
            service.retire(previous, close_engine=False)  # answers what it holds; kept for a switch back
        problem = self._watch(plan.watch_s, say)
        if problem is not None:
            if previous is not None:
                service.switch_to(service.serve_engine(previous.engine, previous.settings, previous.load_seconds))
            self._drop(new)
            raise SwapFailed(f"{problem}; back to {self._serving_model()}")
        if previous is not None:
            previous.engine.close()

    def _in_place(self, plan: SwapPlan, say: Callable[[str, str], None]) -> float:
        service = self._service
        stopped = time.monotonic()
        previous = service.switch_to(None)
        if previous is not None:
            model = previous.engine.info.model
            say("stopping", f"{model} stops first (in place): requests get 503 until the new model serves")
            service.retire(previous)
        try:
            new = self._load(plan, say)
            service.switch_to(new)
            problem = self._watch(plan.watch_s, say)
            if problem is not None:
                service.switch_to(None)
                self._drop(new)
                raise SwapFailed(problem)
        except SwapFailed as failure:
            if previous is None:
                raise
            say("restoring", f"loading {previous.settings.model_path} again")
            try:
                service.switch_to(service.load_serving(previous.settings))
            except ChordError as exc:
                raise SwapFailed(f"{failure.reason}; and the old model did not load again: {exc.message}") from None
            down = time.monotonic() - stopped
            raise SwapFailed(f"{failure.reason}; the old model serves again after {down:.1f} s down") from None
        down = time.monotonic() - stopped
        say("downtime", f"requests were refused for {down:.1f} s")
        return down

    # --- steps ----------------------------------------------------------------------------
    def _load(self, plan: SwapPlan, say: Callable[[str, str], None]) -> Serving:
        service = self._service
        settings = service.settings.model_copy(update={"model_path": plan.model_path})
        say("loading", f"loading {plan.model_path}")
        try:
            serving = service.load_serving(settings)
        except ChordError as exc:
            raise SwapFailed(f"the new model did not load: {exc.message}") from None
        say("loaded", f"{serving.engine.info.model} loaded in {serving.load_seconds:.1f} s")
        canary = plan.canary
        request = GroundingRequest(canary.image, canary.phrases)
        try:
            (outcome,) = serving.engine.ground([request])
        except ChordError as exc:
            outcome = exc
        except Exception as exc:  # noqa: BLE001 - whatever the new model does wrong fails the swap, not the server
            outcome = ChordError(f"{type(exc).__name__}: {exc}")
        problem = canary_problem(outcome, canary.image.size, canary.need_boxes)
        if problem is not None:
            service.retire(serving)
            raise SwapFailed(problem)
        say("canary", f"the canary was answered with {len(outcome.boxes)} box(es) in {outcome.latency_ms:.0f} ms")
        return serving

    def _watch(self, watch_s: float, say: Callable[[str, str], None]) -> str | None:
        """None when the service stays healthy for ``watch_s`` seconds; else what went wrong."""
        say("watching", f"watching the new model for {watch_s:g} s")
        deadline = time.monotonic() + watch_s
        while time.monotonic() < deadline:
            if not self._service.healthy:
                return f"the new model turned unhealthy: /health says {self._service.health()['status']}"
            time.sleep(HEALTH_POLL_S)
        return None

    def _drop(self, serving: Serving) -> None:
        """Let a new model that failed its watch go at once: what it holds fails now instead of waiting for it."""
        serving.engine.close()
        self._service.retire(serving, close_engine=False)

    def _serving_model(self) -> str:
        return self._service.health().get("model", "")
