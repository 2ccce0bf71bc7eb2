"""Box confidence from the probabilities of the tokens the model generated. Pure.

A box's score is the geometric mean of the probabilities of the generated tokens whose text
overlaps the box's span in the answer (its coordinates, and for JSON its label and keys):
``exp(mean(log p))``. It is 1.0 only when the model was certain of every one of those tokens.
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
) -> list[float | None]:
    """The score of each item span; None where no generated token overlaps it."""
    if len(token_spans) != len(token_logprobs):
        raise ValueError(f"{len(token_spans)} token spans but {len(token_logprobs)} log-probabilities")
    scores: list[float | None] = []
    for start, end in item_spans:
        overlapping = [lp for (t0, t1), lp in zip(token_spans, token_logprobs, strict=True) if t0 < end and t1 > start]
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
