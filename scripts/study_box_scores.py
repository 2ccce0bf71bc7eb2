"""Which token probabilities separate right boxes from wrong ones? A study on held-out demo scenes.

    nice -n 10 python scripts/study_box_scores.py --n 300

Grounds ``--n`` scenes of the demo's 'eval' stream (never used for training) through the engine, keeps
every generated token's log-probability, and scores each box by several rules: which tokens count
(all the box's tokens, as ``app.grounding.scoring`` does; the coordinate digits only; the label's tokens
only) and how they are combined (geometric mean, arithmetic mean, minimum). Prints, per rule, the box-level
AUROC (how often a right box, IoU >= 0.5 with the asked shape, outscores a wrong one) and, with the
result's confidence = its best box's score, the result-level AUROC and the accuracy of results not
flagged for review (confidence >= 0.7) against all results.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import app.grounding.answers as answers  # noqa: E402
from app.engine.base import GroundingRequest  # noqa: E402
from app.grounding.geometry import iou  # noqa: E402
from app.grounding.scoring import span_scores  # noqa: E402
from app.grounding.zoom import label_agrees  # noqa: E402
from tools.demo_model.evaluation import fresh_cases  # noqa: E402

LABEL = re.compile(r'"label"\s*:\s*"([^"]*)"')
TOKENS = {
    "all": lambda text, t0, t1, label: True,
    "digits": lambda text, t0, t1, label: text[t0:t1].strip().isdigit(),
    "label": lambda text, t0, t1, label: label is not None and t0 < label[1] and t1 > label[0],
}
AGGREGATES = {
    "geomean": lambda lps: math.exp(sum(lps) / len(lps)),
    "mean": lambda lps: sum(math.exp(lp) for lp in lps) / len(lps),
    "min": lambda lps: math.exp(min(lps)),
}


def auroc(right: list[float], wrong: list[float]) -> float | None:
    """P(a right item outscores a wrong one), ties counting half (the Mann-Whitney U statistic)."""
    if not right or not wrong:
        return None
    wins = sum((r > w) + 0.5 * (r == w) for r in right for w in wrong)
    return round(wins / (len(right) * len(wrong)), 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--threshold", type=float, default=0.7, help="REVIEW_THRESHOLD to report")
    args = parser.parse_args(argv)

    import torch

    from app.engine.transformers_engine import TransformersEngine
    from app.settings import load_settings

    torch.set_num_threads(2)
    captured: list[tuple] = []

    def recording(item_spans, token_spans, token_logprobs):
        captured.append((list(item_spans), list(token_spans), list(token_logprobs)))
        return span_scores(item_spans, token_spans, token_logprobs)

    answers.span_scores = recording  # the engine's own scoring, with every token kept on the side
    settings = load_settings(model_path="demo", device="cpu", max_new_tokens=128, model_process=False)
    engine = TransformersEngine.load(settings)
    boxes: list[dict] = []  # one per box: right or not, and its score under each rule
    results: list[dict] = []
    cases = fresh_cases(args.n, "eval", args.start)
    for start in range(0, len(cases), 8):
        batch = cases[start : start + 8]
        captured.clear()
        grounded = engine.ground([GroundingRequest(case.image, (case.phrase,)) for case in batch])
        assert len(captured) == len(batch)
        for case, result, (item_spans, token_spans, logprobs) in zip(batch, grounded, captured, strict=True):
            scored = []
            for box, box_label, (s0, s1) in zip(result.boxes, result.labels, item_spans, strict=True):
                match = LABEL.search(result.text, s0, s1)
                label = match.span(1) if match else None
                row = {"right": iou(box, case.box) >= 0.5}
                for tokens, keep in TOKENS.items():
                    lps = [lp for (t0, t1), lp in zip(token_spans, logprobs, strict=True)
                           if t0 < s1 and t1 > s0 and keep(result.text, t0, t1, label)]  # fmt: skip
                    for name, aggregate in AGGREGATES.items():
                        row[f"{tokens}/{name}"] = aggregate(lps) if lps else 0.0
                        # the same, but 0 for a box whose label names something that was not asked
                        agrees = label_agrees(box_label, (case.phrase,))
                        row[f"{tokens}/{name}, label agrees"] = row[f"{tokens}/{name}"] if agrees else 0.0
                scored.append(row)
            boxes += scored
            results.append({"boxes": scored})
        print(f"{min(start + 8, len(cases))}/{len(cases)}", file=sys.stderr)

    rules = [f"{t}/{a}{suffix}" for suffix in ("", ", label agrees") for t in TOKENS for a in AGGREGATES]
    table = []
    for rule in rules:
        right = [b[rule] for b in boxes if b["right"]]
        wrong = [b[rule] for b in boxes if not b["right"]]
        # result level: the top box by this rule decides the answer and its confidence
        confidences, correct = [], []
        for r in results:
            top = max(r["boxes"], key=lambda b: b[rule], default=None)
            confidences.append(top[rule] if top else None)
            correct.append(bool(top and top["right"]))
        scored = [(c, ok) for c, ok in zip(confidences, correct, strict=True) if c is not None]
        kept = [ok for c, ok in scored if c >= args.threshold]
        table.append({
            "rule": rule,
            "box_auroc": auroc(right, wrong),
            "result_auroc": auroc([c for c, ok in scored if ok], [c for c, ok in scored if not ok]),
            "accuracy_all": round(sum(correct) / len(correct), 3),
            "not_flagged": len(kept),
            "accuracy_not_flagged": round(sum(kept) / len(kept), 3) if kept else None,
        })  # fmt: skip
    print(f"{len(cases)} scenes, {len(boxes)} boxes ({sum(b['right'] for b in boxes)} right); "
          f"review threshold {args.threshold}")  # fmt: skip
    print("| tokens/aggregate | box AUROC | result AUROC | accuracy, all | not flagged | accuracy, not flagged |")
    print("|---|---|---|---|---|---|")
    for row in table:
        print(f"| {row['rule']} | {row['box_auroc']} | {row['result_auroc']} | {row['accuracy_all']} | "
              f"{row['not_flagged']} | {row['accuracy_not_flagged']} |")  # fmt: skip
    print(json.dumps(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
