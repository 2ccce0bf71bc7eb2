"""Evaluate a demo checkpoint on fresh scenes: the scenes written as cases, then ``python -m app eval``.

    python scripts/eval_demo_model.py --model demo --n 200 [--server URL] [--out report.json]

Scenes come from the 'eval' stream, which training never draws from; they are written to --cases-dir
(images/, cases.jsonl grouped by object count, and the same cases as coco.json), and the report is the
eval command's: acc_iou50 (the highest-scoring box reaches IoU >= 0.5; the issue-7 bar is 0.8),
acc_iou75, mean_iou, recall, latency and per-group numbers.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.cli import main as chord  # noqa: E402
from tools.demo_model.evaluation import fresh_cases, write_case_files  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo", help="MODEL_PATH: 'demo' (the bundled model) or a checkpoint dir")
    parser.add_argument("--n", type=int, default=200, help="number of fresh scenes")
    parser.add_argument("--split", default="eval", choices=["eval", "test"], help="scene stream (never 'train')")
    parser.add_argument("--start", type=int, default=0, help="first scene index in the stream")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--server", default=None, help="evaluate a running Chord server instead")
    parser.add_argument("--out", default=None, help="write the full report (every case) here")
    parser.add_argument("--cases-dir", default=None, help="where the scenes are written (default: a temp dir)")
    args = parser.parse_args(argv)

    folder = Path(args.cases_dir or tempfile.mkdtemp(prefix="chord-demo-eval-"))
    jsonl, _ = write_case_files(fresh_cases(args.n, args.split, args.start), folder, groups=True)
    os.environ.setdefault("DEVICE", "cpu")
    command = ["eval", str(jsonl), "--batch-size", str(args.batch_size)]
    command += ["--server", args.server] if args.server else ["--model", args.model]
    command += ["--out", args.out] if args.out else []
    return chord(command)


if __name__ == "__main__":
    raise SystemExit(main())
