"""``python -m app eval``: ground labelled cases (in this process or on a server) and score them.

Cases come from a JSONL file, a COCO detection file or a RefCOCO-style file (see
``app.grounding.evaluation``); image paths are taken relative to the cases file unless absolute. The
grounding goes through the same grounders as ``batch`` (``ServiceGrounder`` / ``ServerGrounder``), so
eval judges exactly what the REST API answers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from app.batch.runner import Grounder
from app.grounding.evaluation import CaseOutcome, EvalCase, cases_from_coco, cases_from_records, score_case
from app.grounding.options import GroundingOptions


def load_cases(path: str | Path) -> list[EvalCase]:
    """The cases of a JSONL, COCO or RefCOCO-style file, with image paths resolved against its folder."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except ValueError:
        data = None  # JSON Lines
    if isinstance(data, dict) and "images" in data and "annotations" in data:
        cases = cases_from_coco(data)
    elif isinstance(data, list):
        cases = cases_from_records(data)
    elif isinstance(data, dict):
        cases = cases_from_records([data])
    else:
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except ValueError as exc:
                    raise ValueError(f"{path} line {number} is not JSON: {exc}") from None
        cases = cases_from_records(records)
    if not cases:
        raise ValueError(f"{path} holds no cases")
    root = path.resolve().parent
    return [_resolved(case, root) for case in cases]


def _resolved(case: EvalCase, root: Path) -> EvalCase:
    image = Path(case.image)
    image = image if image.is_absolute() else root / image
    if not image.is_file():
        raise ValueError(f"case {case.id}: image {image} not found")
    return EvalCase(case.id, str(image), case.phrase, case.boxes, case.group)


def run_eval(
    cases: Sequence[EvalCase],
    grounder: Grounder,
    options: GroundingOptions,
    batch_size: int,
    on_progress: Callable[[int], None] | None = None,
) -> list[CaseOutcome]:
    """Every case grounded (``batch_size`` at a time, cases of one phrase together) and scored, in order."""
    outcomes: list[CaseOutcome | None] = [None] * len(cases)
    for start in range(0, len(cases), batch_size):
        by_phrase: dict[str, list[int]] = {}
        for index in range(start, min(start + batch_size, len(cases))):
            by_phrase.setdefault(cases[index].phrase, []).append(index)
        for phrase, indices in by_phrase.items():
            results = grounder.ground((phrase,), [Path(cases[i].image) for i in indices], options)
            for index, result in zip(indices, results, strict=True):
                outcomes[index] = score_case(cases[index], result)
            if on_progress is not None:
                on_progress(len(indices))
    return outcomes  # type: ignore[return-value]
