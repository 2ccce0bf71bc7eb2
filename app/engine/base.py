"""The small interface every engine offers: images and phrases in, results out. No torch here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from PIL import Image

from app.errors import ChordError
from app.families import Family
from app.result import GroundingResult


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

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "family": self.family.value,
            "device": self.device,
            "dtype": self.dtype,
            "attn_impl": self.attn_impl,
            "backend": self.backend,
        }


class Engine(Protocol):
    """What the scheduler, server and CLI need from a backend.

    An engine may also offer ``prepare(requests)``, ``merge(prepared_parts)`` and
    ``generate(requests, prepared)`` (with ``ground == generate(prepare(...))`` and
    ``merge([prepare(a), prepare(b)]) == prepare(a + b)``): the batching scheduler then prepares
    requests as they arrive, while the current batch generates, and merges them into the next.
    """

    info: EngineInfo

    def ground(self, requests: Sequence[GroundingRequest]) -> list[GroundingResult | ChordError]:
        """Ground each request; results in the same order. May batch them into one generation.

        A request that failed on its own may get its ChordError in place of a result (the
        openai engine does); an exception raised instead fails the whole batch.
        """
        ...
