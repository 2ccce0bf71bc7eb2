"""The small interface every engine offers: images and phrases in, results out. No torch here."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

from PIL import Image

from app.engine.image_cache import CacheCounts
from app.engine.progress import ProgressClock
from app.errors import ChordError
from app.grounding.families import Family
from app.grounding.result import GroundingResult


@dataclass(frozen=True)
class GroundingRequest:
    """One image (upright RGB) and the phrases to find in it."""

    image: Image.Image
    phrases: tuple[str, ...]
    max_new_tokens: int | None = None
    prompt_template: str | None = None


@dataclass(frozen=True)
class EngineInfo:
    """What is serving: shown in the UI header, /health and logs."""

    model: str
    family: Family
    device: str
    dtype: str
    attn_impl: str
    backend: str
    quantization: str = "none"  # QUANTIZATION: none, int8 or int4 weights

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "family": self.family.value,
            "device": self.device,
            "dtype": self.dtype,
            "attn_impl": self.attn_impl,
            "backend": self.backend,
            "quantization": self.quantization,
        }


class BatchingEngine(Protocol):
    """An engine the batching scheduler can feed as requests arrive.

    ``ground == generate(prepare(...))`` and ``merge([prepare(a), prepare(b)]) == prepare(a + b)``: the
    scheduler prepares requests while the current batch generates and merges them into the next.
    With ``continuous`` true, ``start`` adds prepared requests to the running batch between two
    decoding steps; each future completes with ``(result, rows decoded alongside)``.
    """

    continuous: bool

    def prepare(self, requests: Sequence[GroundingRequest]) -> object: ...

    def merge(self, parts: Sequence[object]) -> object: ...

    def generate(self, requests: Sequence[GroundingRequest], prepared: object) -> list[GroundingResult]: ...

    def start(self, requests: Sequence[GroundingRequest], prepared: object) -> list[Future]: ...


class Engine(Protocol):
    """What the scheduler, the service and the command line need from a backend."""

    info: EngineInfo

    def ground(self, requests: Sequence[GroundingRequest]) -> list[GroundingResult | ChordError]:
        """Ground each request; results in the same order. May batch them into one generation.

        A request that failed on its own may get its ChordError in place of a result (the
        openai engine does); an exception raised instead fails the whole batch.
        """
        ...

    @property
    def batching(self) -> BatchingEngine | None:
        """The engine's batching side (itself, usually), or None when it batches on its own (a server)."""
        ...

    @property
    def reachable(self) -> bool:
        """False while the backend cannot answer (an engine behind HTTP that failed its last check)."""
        ...

    def health(self) -> dict | None:
        """What ``/health`` shows under ``engine`` (an engine behind HTTP), or None."""
        ...

    def gpu_memory(self) -> dict[str, tuple[float, float]]:
        """Per CUDA device ("cuda:0"), bytes the model holds (allocated) and torch reserved; empty on the CPU or
        behind HTTP."""
        ...

    def image_cache_counts(self) -> dict[str, CacheCounts]:
        """The image cache's counts by stage (IMAGE_CACHE_MB); empty where the engine keeps none."""
        ...

    def seconds_since_progress(self) -> float | None:
        """Seconds since the model last made progress (a step, a prefill); None where it cannot be seen."""
        ...

    def close(self) -> None:
        """Let go of the model (its process, its connections)."""
        ...


class ModelRunner(Protocol):
    """Where a transformers model runs: in this process (``LocalModel``) or its own (``ModelProcess``)."""

    info: EngineInfo
    eos_token_ids: set[int]
    continuous_unsupported: str | None  # why continuous batching cannot run this model; None when it can
    model: object | None  # the model object when it is in this process
    progress: ProgressClock  # ticked at every prefill and decoding step

    def generate_ids(self, inputs: dict, max_new_tokens: int) -> tuple:
        """(generated ids [batch, steps], log-probability of each chosen token [batch, steps]), on the CPU."""
        ...

    def start_ids(
        self, inputs: dict, limits: Sequence[int], pad_id: int, stop_ids: set[int], image_keys: Sequence | None = None
    ) -> list[Future]:
        """Add these prompts to the running batch; a future per row. A row with an image key may reuse (or
        leave) its image prefix's key/values in the image cache."""
        ...

    def image_cache_counts(self) -> CacheCounts:
        """Hits and misses of the image prefix cache where the model runs."""
        ...

    def gpu_memory(self) -> dict[str, tuple[float, float]]: ...

    def close(self) -> None: ...
