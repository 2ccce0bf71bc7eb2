"""The in-process engine: a Qwen VL checkpoint through Hugging Face transformers.

Loads exactly as a user's 7B loads (``AutoProcessor`` + ``AutoModelForImageTextToText``
``from_pretrained``), runs one left-padded batched greedy ``generate`` per call, and turns each
answer into a result in original-image pixels using the size the processor really resized that
image to.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import torch
from PIL import Image
from transformers import (
    AutoProcessor,
    BatchFeature,
)

from app.engine.base import GroundingRequest, ModelRunner
from app.engine.image_cache import CacheCounts, image_key
from app.engine.local_model import LocalModel, detect_family
from app.engine.model_spawn import SpawnedModel, spawn_model_process
from app.engine.pixels import effective_pixel_range
from app.engine.processor_cache import CachedImageProcessing
from app.errors import ModelLoadError
from app.grounding.answers import build_result
from app.grounding.families import Family
from app.grounding.prompts import grounding_prompt
from app.grounding.result import GroundingResult
from app.grounding.tiling import crop_result, padded_wh
from app.settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class PreparedBatch:
    """Processor output for one batch, and when its preparation started."""

    inputs: BatchFeature
    started: float
    image_whs: list[tuple[int, int]]  # what the processor was given (an extreme strip is padded)
    image_keys: list[bytes | None]  # each image's key for the image cache (None: the cache is off)


def merge_left_padded(parts: Sequence[BatchFeature], pad_id: int) -> BatchFeature:
    """Concatenate processor outputs: per-token rows are re-padded on the left, the rest stacked."""
    length = max(part["input_ids"].shape[1] for part in parts)
    merged = {}
    for key in parts[0]:
        values = [part[key] for part in parts]
        if all(v.dim() == 2 and v.shape == part["input_ids"].shape for v, part in zip(values, parts, strict=True)):
            fill = pad_id if key == "input_ids" else 0
            values = [torch.nn.functional.pad(v, (length - v.shape[1], 0), value=fill) for v in values]
        merged[key] = torch.cat(values)
    return BatchFeature(merged)


class TransformersEngine:
    """A processor here and a model runner (in this process, or its own); ``ground`` is not concurrent."""

    def __init__(self, runner: ModelRunner, processor, family: Family, settings: Settings):
        self.runner = runner
        self.processor = processor
        self.family = family
        self.info = runner.info
        self.settings = settings
        self._patch_size = int(processor.image_processor.patch_size)
        self._stop_ids = _stop_token_ids(runner.eos_token_ids, processor)
        self.pixel_range = effective_pixel_range(settings, processor.image_processor.size)
        # IMAGE_CACHE_MB: the processor's work per image here, the prompt prefix's key/values where the model runs.
        self._image_cache = settings.image_cache_mb > 0
        cache_bytes = settings.image_cache_mb * 2**20
        self._processing = CachedImageProcessing(processor, cache_bytes) if self._image_cache else None

    @property
    def model(self):
        """The model object when it runs in this process (None when it has its own process)."""
        return self.runner.model

    @classmethod
    def load(
        cls, settings: Settings, own_process: bool = False, spawned: SpawnedModel | None = None
    ) -> TransformersEngine:
        """The processor here; the model here, or with ``own_process`` in a child process (``MODEL_PROCESS``),
        ``spawned`` already when given (``spawn_model_process``, started before this process imported torch)."""
        path = settings.resolved_model_path()
        if own_process or spawned is not None:
            from app.engine.model_process import ModelProcess

            spawned = spawned or spawn_model_process(settings)
            runner = ModelProcess.start(spawned.process, spawned.connection)
            family = detect_family(path)
        else:
            family = detect_family(path)
            runner = LocalModel.load(settings)
        try:
            processor = AutoProcessor.from_pretrained(path)
        except (OSError, ValueError) as exc:
            runner.close()
            raise ModelLoadError(f"could not load the processor at MODEL_PATH={path!r}: {exc}") from exc
        processor.tokenizer.padding_side = "left"
        return cls(runner, processor, family, settings)

    @property
    def batching(self) -> TransformersEngine:
        return self

    @property
    def reachable(self) -> bool:
        return True

    def health(self) -> None:
        return None

    def seconds_since_progress(self) -> float:
        return self.runner.progress.seconds_since()

    def close(self) -> None:
        """Stop the model's process, if it has one."""
        self.runner.close()

    def gpu_memory(self) -> dict[str, tuple[float, float]]:
        """Per CUDA device, bytes torch holds and reserves for the model, wherever the model runs."""
        return self.runner.gpu_memory()

    def ground(self, requests: Sequence[GroundingRequest]) -> list[GroundingResult]:
        if not requests:
            return []
        return self.generate(requests, self.prepare(requests))

    def prepare(self, requests: Sequence[GroundingRequest]) -> PreparedBatch:
        """Processor work (prompt, resize, patches, padding); runs while another batch generates."""
        started = time.perf_counter()
        images = [_model_image(r.image) for r in requests]
        keys = [image_key(image, self.pixel_range) if self._image_cache else None for image in images]
        inputs = self._prepare(requests, images, keys)
        return PreparedBatch(inputs, started, [image.size for image in images], keys)

    def merge(self, parts: Sequence[PreparedBatch]) -> PreparedBatch:
        """One batch from parts prepared separately: exactly what preparing them together gives."""
        if len(parts) == 1:
            return parts[0]
        pad_id = self.processor.tokenizer.pad_token_id
        inputs = merge_left_padded([part.inputs for part in parts], pad_id)
        image_whs = [wh for part in parts for wh in part.image_whs]
        keys = [key for part in parts for key in part.image_keys]
        return PreparedBatch(inputs, min(part.started for part in parts), image_whs, keys)

    def generate(self, requests: Sequence[GroundingRequest], prepared: PreparedBatch) -> list[GroundingResult]:
        """One left-padded batched greedy generation; a result per request, in order."""
        input_whs = self._input_whs(prepared.inputs["image_grid_thw"])
        limits = [r.max_new_tokens or self.settings.max_new_tokens for r in requests]
        generated, logprobs = self.runner.generate_ids(dict(prepared.inputs), max(limits))
        latency_ms = (time.perf_counter() - prepared.started) * 1000
        return [
            self._result(request, prepared, row, input_whs[row], generated[row].tolist(), logprobs[row].tolist(),
                         limits[row], latency_ms)
            for row, request in enumerate(requests)
        ]  # fmt: skip

    def image_cache_counts(self) -> dict[str, CacheCounts]:
        """Hits and misses of the image cache by stage: ``processor`` (its output, here) and ``prefix`` (the
        key/values through the image, where the model runs; with continuous batching); empty when it is off."""
        if self._processing is None:
            return {}
        return {"processor": self._processing.counts(), "prefix": self.runner.image_cache_counts()}

    @property
    def continuous(self) -> bool:
        """Whether ``start`` can add requests to a running batch (continuous batching) for this model."""
        return self.runner.continuous_unsupported is None

    def start(self, requests: Sequence[GroundingRequest], prepared: PreparedBatch) -> list[Future]:
        """Add these requests to the running batch; a future per request, of (result, rows decoded alongside)."""
        input_whs = self._input_whs(prepared.inputs["image_grid_thw"])
        limits = [r.max_new_tokens or self.settings.max_new_tokens for r in requests]
        pad_id = self.processor.tokenizer.pad_token_id
        rows = self.runner.start_ids(dict(prepared.inputs), limits, pad_id, self._stop_ids, prepared.image_keys)
        results = []
        for index, (request, row) in enumerate(zip(requests, rows, strict=True)):
            result: Future = Future()

            def complete(row: Future, index=index, request=request, result=result) -> None:
                try:
                    finished = row.result()
                    latency_ms = (time.perf_counter() - prepared.started) * 1000
                    grounded = self._result(request, prepared, index, input_whs[index], finished.token_ids,
                                            finished.logprobs, limits[index], latency_ms)  # fmt: skip
                except Exception as exc:  # noqa: BLE001 - the caller gets the error
                    result.set_exception(exc)
                    return
                result.set_result((grounded, finished.mean_rows))

            row.add_done_callback(complete)
            results.append(result)
        return results

    def _result(
        self, request: GroundingRequest, prepared: PreparedBatch, row: int, input_wh: tuple[int, int],
        token_ids: list[int], logprobs: list[float], limit: int, latency_ms: float,
    ) -> GroundingResult:  # fmt: skip
        """One answer's ids as a result in original-image pixels."""
        ids = self._answer_ids(token_ids, limit)
        prefixes = self._decoded_prefixes(ids)
        result = build_result(
            text=prefixes[-1] if prefixes else "",
            family=self.family,
            image_wh=prepared.image_whs[row],
            input_wh=input_wh,
            phrases=request.phrases,
            model=self.info.model,
            latency_ms=latency_ms,
            token_prefixes=prefixes,
            token_logprobs=logprobs[: len(ids)],
        )
        if prepared.image_whs[row] != request.image.size:
            result = crop_result(result, request.image.size)
        return result

    def _prepare(self, requests: Sequence[GroundingRequest], images: list[Image.Image], keys: list[bytes | None]):
        texts = []
        for request in requests:
            prompt = grounding_prompt(request.phrases, self.family, request.prompt_template)
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            texts.append(self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        size = {"shortest_edge": self.pixel_range[0], "longest_edge": self.pixel_range[1]}
        if self._processing is not None:
            return self._processing(texts, images, keys, size)
        return self.processor(
            text=texts,
            images=images,
            padding=True,
            return_tensors="pt",
            images_kwargs={
                "size": size,
                "do_convert_rgb": any(image.mode != "RGB" for image in images),  # else a copy of each image
            },
        )

    def _input_whs(self, grid_thw: torch.Tensor) -> list[tuple[int, int]]:
        """The size each image was really resized to: its patch grid times the patch size."""
        return [(int(w) * self._patch_size, int(h) * self._patch_size) for _, h, w in grid_thw.tolist()]

    def _answer_ids(self, token_ids: list[int], limit: int) -> list[int]:
        ids = token_ids[:limit]
        for i, token in enumerate(ids):
            if token in self._stop_ids:
                return ids[:i]
        return ids

    def _decoded_prefixes(self, ids: list[int]) -> list[str]:
        """Decoded text of the first 1..n answer tokens, special tokens kept (Qwen2-VL boxes are special tokens)."""
        if not ids:
            return []
        return self.processor.tokenizer.batch_decode(
            [ids[: i + 1] for i in range(len(ids))], skip_special_tokens=False, clean_up_tokenization_spaces=False
        )


def _model_image(image: Image.Image) -> Image.Image:
    """The image as the processor can take it: an extreme strip is padded (grey, at its right or bottom)."""
    canvas_wh = padded_wh(image.size)
    if canvas_wh is None:
        return image
    canvas = Image.new("RGB", canvas_wh, (128, 128, 128))
    canvas.paste(image, (0, 0))
    return canvas


def _stop_token_ids(eos_token_ids: set[int], processor) -> set[int]:
    ids = set(eos_token_ids)
    if processor.tokenizer.pad_token_id is not None:
        ids.add(processor.tokenizer.pad_token_id)
    return ids
