"""How ``chordctl swap`` reaches a running server: a request file in the run folder, then SIGUSR1.

Only someone who can write the server's run folder and signal its process (the operator, the user
Supervisor runs it as) can ask for a swap; nothing reaches it over HTTP, so no client ever names a
model path. The request, ``run/swap/request-PORT.json``:

    {"id": "...", "model_path": "...", "canary_phrase": "...", "watch_s": 10, "in_place": false}

with the canary image, when given, beside it as ``run/swap/ID.canary``. Progress is appended to
``run/swap/ID.jsonl``, one JSON object a line (``stage``, ``message``), the last with ``final: true``,
``ok``, ``model`` and ``reason``.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from app.errors import ChordError
from app.service.service import GroundingService
from app.service.swap import Canary, ModelSwap, SwapOutcome, SwapPlan, default_canary
from app.service.uploads import decode_upload
from app.settings import Settings

logger = logging.getLogger(__name__)

SWAP_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_WATCH_S = 600.0


class SwapControl:
    def __init__(
        self,
        service: GroundingService,
        port: int,
        run_dir: Path,
        on_swapped: Callable[[Settings], None] | None = None,
    ):
        """``on_swapped`` gets the settings serving after each swap that succeeded."""
        self._service = service
        self._on_swapped = on_swapped
        self._folder = run_dir / "swap"
        self._request = self._folder / f"request-{port}.json"
        self._swap = ModelSwap(service)

    def install(self) -> None:
        """Take swap requests on SIGUSR1 (call from the main thread, before the server runs)."""
        signal.signal(signal.SIGUSR1, lambda *_: self.wake())
        logger.info("model swaps: 'chordctl swap' (a request in %s, then SIGUSR1)", self._folder)

    def wake(self) -> None:
        threading.Thread(target=self.take_request, name="chord-swap", daemon=True).start()

    def take_request(self) -> SwapOutcome | None:
        """Read and remove the request file, run the swap, report it; None without a (valid) request."""
        try:
            text = self._request.read_text()
            self._request.unlink()
        except FileNotFoundError:
            logger.warning("SIGUSR1 without a swap request at %s: ignored", self._request)
            return None
        try:
            request = json.loads(text)
            swap_id = str(request["id"])
        except (ValueError, KeyError, TypeError):
            logger.error("unreadable swap request %s: %r", self._request, text[:200])
            return None
        if not SWAP_ID.match(swap_id):
            logger.error("swap request with a bad id %r: ignored", swap_id[:80])
            return None
        progress = self._folder / f"{swap_id}.jsonl"

        def say(stage: str, message: str, **fields) -> None:
            line = {"t": round(time.time(), 3), "stage": stage, "message": message, **fields}
            with progress.open("a", encoding="utf-8") as out:
                out.write(json.dumps(line, ensure_ascii=False) + "\n")

        try:
            plan = self._plan(swap_id, request)
        except (ChordError, ValueError, TypeError, KeyError) as exc:
            reason = exc.message if isinstance(exc, ChordError) else f"bad swap request: {exc}"
            outcome = SwapOutcome(False, self._service.health().get("model", ""), reason)
        else:
            say("start", f"swap to {plan.model_path}" + (" in place" if plan.in_place else ""))
            outcome = self._swap.run(plan, say)
        if outcome.ok and self._on_swapped is not None:
            self._on_swapped(self._service.settings)
        verdict = "swapped" if outcome.ok else "not swapped"
        fields = {"ok": outcome.ok, "model": outcome.model, "reason": outcome.reason}
        say("result", verdict, final=True, **fields, seconds=round(outcome.seconds, 1), downtime_s=outcome.downtime_s)
        return outcome

    def _plan(self, swap_id: str, request: dict) -> SwapPlan:
        model_path = request["model_path"]
        if not isinstance(model_path, str) or not model_path:
            raise ValueError("model_path must be a non-empty string")
        watch_s = min(MAX_WATCH_S, max(0.0, float(request.get("watch_s", 10))))
        return SwapPlan(model_path, self._canary(swap_id, request), watch_s, bool(request.get("in_place", False)))

    def _canary(self, swap_id: str, request: dict) -> Canary:
        image_file = self._folder / f"{swap_id}.canary"
        if not image_file.exists():
            return default_canary()
        data = image_file.read_bytes()
        image_file.unlink()
        service = self._service
        picture = decode_upload(data, service.upload_limits, service.fit)
        phrases = service.phrases(str(request.get("canary_phrase") or ""))
        return Canary(picture.image, phrases, need_boxes=True)
