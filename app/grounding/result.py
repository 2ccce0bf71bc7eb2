"""The one result object every front end returns: JSON-serialisable, original-image pixels."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from app.grounding.confidence import DEFAULT_REVIEW_THRESHOLD, confidence_of, needs_review


@dataclass(frozen=True)
class GroundingResult:
    """What Chord found for one image and one set of phrases.

    ``boxes`` are ``[x1, y1, x2, y2]`` integer pixels of the image that was sent (after EXIF
    orientation), with ``labels[i]`` and ``scores[i]`` belonging to ``boxes[i]``. ``scores`` are
    None where the backend gave no token probabilities. ``confidence`` is the best box's score (None
    without one) and ``needs_review`` says a person should check the result (no box, no score, or a
    best score under REVIEW_THRESHOLD); ``reviewed`` sets both from the boxes the result holds.
    """

    boxes: list[list[int]]
    labels: list[str]
    scores: list[float | None]
    points: list[list[int]]
    point_labels: list[str]
    text: str
    image_size: list[int]
    input_size: list[int] | None
    model: str
    latency_ms: float
    phrases: list[str] = field(default_factory=list)
    confidence: float | None = None
    needs_review: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> GroundingResult:
        """A result from its JSON form (``to_dict``, or a REST answer); fields it does not know are ignored."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    def reviewed(self, threshold: float = DEFAULT_REVIEW_THRESHOLD) -> GroundingResult:
        """A copy whose ``confidence`` and ``needs_review`` describe its boxes' scores."""
        confidence = confidence_of(self.scores)
        return replace(self, confidence=confidence, needs_review=needs_review(confidence, threshold))

    def above(self, score_threshold: float) -> GroundingResult:
        """A copy keeping only boxes whose score is at least ``score_threshold``.

        A box whose backend gave no score (None) is kept. Points carry no score at all, so a
        threshold above 0 drops them: nothing says they pass it.
        """
        if score_threshold <= 0:
            return self
        keep = [i for i, s in enumerate(self.scores) if s is None or s >= score_threshold]
        return replace(
            self,
            boxes=[self.boxes[i] for i in keep],
            labels=[self.labels[i] for i in keep],
            scores=[self.scores[i] for i in keep],
            points=[],
            point_labels=[],
        )
