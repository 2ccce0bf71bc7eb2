"""QUANTIZATION=none|int8|int4 compared: weight memory, speed, and agreement with full precision.

    python scripts/bench_quantization.py --scenes 100          # demo model on CPU
    python scripts/bench_quantization.py --modes none,int4 --device cuda --model models/Qwen2.5-VL-7B-Instruct

For each mode it loads the model as the server does (LocalModel, bitsandbytes for int8/int4),
grounds the demo scenes (tools/demo_model/evaluation.py, the 'eval' stream) and prints the
weights' memory (``get_memory_footprint``), the process's resident memory after loading, seconds
per scene, the share of scenes whose top box has IoU >= 0.9 with the unquantized model's top box
(both without a box counts as agreeing), and the scenes' own hit rate (IoU >= 0.5 with the truth).
With --tiny-memory it also loads a larger random tiny checkpoint in each mode for its memory alone,
and it prints the real 3B/7B shapes' weight bytes per mode computed from their parameter counts.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from app.engine.quantization import KEEP_FULL_PRECISION  # noqa: E402
from app.engine.tiny_checkpoint import TinyShape, build_tiny_checkpoint, build_tokenizer  # noqa: E402
from app.engine.transformers_engine import TransformersEngine  # noqa: E402
from app.grounding.geometry import iou  # noqa: E402
from app.settings import load_settings  # noqa: E402
from tools.demo_model.evaluation import IOU_HIT, best_iou, engine_grounder, fresh_cases  # noqa: E402

# Bits per weight of a quantized linear layer: int8 keeps one fp scale per row (negligible here);
# NF4 with double quantization stores 4 bits plus about 0.127 bits of scales per weight.
BITS = {"none": None, "int8": 8.0, "int4": 4.127}
LARGER_TINY = TinyShape(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
                        num_key_value_heads=2, vision_depth=4, vision_hidden_size=256, vision_intermediate_size=512,
                        vision_heads=4)  # fmt: skip


def load(model: str, mode: str, device: str) -> TransformersEngine:
    settings = load_settings(model_path=model, device=device, quantization=mode, model_process=False)
    return TransformersEngine.load(settings)


def predictions(engine: TransformersEngine, cases) -> list[list]:
    """Each scene's boxes with their labels, in the order the model gave them (batches of 8)."""
    ground = engine_grounder(engine)
    return [found for start in range(0, len(cases), 8) for found in ground(cases[start : start + 8])]


def agreement(reference: list, boxes: list, threshold: float = 0.9) -> float:
    same = [(a is None and b is None) or (a is not None and b is not None and iou(a, b) >= threshold)
            for a, b in zip(reference, boxes, strict=True)]  # fmt: skip
    return sum(same) / len(same)


def kept_whole(name: str, pattern: str) -> bool:
    """Whether transformers keeps module ``name`` unquantized for ``pattern`` (from the root, or a suffix)."""
    return name == pattern or name.startswith(pattern + ".") or name.endswith(pattern)


def shape_weight_bytes(shape: str, dtype_bytes: int = 2) -> dict[str, float]:
    """GB of weights per mode for a real shape: quantized linear layers of the language model, the rest at dtype."""
    from bench_gpu import shape_config
    from transformers import Qwen2_5_VLForConditionalGeneration

    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(shape_config(shape, build_tokenizer()))
    quantizable = sum(
        module.weight.numel() for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not any(kept_whole(name, keep) for keep in KEEP_FULL_PRECISION)
    )  # fmt: skip
    total = sum(p.numel() for p in model.parameters())
    out = {}
    for mode, bits in BITS.items():
        kept = total if bits is None else total - quantizable
        out[mode] = round((kept * dtype_bytes + (0 if bits is None else quantizable * bits / 8)) / 1e9, 2)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--modes", default="none,int8,int4")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--scenes", type=int, default=100, help="demo scenes ('eval' stream)")
    parser.add_argument("--tiny-memory", action="store_true", help="also the memory of a larger tiny checkpoint")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    cases = fresh_cases(args.scenes)
    report: dict = {"model": args.model, "scenes": args.scenes, "modes": {}}
    reference = None
    for mode in args.modes.split(","):
        gc.collect()
        engine = load(args.model, mode, args.device)
        footprint = engine.model.get_memory_footprint()
        rss = psutil.Process().memory_info().rss
        started = time.perf_counter()
        found = predictions(engine, cases)
        seconds = (time.perf_counter() - started) / len(cases)
        boxes = [boxes[0][0] if boxes else None for boxes in found]
        hits = [best_iou(case.box, f, case.phrase)[1] >= IOU_HIT for case, f in zip(cases, found, strict=True)]
        hit_rate = sum(hits) / len(cases)
        reference = boxes if reference is None else reference
        row = {"weights_MB": round(footprint / 1e6, 2), "rss_MB": round(rss / 1e6), "s_per_scene": round(seconds, 3),
               "top_box_iou_0.9_with_first_mode": round(agreement(reference, boxes), 3),
               "hit_rate_iou_0.5": round(hit_rate, 3)}  # fmt: skip
        report["modes"][mode] = row
        print(f"{args.model} {mode:>4}: weights {row['weights_MB']} MB, process RSS {row['rss_MB']} MB, "
              f"{1000 * seconds:.0f} ms/scene, top box IoU>=0.9 with {args.modes.split(',')[0]}: "
              f"{100 * row['top_box_iou_0.9_with_first_mode']:.0f} %, hit rate (IoU>=0.5 with truth) "
              f"{100 * hit_rate:.0f} %")  # fmt: skip
        engine.close()
        del engine
    if args.tiny_memory:
        with tempfile.TemporaryDirectory() as folder:
            path = str(build_tiny_checkpoint(Path(folder) / "tiny-larger", LARGER_TINY))
            report["larger_tiny_weights_MB"] = {}
            for mode in args.modes.split(","):
                engine = load(path, mode, args.device)
                size = round(engine.model.get_memory_footprint() / 1e6, 2)
                report["larger_tiny_weights_MB"][mode] = size
                print(f"larger tiny checkpoint {mode:>4}: weights {size} MB")
                engine.close()
    for shape in ("7b", "3b"):
        report[f"{shape}_weights_GB_computed"] = computed = shape_weight_bytes(shape)
        print(f"{shape} shape, bf16 elsewhere, computed from parameter counts: "
              + ", ".join(f"{mode} {gb} GB" for mode, gb in computed.items()))  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
