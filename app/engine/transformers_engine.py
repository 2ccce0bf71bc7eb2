"""The in-process engine: a Qwen VL checkpoint through Hugging Face transformers.

Loads exactly as a user's 7B loads (``AutoProcessor`` + ``AutoModelForImageTextToText``
``from_pretrained``), runs one left-padded batched greedy ``generate`` per call, and turns each
answer into a result in original-image pixels using the size the processor really resized that
image to.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    BatchFeature,
    LogitsProcessor,
    LogitsProcessorList,
)

from app.answers import build_result
from app.engine.base import EngineInfo, GroundingRequest
from app.engine.continuous import ContinuousDecoder, unsupported_reason
from app.engine.decode_loop import Group, run_decode_loop
from app.engine.patch_embedding import use_linear_patch_embedding
from app.engine.pixels import effective_pixel_range
from app.engine.runtime import (
    configure_cpu_threads,
    cuda_memory_allocated,
    dtype_name,
    release_cuda_cache,
    resolve_attn_impl,
    resolve_device,
    resolve_dtype,
)
from app.errors import ModelLoadError, OutOfMemory
from app.families import Family, family_from_model_type
from app.model_path import require_model_path
from app.prompts import grounding_prompt
from app.result import GroundingResult
from app.settings import DEMO_MODEL_DIR, DEMO_MODEL_NAME, Settings, parse_max_memory
from app.tiling import crop_result, padded_wh

logger = logging.getLogger(__name__)


class ChosenTokenLogprobs(LogitsProcessor):
    """Records, at each step, the log-probability of the token greedy decoding is about to pick.

    It runs last and returns the scores unchanged, so the argmax it sees is the chosen token.
    Keeps O(batch) numbers per step instead of the full vocabulary.
    """

    def __init__(self) -> None:
        self.logprobs: list[torch.Tensor] = []
        self.tokens: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logprobs = torch.log_softmax(scores.float(), dim=-1)
        best, token = logprobs.max(dim=-1)
        self.logprobs.append(best.cpu())
        self.tokens.append(token.cpu())
        return scores


@dataclass
class PreparedBatch:
    """Processor output for one batch, and when its preparation started."""

    inputs: BatchFeature
    started: float
    image_whs: list[tuple[int, int]]  # what the processor was given (an extreme strip is padded)


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


class LocalModel:
    """The model in this process: greedy batched ``generate`` (``generate_ids``), or continuous batching
    on a decoding thread (``start_ids``); both return token ids and their log-probabilities."""

    def __init__(self, model, info: EngineInfo):
        self.model = model
        self.info = info
        eos = model.generation_config.eos_token_id
        self.eos_token_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.continuous_unsupported = unsupported_reason(model)
        self._groups: queue.Queue[Group | None] | None = None
        self._decoding: threading.Thread | None = None
        self._starting = threading.Lock()

    def start_ids(
        self, inputs: dict[str, torch.Tensor], limits: Sequence[int], pad_id: int, stop_ids: set[int]
    ) -> list[Future]:
        """Add these prompts to the running batch; a future per row, of ``FinishedRow``."""
        with self._starting:
            if self._decoding is None:
                self._groups = queue.Queue()
                decoder = ContinuousDecoder(self.model, stop_ids, pad_id)
                self._decoding = threading.Thread(
                    target=self._decode, args=(decoder,), name="chord-decode", daemon=True
                )
                self._decoding.start()
        futures = [Future() for _ in limits]
        self._groups.put(Group(inputs, futures, list(limits)))
        return futures

    def close(self) -> None:
        """Stop the decoding thread (after the step it is in)."""
        if self._decoding is not None:
            self._groups.put(None)
            self._decoding.join(timeout=30)

    def _decode(self, decoder: ContinuousDecoder) -> None:
        def receive(block: bool) -> list[Group] | None:
            groups = [self._groups.get()] if block else []
            while True:
                try:
                    groups.append(self._groups.get_nowait())
                except queue.Empty:
                    break
            if None not in groups:
                return groups
            for group in groups:  # arrived with the stop: answered, not dropped
                for future in group.keys if group is not None else []:
                    future.set_exception(RuntimeError("the model runner stopped before this request ran"))
            return None

        def finished(future: Future, outcome) -> None:
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

        run_decode_loop(decoder, receive, lambda group: None, finished)

    @classmethod
    def load(cls, settings: Settings) -> LocalModel:
        """``from_pretrained`` exactly as a user's 7B loads, on the device, dtype and kernel the settings pick."""
        path = settings.resolved_model_path()
        family = _detect_family(path)
        device = resolve_device(settings.device)
        dtype = resolve_dtype(settings.dtype, device)
        attn_impl = resolve_attn_impl(settings.attn_impl, device)
        threads = configure_cpu_threads(settings.torch_threads)
        started = time.perf_counter()
        try:
            model = AutoModelForImageTextToText.from_pretrained(
                path,
                dtype=dtype,
                attn_implementation=attn_impl,
                low_cpu_mem_usage=True,
                **_placement(device, settings.max_memory),
            )
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"could not load the model at MODEL_PATH={path!r}: {exc}") from exc
        model.eval()
        use_linear_patch_embedding(model)
        info = EngineInfo(
            model=_model_name(path),
            family=family,
            device=str(model.device) if device == "cpu" else device,
            dtype=dtype_name(dtype),
            attn_impl=attn_impl,
            backend="transformers",
        )
        logger.info(
            "loaded %s (%s) on %s, dtype %s, attention %s, %d CPU threads, in %.1f s",
            info.model, family.display_name, info.device, info.dtype, attn_impl, threads,
            time.perf_counter() - started,
        )  # fmt: skip
        return cls(model, info)

    def generate_ids(self, inputs: dict[str, torch.Tensor], max_new_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(generated ids [batch, steps], log-probability of each chosen token [batch, steps]), both on the CPU."""
        recorder = ChosenTokenLogprobs()
        batch = inputs["input_ids"].shape[0]
        try:
            with torch.inference_mode():
                output = self.model.generate(
                    **BatchFeature(inputs).to(self.model.device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    logits_processor=LogitsProcessorList([recorder]),
                )
        except torch.OutOfMemoryError:
            del inputs
            release_cuda_cache()
            raise OutOfMemory(
                f"the GPU ran out of memory on a batch of {batch}; lower MAX_BATCH_SIZE or MAX_PIXELS"
            ) from None
        generated = output[:, inputs["input_ids"].shape[1] :].cpu()
        logprobs = torch.stack(recorder.logprobs, dim=1) if recorder.logprobs else torch.zeros(batch, 0)
        return generated, logprobs


class TransformersEngine:
    """A processor here and a model runner (in this process, or its own); ``ground`` is not concurrent."""

    def __init__(self, runner, processor, family: Family, settings: Settings):
        self.runner = runner
        self.processor = processor
        self.family = family
        self.info = runner.info
        self.settings = settings
        self._patch_size = int(processor.image_processor.patch_size)
        self._stop_ids = _stop_token_ids(runner.eos_token_ids, processor)
        self.pixel_range = effective_pixel_range(settings, processor.image_processor.size)

    @property
    def model(self):
        """The model object when it runs in this process (None when it has its own process)."""
        return getattr(self.runner, "model", None)

    @classmethod
    def load(cls, settings: Settings, own_process: bool = False) -> TransformersEngine:
        """The processor here; the model here, or with ``own_process`` in a child process (``MODEL_PROCESS``)."""
        path = settings.resolved_model_path()
        family = _detect_family(path)
        if own_process:
            from app.engine.model_process import ModelProcess

            runner = ModelProcess.start(settings)
        else:
            runner = LocalModel.load(settings)
        try:
            processor = AutoProcessor.from_pretrained(path)
        except (OSError, ValueError) as exc:
            _close(runner)
            raise ModelLoadError(f"could not load the processor at MODEL_PATH={path!r}: {exc}") from exc
        processor.tokenizer.padding_side = "left"
        return cls(runner, processor, family, settings)

    def close(self) -> None:
        """Stop the model's process, if it has one."""
        _close(self.runner)

    def gpu_memory_allocated(self) -> float:
        """Bytes torch holds on the model's GPU, wherever the model runs."""
        report = getattr(self.runner, "gpu_memory_allocated", None)
        return report() if report is not None else cuda_memory_allocated()

    def ground(self, requests: Sequence[GroundingRequest]) -> list[GroundingResult]:
        if not requests:
            return []
        return self.generate(requests, self.prepare(requests))

    def prepare(self, requests: Sequence[GroundingRequest]) -> PreparedBatch:
        """Processor work (prompt, resize, patches, padding); runs while another batch generates."""
        started = time.perf_counter()
        images = [_model_image(r.image) for r in requests]
        return PreparedBatch(self._prepare(requests, images), started, [image.size for image in images])

    def merge(self, parts: Sequence[PreparedBatch]) -> PreparedBatch:
        """One batch from parts prepared separately: exactly what preparing them together gives."""
        if len(parts) == 1:
            return parts[0]
        pad_id = self.processor.tokenizer.pad_token_id
        inputs = merge_left_padded([part.inputs for part in parts], pad_id)
        image_whs = [wh for part in parts for wh in part.image_whs]
        return PreparedBatch(inputs, min(part.started for part in parts), image_whs)

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

    @property
    def continuous(self) -> bool:
        """Whether ``start`` can add requests to a running batch (continuous batching) for this model."""
        return getattr(self.runner, "continuous_unsupported", "the runner cannot") is None

    def start(self, requests: Sequence[GroundingRequest], prepared: PreparedBatch) -> list[Future]:
        """Add these requests to the running batch; a future per request, of (result, rows decoded alongside)."""
        input_whs = self._input_whs(prepared.inputs["image_grid_thw"])
        limits = [r.max_new_tokens or self.settings.max_new_tokens for r in requests]
        pad_id = self.processor.tokenizer.pad_token_id
        rows = self.runner.start_ids(dict(prepared.inputs), limits, pad_id, self._stop_ids)
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

    def _prepare(self, requests: Sequence[GroundingRequest], images: list[Image.Image]):
        texts = []
        for request in requests:
            prompt = grounding_prompt(request.phrases, self.family, request.prompt_template)
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            texts.append(self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        return self.processor(
            text=texts,
            images=images,
            padding=True,
            return_tensors="pt",
            images_kwargs={
                "size": {"shortest_edge": self.pixel_range[0], "longest_edge": self.pixel_range[1]},
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


def _detect_family(path: str) -> Family:
    require_model_path(path)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"MODEL_PATH {path!r} is not a readable checkpoint ({exc}). It must be a directory with "
            "config.json, the weights and the processor files, e.g. a Qwen2.5-VL-7B-Instruct download."
        ) from None
    try:
        family = family_from_model_type(config.model_type)
    except ValueError as exc:
        raise ModelLoadError(f"MODEL_PATH {path!r}: {exc}") from None
    if family is Family.QWEN_VL:
        raise ModelLoadError(
            "Qwen-VL (v1) checkpoints need trust_remote_code and are not served by Chord; "
            "their answers can still be parsed with `python -m app parse --family qwen-vl`"
        )
    return family


def _placement(device: str, max_memory: str) -> dict:
    if device == "cpu":
        return {"device_map": "cpu"}
    budget = parse_max_memory(max_memory, torch.cuda.device_count())
    if not budget:
        return {"device_map": "auto"}
    budget.setdefault("cpu", f"{psutil.virtual_memory().total // 2**30}GiB")
    return {"device_map": "auto", "max_memory": budget}


def _close(runner) -> None:
    close = getattr(runner, "close", None)
    if close is not None:
        close()


def _stop_token_ids(eos_token_ids: set[int], processor) -> set[int]:
    ids = set(eos_token_ids)
    if processor.tokenizer.pad_token_id is not None:
        ids.add(processor.tokenizer.pad_token_id)
    return ids


def _model_name(path: str) -> str:
    """The checkpoint's folder name; the bundled demo model says so (UI header, /health)."""
    if Path(path).exists() and Path(path).resolve() == DEMO_MODEL_DIR.resolve():
        return DEMO_MODEL_NAME
    return Path(path).name or path
