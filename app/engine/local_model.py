"""The model in this process: loaded with ``from_pretrained`` exactly as a user's 7B loads, then greedy
batched ``generate`` or continuous batching on a decoding thread. A ``ModelRunner``."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path

import psutil
import torch
from transformers import AutoConfig, AutoModelForImageTextToText, BatchFeature, LogitsProcessor, LogitsProcessorList

from app.engine.base import EngineInfo
from app.engine.continuous import ContinuousDecoder, unsupported_reason
from app.engine.decode_loop import Group, run_decode_loop
from app.engine.image_cache import CacheCounts
from app.engine.patch_embedding import use_linear_patch_embedding
from app.engine.prefix_cache import PrefixCache
from app.engine.progress import ProgressClock
from app.engine.quantization import quantization_config
from app.engine.runtime import (
    configure_cpu_threads,
    cuda_devices,
    cuda_memory,
    dtype_name,
    release_cuda_cache,
    resolve_attn_impl,
    resolve_device,
    resolve_dtype,
)
from app.errors import ModelLoadError, OutOfMemory
from app.grounding.families import Family, family_from_model_type
from app.model_path import require_model_path
from app.settings import DEMO_MODEL_DIR, DEMO_MODEL_NAME, Settings, parse_max_memory

logger = logging.getLogger(__name__)


class ChosenTokenLogprobs(LogitsProcessor):
    """Records, at each step, the log-probability of the token greedy decoding is about to pick.

    It runs last and returns the scores unchanged, so the argmax it sees is the chosen token.
    Keeps O(batch) numbers per step instead of the full vocabulary.
    """

    def __init__(self, progressed: Callable[[], None] = lambda: None) -> None:
        self.logprobs: list[torch.Tensor] = []
        self.tokens: list[torch.Tensor] = []
        self._progressed = progressed

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._progressed()  # one step of generate
        logprobs = torch.log_softmax(scores.float(), dim=-1)
        best, token = logprobs.max(dim=-1)
        self.logprobs.append(best.cpu())
        self.tokens.append(token.cpu())
        return scores


class LocalModel:
    """The model in this process: greedy batched ``generate`` (``generate_ids``), or continuous batching
    on a decoding thread (``start_ids``); both return token ids and their log-probabilities."""

    def __init__(self, model, info: EngineInfo, image_cache_bytes: int = 0):
        self.model = model
        self.info = info
        eos = model.generation_config.eos_token_id
        self.eos_token_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.continuous_unsupported = unsupported_reason(model)
        # The image prefixes' key/value caches (IMAGE_CACHE_MB), for continuous batching.
        cached = image_cache_bytes > 0 and self.continuous_unsupported is None
        self.prefixes = PrefixCache(model, image_cache_bytes) if cached else None
        self.progress = ProgressClock()
        self._cuda_devices = cuda_devices(model)
        self.on_progress: Callable[[], None] = self.progress.tick  # the model's own process also tells its parent
        self._groups: queue.Queue[Group | None] | None = None
        self._decoding: threading.Thread | None = None
        self._starting = threading.Lock()

    def start_ids(
        self,
        inputs: dict[str, torch.Tensor],
        limits: Sequence[int],
        pad_id: int,
        stop_ids: set[int],
        image_keys: Sequence[bytes | None] | None = None,
    ) -> list[Future]:
        """Add these prompts to the running batch; a future per row, of ``FinishedRow``."""
        with self._starting:
            if self._decoding is None:
                self._groups = queue.Queue()
                decoder = ContinuousDecoder(self.model, stop_ids, pad_id, self.prefixes)
                self._decoding = threading.Thread(
                    target=self._decode, args=(decoder,), name="chord-decode", daemon=True
                )
                self._decoding.start()
        futures = [Future() for _ in limits]
        self._groups.put(Group(inputs, futures, list(limits), None if image_keys is None else list(image_keys)))
        return futures

    def image_cache_counts(self) -> CacheCounts:
        """Hits and misses of the image prefix cache (all zero without one)."""
        return self.prefixes.counts() if self.prefixes is not None else CacheCounts()

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

        run_decode_loop(decoder, receive, lambda group: None, finished, lambda: self.on_progress())

    def gpu_memory(self) -> dict[str, tuple[float, float]]:
        """Per CUDA device the model uses, bytes allocated and reserved by torch (empty on the CPU)."""
        return cuda_memory(self._cuda_devices)

    @classmethod
    def load(cls, settings: Settings) -> LocalModel:
        """``from_pretrained`` exactly as a user's 7B loads, on the device, dtype and kernel the settings pick."""
        path = settings.resolved_model_path()
        family = detect_family(path)
        device = resolve_device(settings.device)
        dtype = resolve_dtype(settings.dtype, device)
        attn_impl = resolve_attn_impl(settings.attn_impl, device)
        threads = configure_cpu_threads(settings.torch_threads)
        quantization = quantization_config(settings.quantization, device, dtype, offload=bool(settings.max_memory))
        started = time.perf_counter()
        try:
            model = AutoModelForImageTextToText.from_pretrained(
                path,
                dtype=dtype,
                attn_implementation=attn_impl,
                low_cpu_mem_usage=True,
                quantization_config=quantization,
                **_placement(device, settings.max_memory),
            )
        except (ImportError, RuntimeError) as exc:  # what bitsandbytes raises when it cannot run here
            if quantization is None:
                raise
            raise ModelLoadError(f"QUANTIZATION={settings.quantization} could not load here: {exc}") from exc
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"could not load the model at MODEL_PATH={path!r}: {exc}") from exc
        model.eval()
        use_linear_patch_embedding(model)
        if settings.compile:  # in place; compiled on the first forward pass, recompiled for new shapes
            model.model.language_model.compile(dynamic=True)
        info = EngineInfo(
            model=_model_name(path),
            family=family,
            device=str(model.device) if device == "cpu" else device,
            dtype=dtype_name(dtype),
            attn_impl=attn_impl,
            backend="transformers",
            quantization=settings.quantization,
        )
        logger.info(
            "loaded %s (%s) on %s, dtype %s, quantization %s, attention %s, compile %s, %d CPU threads, %.1f MB, "
            "in %.1f s", info.model, family.display_name, info.device, info.dtype, info.quantization, attn_impl,
            settings.compile, threads, model.get_memory_footprint() / 1e6, time.perf_counter() - started,
        )  # fmt: skip
        return cls(model, info, settings.image_cache_mb * 2**20)

    def generate_ids(self, inputs: dict[str, torch.Tensor], max_new_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(generated ids [batch, steps], log-probability of each chosen token [batch, steps]), both on the CPU."""
        recorder = ChosenTokenLogprobs(lambda: self.on_progress())
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


def detect_family(path: str) -> Family:
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


def _model_name(path: str) -> str:
    """The checkpoint's folder name; the bundled demo model says so (UI header, /health)."""
    if Path(path).exists() and Path(path).resolve() == DEMO_MODEL_DIR.resolve():
        return DEMO_MODEL_NAME
    return Path(path).name or path
