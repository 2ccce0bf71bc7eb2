"""Box confidence from the probabilities of the tokens the model generated. Pure.

A box's score is the geometric mean of the probabilities of its coordinate digits: the generated
tokens inside the box's span in the answer whose text is only digits (``exp(mean(log p))``). The
JSON keys, brackets and label are left out: the model is nearly always sure of them, and counting
them lifted every score of the demo model over 0.7 (README, "Confidence and review"). A box with
no digit token (an unusual dialect) is scored over all of its tokens. 1.0 only when the model was
certain of every counted token.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def token_char_spans(pieces: Sequence[str]) -> list[tuple[int, int]]:
    """Character spans of consecutive decoded prefixes.

    ``pieces[i]`` is the decoded text of the first ``i + 1`` tokens. A token that ends inside a
    multi-byte character decodes to a prefix that is not yet final; its span is empty and the
    token that completes the character takes the whole character.
    """
    spans = []
    final = pieces[-1] if pieces else ""
    done = 0
    for prefix in pieces:
        end = len(prefix) if final.startswith(prefix) else done
        end = max(end, done)
        spans.append((done, end))
        done = end
    return spans


def span_scores(
    item_spans: Sequence[tuple[int, int]],
    token_spans: Sequence[tuple[int, int]],
    token_logprobs: Sequence[float],
    text: str | None = None,
) -> list[float | None]:
    """The score of each item span; None where no generated token overlaps it.

    With the answer's ``text``, only the tokens that are digits count (all of the span's tokens when
    none is); without it, every overlapping token counts.
    """
    if len(token_spans) != len(token_logprobs):
        raise ValueError(f"{len(token_spans)} token spans but {len(token_logprobs)} log-probabilities")
    scores: list[float | None] = []
    for start, end in item_spans:
        inside = [
            (t0, t1, lp) for (t0, t1), lp in zip(token_spans, token_logprobs, strict=True) if t0 < end and t1 > start
        ]
        digits = [lp for t0, t1, lp in inside if text is not None and text[t0:t1].strip().isdigit()]
        overlapping = digits or [lp for _, _, lp in inside]
        if not overlapping:
            scores.append(None)
            continue
        scores.append(round(math.exp(sum(overlapping) / len(overlapping)), 4))
    return scores


def decoded_prefixes(pieces: Sequence[bytes | str], text: str) -> list[str] | None:
    """Decoded prefixes (as ``token_char_spans`` takes them) from each generated token's bytes or text.

    An OpenAI-compatible server returns, per token, its text and usually its UTF-8 ``bytes``. The
    list stops at the token that completes ``text`` (a trailing stop token adds nothing); None when
    the tokens do not spell ``text``, so no score is computed from tokens that do not match the answer.
    """
    raw = b""
    prefixes = []
    for piece in pieces:
        raw += piece if isinstance(piece, bytes) else piece.encode("utf-8")
        prefixes.append(raw.decode("utf-8", errors="replace"))
        if prefixes[-1] == text:
            return prefixes
    return None
