"""QUANTIZATION: 8-bit or 4-bit weights through transformers' bitsandbytes integration.

bitsandbytes is the library transformers itself serves quantized models with (``transformers serve
--quantization bnb-4bit|bnb-8bit``): it quantizes at load time from the same checkpoint (no
pre-quantized download), runs on CUDA, and since its multi-backend releases on the CPU too, so the
same code path is tested on CPU machines. int8 is LLM.int8() (``Linear8bitLt``), int4 is NF4
(``Linear4bit``) with the model's dtype for the arithmetic and double quantization of the scales.

The vision tower (``model.visual``, patch embedding through the merger) and the output head stay at the
model's dtype: the tower is about 8 % of a 7B's weights and carries the geometry the boxes come from,
and the head's logits pick every token.
"""

from __future__ import annotations

import importlib.util

import torch

from app.errors import ModelLoadError

# Modules kept at full precision, as transformers matches them: a path from the model's root up to a
# module boundary, or a suffix (the vision tower is model.visual in transformers 5's Qwen2.5-VL).
KEEP_FULL_PRECISION = ["model.visual", "lm_head"]
MODES = ("none", "int8", "int4")


def quantization_config(mode: str, device: str, dtype: torch.dtype, offload: bool = False):
    """transformers' ``BitsAndBytesConfig`` for ``mode`` (None for ``none``); ModelLoadError when it cannot run here.

    ``offload``: some layers may be placed on the CPU (MAX_MEMORY); they then stay unquantized there.
    """
    if mode == "none":
        return None
    if mode not in MODES:
        raise ModelLoadError(f"QUANTIZATION={mode!r}: expected one of {', '.join(MODES)}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelLoadError(
            f"QUANTIZATION={mode} needs the bitsandbytes package (pip install -r requirements.txt); "
            "or set QUANTIZATION=none"
        )
    import bitsandbytes
    from transformers import BitsAndBytesConfig

    devices = set(bitsandbytes.supported_torch_devices)
    if device not in devices:
        raise ModelLoadError(
            f"QUANTIZATION={mode}: bitsandbytes {bitsandbytes.__version__} cannot run on {device} "
            f"(it supports {', '.join(sorted(devices))}); set QUANTIZATION=none"
        )
    if mode == "int8":
        return BitsAndBytesConfig(
            load_in_8bit=True, llm_int8_skip_modules=KEEP_FULL_PRECISION, llm_int8_enable_fp32_cpu_offload=offload
        )
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
        llm_int8_skip_modules=KEEP_FULL_PRECISION,
        llm_int8_enable_fp32_cpu_offload=offload,
    )
