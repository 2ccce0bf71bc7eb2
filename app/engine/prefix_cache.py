"""The key/value cache of a prompt's prefix through its image, kept per image, so that a new question
about an image already seen prefills only its own text.

Chord's chat prompt is ``system turn, <|vision_start|> image tokens <|vision_end|>, question``: the
prefix through ``<|vision_end|>`` depends on the image (and the processor's resize) alone. After a
full prefill, ``store`` keeps that prefix's keys and values (cut from the batch's cache, a copy)
with the row's multimodal rope delta; ``lookup`` finds them again for a later prompt with the same
image and the same prefix tokens. ``ContinuousDecoder`` then prefills only the suffix on top of a
copy, at positions ``index + rope delta`` as the model's own rope index gives text after the image.

Keys and values live where the model runs (GPU memory on a GPU); ``ByteLru`` bounds their bytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import DynamicCache

from app.engine.image_cache import ByteLru, CacheCounts


@dataclass(frozen=True)
class Prefix:
    """One prompt prefix's keys and values per layer ([1, kv heads, length, head dim] each)."""

    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]
    length: int
    rope_delta: int

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


@dataclass
class AdmissionPlan:
    """How a group of prompts joins: rows prefilled in full (keeping the prefixes ``store`` names, by
    index among ``full``: prefix key and length), and rows whose image prefix is cached."""

    full: list[int] = field(default_factory=list)
    store: dict[int, tuple[bytes, int]] = field(default_factory=dict)
    hits: list[tuple[int, torch.Tensor, Prefix]] = field(default_factory=list)  # row, its real ids, prefix


class PrefixCache:
    """Prefixes by image and prefix tokens, within ``max_bytes``; used by one decoding thread."""

    def __init__(self, model, max_bytes: int):
        self.vision_end_id = int(model.config.vision_end_token_id)
        self.text_config = model.config.get_text_config()
        self._store: ByteLru[Prefix] = ByteLru(max_bytes)

    def counts(self) -> CacheCounts:
        return self._store.counts()

    def prefix_length(self, ids: torch.Tensor) -> int:
        """Tokens through the last ``<|vision_end|>`` of a prompt's real ids (0 without an image)."""
        ends = (ids == self.vision_end_id).nonzero()
        return int(ends[-1]) + 1 if len(ends) else 0

    def key(self, image_key: bytes, prefix_ids: torch.Tensor) -> bytes:
        digest = hashlib.blake2b(image_key, digest_size=16)
        digest.update(prefix_ids.to(torch.int64).cpu().numpy().tobytes())
        return digest.digest()

    def lookup(self, key: bytes) -> Prefix | None:
        return self._store.get(key)

    def plan(self, inputs: dict[str, torch.Tensor], image_keys) -> AdmissionPlan:
        """Look up each row's prefix (rows with an image key); a batch not of one image per row runs in full."""
        ids, mask, grid = inputs["input_ids"], inputs["attention_mask"], inputs.get("image_grid_thw")
        plan = AdmissionPlan()
        if grid is None or len(grid) != len(ids):
            plan.full = list(range(len(ids)))
            return plan
        for row, image_key in enumerate(image_keys):
            real = ids[row][mask[row].bool()]
            length = self.prefix_length(real)
            prefix_key = self.key(image_key, real[:length]) if image_key is not None and length else None
            prefix = self.lookup(prefix_key) if prefix_key is not None else None
            if prefix is not None:
                plan.hits.append((row, real, prefix))
                continue
            if prefix_key is not None:
                plan.store[len(plan.full)] = (prefix_key, length)
            plan.full.append(row)
        return plan

    def store(self, key: bytes, cache: DynamicCache, row: int, start: int, length: int, rope_delta: int) -> None:
        """Keep ``length`` columns from ``start`` of batch row ``row`` of ``cache`` (copies, not views)."""
        cut = slice(start, start + length)
        keys = tuple(layer.keys[row : row + 1, :, cut].clone() for layer in cache.layers)
        values = tuple(layer.values[row : row + 1, :, cut].clone() for layer in cache.layers)
        prefix = Prefix(keys, values, length, rope_delta)
        self._store.put(key, prefix, prefix.nbytes)

    def cache_from(self, prefix: Prefix) -> DynamicCache:
        """A new dynamic cache holding the prefix (the stored tensors stay as they are)."""
        cache = DynamicCache(config=self.text_config)
        for index, (keys, values) in enumerate(zip(prefix.keys, prefix.values, strict=True)):
            cache.update(keys, values, index)
        return cache


def select_rows(inputs: dict[str, torch.Tensor], rows: list[int]) -> dict[str, torch.Tensor]:
    """The processor batch of these rows only (one image per row), without columns that are padding in all."""
    sizes = inputs["image_grid_thw"].prod(dim=-1).tolist()
    patches = inputs["pixel_values"].split(sizes)
    shape = inputs["input_ids"].shape
    chosen = torch.tensor(rows)
    selected, per_token = {}, []
    for name, value in inputs.items():
        if name == "pixel_values":
            selected[name] = torch.cat([patches[row] for row in rows])
        elif name == "image_grid_thw" or value.shape == shape:
            selected[name] = value[chosen.to(value.device)]
            per_token += [name] if value.shape == shape else []
        else:
            raise ValueError(f"cannot split the processor output {name!r} by row")
    used = selected["attention_mask"].any(dim=0).nonzero()
    start = int(used[0]) if len(used) else 0
    for name in per_token:
        selected[name] = selected[name][:, start:]
    return selected
