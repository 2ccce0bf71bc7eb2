"""Choose device, dtype and attention kernel for the machine at hand."""

from __future__ import annotations

import importlib.util
import logging
import os

import torch

from app.errors import ModelLoadError

logger = logging.getLogger(__name__)

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def resolve_device(requested: str) -> str:
    """``auto`` -> cuda when available, else cpu. Asking for cuda without one is an error."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("DEVICE=cuda but no CUDA GPU is visible to torch; set DEVICE=cpu or auto")
    return requested


def resolve_dtype(requested: str, device: str) -> torch.dtype:
    """bf16 on GPUs that support it, fp32 on CPU and older GPUs; fp16 only when asked, with a warning."""
    if requested == "auto":
        if device == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if requested == "float16":
        logger.warning(
            "DTYPE=float16: Qwen2.5-VL in fp16 is reported to produce NaN or '!!!!' answers "
            "(vllm-project/vllm#13817); prefer bfloat16 or float32"
        )
    if requested == "bfloat16" and device == "cuda" and not torch.cuda.is_bf16_supported():
        raise ModelLoadError("DTYPE=bfloat16 but this GPU does not support bf16; use DTYPE=auto or float32")
    return _DTYPES[requested]


def resolve_attn_impl(requested: str, device: str) -> str:
    """flash_attention_2 only when flash_attn imports and the model is on CUDA; else sdpa."""
    flash_ok = device == "cuda" and importlib.util.find_spec("flash_attn") is not None
    if requested == "auto":
        return "flash_attention_2" if flash_ok else "sdpa"
    if requested == "flash_attention_2" and not flash_ok:
        logger.warning("ATTN_IMPL=flash_attention_2 needs flash_attn on CUDA; falling back to sdpa")
        return "sdpa"
    return requested


def configure_cpu_threads(requested: int) -> int:
    """Set torch's intra-op threads: ``requested``, or with 0 one less than the usable cores (at least 1).

    The model thread shares the CPU with HTTP handling and image preparation; with every core
    given to torch, its threads wait on each other whenever one is descheduled (measured on 2
    cores: 55 req/s batched with 2 threads, 94 with 1).
    """
    threads = requested or max(1, len(os.sched_getaffinity(0)) - 1)
    torch.set_num_threads(threads)
    return threads


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def cuda_devices(model) -> list[torch.device]:
    """The CUDA devices holding some of ``model``'s weights (several with a device_map split; none on the CPU)."""
    return sorted({p.device for p in model.parameters() if p.device.type == "cuda"}, key=lambda d: d.index or 0)


def cuda_memory(devices: list[torch.device]) -> dict[str, tuple[float, float]]:
    """Per device, bytes held by torch tensors and bytes reserved by its caching allocator; for /metrics."""
    return {
        str(device): (float(torch.cuda.memory_allocated(device)), float(torch.cuda.memory_reserved(device)))
        for device in devices
    }


def release_cuda_cache() -> None:
    """Give cached CUDA blocks back after an out-of-memory error, so the next request can run."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
