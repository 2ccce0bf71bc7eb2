"""From a raw answer to the result object: parse, map to original pixels, score. Pure."""

from __future__ import annotations

from collections.abc import Sequence

from app.grounding.families import Family
from app.grounding.mapping import map_answer
from app.grounding.parsing import parse_answer
from app.grounding.result import GroundingResult
from app.grounding.scoring import span_scores, token_char_spans

UNLABELLED = "object"


def build_result(
    text: str,
    family: Family,
    image_wh: tuple[int, int],
    input_wh: tuple[int, int] | None,
    phrases: Sequence[str],
    model: str,
    latency_ms: float,
    token_prefixes: Sequence[str] | None = None,
    token_logprobs: Sequence[float] | None = None,
) -> GroundingResult:
    """The result for one answer.

    ``token_prefixes[i]`` is the decoded text of the first ``i + 1`` generated tokens and
    ``token_logprobs[i]`` that token's log-probability; without them scores are None.
    A box without a label in the answer is labelled with the phrase when only one was asked.
    """
    mapped = map_answer(parse_answer(text, family, input_wh), family, image_wh, input_wh)
    default_label = phrases[0] if len(phrases) == 1 else UNLABELLED
    if token_prefixes is not None and token_logprobs is not None:
        scores = span_scores(mapped.box_spans, token_char_spans(token_prefixes), token_logprobs, text)
    else:
        scores = [None] * len(mapped.boxes)
    return GroundingResult(
        boxes=[list(b) for b in mapped.boxes],
        labels=[label or default_label for label in mapped.box_labels],
        scores=scores,
        points=[list(p) for p in mapped.points],
        point_labels=[label or default_label for label in mapped.point_labels],
        text=text,
        image_size=[image_wh[0], image_wh[1]],
        input_size=None if input_wh is None else [input_wh[0], input_wh[1]],
        model=model,
        latency_ms=round(latency_ms, 1),
        phrases=list(phrases),
    )
