"""Model-side benchmark with random weights of the real Qwen2.5-VL shapes (no download).

    python scripts/bench_gpu.py                          # CUDA: 7b and 3b; CPU: the tiny shape
    python scripts/bench_gpu.py --shape 7b --dtypes bfloat16,float16 --attn sdpa,flash_attention_2
    python scripts/bench_gpu.py --shape 7b --dtypes bfloat16 --quantization none,int8,int4 --image-cache

For a 1024x768 image (999 visual tokens at the default resize) and a fixed number of generated
tokens (EOS ignored) it measures prefill time, decode ms/token and end-to-end latency at batch 1,
and throughput at several concurrencies through Chord's own batching scheduler. It prints the
bandwidth floor (weight bytes / measured device-to-device copy bandwidth) and the ratio of decode
ms/token to it (weights: ``get_memory_footprint``, so int8/int4 have lower floors). int8/int4 save
the random model once and load it with bitsandbytes as ``QUANTIZATION`` does. ``--image-cache``
adds the ratio of eight questions about eight images to eight about one, image cache off and on.
Shapes: config/model_shapes/*.json. Writes a JSON report to --out.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    Qwen2_5_VLForConditionalGeneration,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.engine.base import EngineInfo, GroundingRequest  # noqa: E402
from app.engine.local_model import LocalModel  # noqa: E402
from app.engine.patch_embedding import use_linear_patch_embedding  # noqa: E402
from app.engine.runtime import dtype_name  # noqa: E402
from app.engine.tiny_checkpoint import (  # noqa: E402
    TinyShape,
    assemble_config,
    build_config,
    build_processor,
    build_tokenizer,
)
from app.engine.transformers_engine import TransformersEngine  # noqa: E402
from app.errors import ChordError  # noqa: E402
from app.grounding.families import Family  # noqa: E402
from app.service.scheduler import BatchScheduler  # noqa: E402
from app.settings import load_settings  # noqa: E402

SHAPES_DIR = ROOT / "config" / "model_shapes"
QWEN_PIXELS = TinyShape(min_pixels=3136, max_pixels=12845056)  # the real processor's range


def shape_config(name: str, tokenizer):
    if name == "tiny":
        return build_config(tokenizer)
    spec = json.loads((SHAPES_DIR / f"qwen2.5-vl-{name}.json").read_text())
    text, vision = dict(spec["text"]), dict(spec["vision"])
    rope = {"rope_type": "default", "rope_theta": text.pop("rope_theta"), "mrope_section": text.pop("mrope_section")}
    tied = text.pop("tie_word_embeddings")
    text_config = {**text, "rope_parameters": rope, "tie_word_embeddings": tied, "use_sliding_window": False}
    return assemble_config(tokenizer, text_config, vision, tie_word_embeddings=tied)


def build_model(shape: str, dtype: torch.dtype, attn: str, device: str, quantization: str, folder: Path):
    """Random weights of ``shape``; int8/int4 are saved to ``folder`` and loaded as LocalModel.load does."""
    tokenizer = build_tokenizer()
    config = shape_config(shape, tokenizer)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype, attn_implementation=attn)
    # No EOS: every request generates exactly the tokens asked for.
    model.generation_config = GenerationConfig(eos_token_id=None, pad_token_id=tokenizer.pad_token_id, do_sample=False)
    if quantization != "none":  # bitsandbytes quantizes while loading: the real path, from a saved checkpoint
        path = folder / f"random-{shape}"
        if not (path / "config.json").exists():
            model.save_pretrained(path)
            build_processor(tokenizer, QWEN_PIXELS).save_pretrained(path)
        del model
        settings = load_settings(model_path=str(path), device=device, dtype=dtype_name(dtype), attn_impl=attn,
                                 quantization=quantization)  # fmt: skip
        model = LocalModel.load(settings).model
        model.generation_config = GenerationConfig(
            eos_token_id=None, pad_token_id=tokenizer.pad_token_id, do_sample=False
        )
    model.eval()
    use_linear_patch_embedding(model)  # as LocalModel.load serves it
    return model


def build_engine(model, shape: str, quantization: str, tokens: int, cache_mb: int) -> TransformersEngine:
    """An engine around ``model`` (engines share it), with the image cache (IMAGE_CACHE_MB) on or off."""
    processor = build_processor(build_tokenizer(), QWEN_PIXELS)
    processor.tokenizer.padding_side = "left"
    device = "cuda" if model.device.type == "cuda" else "cpu"
    settings = load_settings(model_path=f"random-{shape}", device=device, max_new_tokens=tokens, max_batch_size=32,
                             image_cache_mb=cache_mb)  # fmt: skip
    attn = model.config._attn_implementation
    info = EngineInfo(f"random-{shape}", Family.QWEN2_5_VL, device, dtype_name(model.dtype), attn, "transformers",
                      quantization)  # fmt: skip
    runner = LocalModel(model, info, cache_mb * 2**20)
    return TransformersEngine(runner, processor, Family.QWEN2_5_VL, settings)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def copy_bandwidth(device: str, megabytes: int) -> float:
    """Bytes per second moved by a device-to-device copy (a read and a write per byte)."""
    src = torch.empty(megabytes * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - started)
    return 2 * src.numel() / best


class StepTimer(LogitsProcessor):
    """Timestamps each decoding step (called once per generated token, after its forward pass)."""

    def __init__(self, device: str):
        self.device = device
        self.stamps: list[float] = []

    def __call__(self, input_ids, scores):
        sync(self.device)
        self.stamps.append(time.perf_counter())
        return scores


def timed_generate(engine: TransformersEngine, prepared, new_tokens: int, device: str) -> tuple[float, float]:
    """(prefill seconds, median seconds per decode step) for one generation of ``new_tokens``."""
    inputs = prepared.inputs.to(engine.model.device)
    timer = StepTimer(device)
    sync(device)
    started = time.perf_counter()
    with torch.inference_mode():
        engine.model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                              logits_processor=LogitsProcessorList([timer]))  # fmt: skip
    steps = np.diff(timer.stamps)
    return timer.stamps[0] - started, float(np.median(steps)) if len(steps) else float("nan")


def bench(engine: TransformersEngine, image: Image.Image, tokens: int, concurrencies: list[int], device: str) -> dict:
    request = GroundingRequest(image, ("the red circle",), max_new_tokens=tokens)
    prepared = engine.prepare([request])
    visual_tokens = int(prepared.inputs["image_grid_thw"][0].prod()) // 4
    timed_generate(engine, prepared, 2, device)  # warm-up
    runs = [timed_generate(engine, prepared, tokens, device) for _ in range(3)]
    prefill = min(r[0] for r in runs)
    decode_ms = min(r[1] for r in runs) * 1000
    sync(device)
    started = time.perf_counter()
    engine.ground([request])
    sync(device)
    e2e_ms = (time.perf_counter() - started) * 1000
    throughput = {}
    for concurrency in concurrencies:
        scheduler = BatchScheduler(engine, max_batch_size=concurrency, max_batch_wait_ms=20, max_queue=4 * concurrency)
        total = 2 * concurrency
        try:
            with ThreadPoolExecutor(concurrency) as pool:
                started = time.perf_counter()
                list(pool.map(scheduler.ground, [request] * total))
                throughput[concurrency] = round(total / (time.perf_counter() - started), 2)
        finally:
            scheduler.stop()
    return {
        "visual_tokens": visual_tokens,
        "prefill_ms": round(prefill * 1000, 1),
        "decode_ms_per_token": round(decode_ms, 2),
        "e2e_batch1_ms": round(e2e_ms, 1),
        "req_per_s": throughput,
    }


def repeat_questions(engine: TransformersEngine, image_wh: tuple[int, int], rounds: int = 2) -> float:
    """Seconds of eight questions about eight images over eight about one (one client; new images each round)."""
    rng = np.random.default_rng(1)
    scheduler = BatchScheduler(engine, max_batch_size=8, max_batch_wait_ms=0, max_queue=64)
    phrases = [f"the object number {i}" for i in range(8)]
    seconds = {"one": 0.0, "eight": 0.0}
    try:
        for _ in range(rounds):
            pictures = [Image.fromarray(rng.integers(0, 256, (*image_wh[::-1], 3), dtype=np.uint8)) for _ in range(9)]
            for case, images in (("one", pictures[:1] * 8), ("eight", pictures[1:])):
                started = time.perf_counter()
                for image, phrase in zip(images, phrases, strict=True):
                    scheduler.ground(GroundingRequest(image, (phrase,)))
                seconds[case] += time.perf_counter() - started
    finally:
        scheduler.stop()
    return round(seconds["eight"] / seconds["one"], 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--shape", default="7b,3b" if cuda else "tiny", help="comma list of 7b, 3b, tiny")
    parser.add_argument("--dtypes", default="bfloat16,float16" if cuda else "float32")
    parser.add_argument("--attn", default="sdpa", help="comma list of sdpa, flash_attention_2, eager")
    parser.add_argument("--tokens", type=int, default=40, help="generated tokens per request (EOS ignored)")
    parser.add_argument("--concurrency", default="1,8,32" if cuda else "1,4")
    parser.add_argument("--quantization", default="none", help="comma list of none, int8, int4 (bitsandbytes)")
    parser.add_argument(
        "--image-cache",
        action="store_true",
        help="also: eight questions about one image vs eight images, image cache off and on",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the language model, as COMPILE=true")
    parser.add_argument("--out", default="bench_gpu.json")
    args = parser.parse_args()
    device = "cuda" if cuda else "cpu"
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (768, 1024, 3), dtype=np.uint8))
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    bandwidth = copy_bandwidth(device, 1024 if cuda else 256)
    report = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "copy_bandwidth_GBps": round(bandwidth / 1e9, 1),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "runs": [],
    }
    print(f"device {report['device']}, device-to-device copy bandwidth {report['copy_bandwidth_GBps']} GB/s")
    folder = Path(tempfile.mkdtemp(prefix="chord-bench-gpu-"))
    try:
        for shape, dtype_text, attn, quantization in itertools.product(
            args.shape.split(","), args.dtypes.split(","), args.attn.split(","), args.quantization.split(",")
        ):
            name = f"{shape:>4} {dtype_text:>8} {attn:>17} {quantization:>4}"
            try:
                model = build_model(shape, getattr(torch, dtype_text), attn, device, quantization, folder)
            except (ImportError, ValueError, ChordError) as exc:
                print(f"{name}: skipped ({exc})")
                continue
            if args.compile:  # as LocalModel.load does with COMPILE=true
                model.model.language_model.compile(dynamic=True)
                name += " compiled"
            engine = build_engine(model, shape, quantization, args.tokens, cache_mb=0)
            weight_bytes = model.get_memory_footprint()
            floor_ms = weight_bytes / bandwidth * 1000
            result = bench(engine, image, args.tokens, concurrencies, device)
            result.update(shape=shape, dtype=dtype_text, attn=attn, quantization=quantization, compile=args.compile,
                          weight_GB=round(weight_bytes / 1e9, 3))  # fmt: skip
            result["bandwidth_floor_ms_per_token"] = round(floor_ms, 3)
            result["decode_over_floor"] = round(result["decode_ms_per_token"] / floor_ms, 2)
            line = (f"{name}: {result['visual_tokens']} visual tokens, weights {result['weight_GB']} GB, prefill "
                    f"{result['prefill_ms']} ms, decode {result['decode_ms_per_token']} ms/token (floor "
                    f"{floor_ms:.2f} ms, {result['decode_over_floor']}x), batch-1 end to end "
                    f"{result['e2e_batch1_ms']} ms, req/s by concurrency {result['req_per_s']}")  # fmt: skip
            if args.image_cache:
                result["repeat_ratio"] = {}
                for state, cache_mb in (("off", 0), ("on", 1024)):
                    repeat = build_engine(model, shape, quantization, 16, cache_mb)
                    result["repeat_ratio"][state] = repeat_questions(repeat, image.size)
                    repeat.close()
                ratios = result["repeat_ratio"]
                line += f", 8 images / 1 image (16 tokens): cache off {ratios['off']}x, on {ratios['on']}x"
            report["runs"].append(result)
            print(line)
            engine.close()
            del engine, model
            if cuda:
                torch.cuda.empty_cache()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
