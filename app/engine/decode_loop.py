"""The loop that drives a ``ContinuousDecoder``, wherever the model runs (a thread here, or its own process).

Between two decoding steps it admits every group of prompts that has arrived, then steps once,
and reports each row the moment it is done. A failed prefill fails that group only; a failed
step fails the rows that were decoding (the decoder starts empty again).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch

from app.engine.continuous import ContinuousDecoder, FinishedRow
from app.engine.runtime import release_cuda_cache
from app.errors import ChordError, OutOfMemory

logger = logging.getLogger(__name__)


@dataclass
class Group:
    """Prompts prepared together (one left-padded processor batch), a key and a token limit per row, and per
    row its image's key for the prefix cache (None: not cached)."""

    inputs: dict[str, torch.Tensor]
    keys: list[Hashable]
    limits: list[int]
    image_keys: list[bytes | None] | None = None


def run_decode_loop(
    decoder: ContinuousDecoder,
    receive: Callable[[bool], list[Group] | None],
    admitted: Callable[[Group], None],
    finished: Callable[[Hashable, FinishedRow | Exception], None],
    progressed: Callable[[], None] = lambda: None,
) -> None:
    """Until ``receive`` returns None. ``receive(True)`` may block (nothing is decoding); ``receive(False)`` must not.

    ``admitted`` is told when a group's inputs are no longer needed; ``finished`` gets each row's answer or error;
    ``progressed`` after each prefill and each decoding step.
    """
    while True:
        groups = receive(decoder.size == 0)
        if groups is None:
            return
        for group in groups:
            try:
                done = decoder.admit(group.inputs, group.keys, group.limits, group.image_keys)
            except Exception as exc:  # noqa: BLE001 - this group fails; the running rows go on
                admitted(group)
                error = model_error(exc, len(group.keys))
                for key in group.keys:
                    finished(key, error)
                continue
            admitted(group)
            progressed()
            for row in done:
                finished(row.key, row)
        try:
            done = decoder.step()
            progressed()
        except Exception as exc:  # noqa: BLE001 - the rows decoding fail together; the loop goes on
            rows = decoder.abandon()
            error = model_error(exc, len(rows))
            for key in rows:
                finished(key, error)
            continue
        for row in done:
            finished(row.key, row)


def model_error(exc: Exception, rows: int) -> Exception:
    """What callers get for a failed forward pass: a clear out-of-memory error, or the fault by name (picklable)."""
    if isinstance(exc, torch.OutOfMemoryError):
        release_cuda_cache()
        return OutOfMemory(f"the GPU ran out of memory decoding {rows} requests; lower MAX_BATCH_SIZE or MAX_PIXELS")
    if isinstance(exc, ChordError):
        return exc
    logger.exception("decoding failed")
    return RuntimeError(f"{type(exc).__name__}: {exc}")
