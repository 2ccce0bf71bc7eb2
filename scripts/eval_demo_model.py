"""Evaluate a demo checkpoint through the engine on fresh scenes, as the server would ground them.

    python scripts/eval_demo_model.py --model demo --n 200

Scenes come from the 'eval' stream, which training never draws from. Prints the valid-answer rate,
the mean IoU and the share of scenes whose target gets IoU >= 0.5 (the issue-7 bar is 0.8).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.engine.transformers_engine import TransformersEngine  # noqa: E402
from app.settings import load_settings  # noqa: E402
from tools.demo_model.evaluation import engine_grounder, evaluate, fresh_cases  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo", help="MODEL_PATH: 'demo' (the bundled model) or a checkpoint dir")
    parser.add_argument("--n", type=int, default=200, help="number of fresh scenes")
    parser.add_argument("--split", default="eval", choices=["eval", "test"], help="scene stream (never 'train')")
    parser.add_argument("--start", type=int, default=0, help="first scene index in the stream")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(args.threads)
    engine = TransformersEngine.load(load_settings(model_path=args.model, device="cpu"))
    started = time.perf_counter()
    report = evaluate(fresh_cases(args.n, args.split, args.start), engine_grounder(engine), args.batch_size)
    summary = {"model": engine.info.model, **report.summary(), "seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps(summary, ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
