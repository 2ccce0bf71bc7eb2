"""The processor's work on an image (resize, normalise, patches), kept per image for repeat questions.

``CachedImageProcessing`` gives exactly what the processor's one call gives (``tests/test_image_cache.py``
compares every tensor), in the processor's own steps: the image processor per image (cached,
keyed by ``image_key``), the processor's ``replace_image_token`` and ``get_text_with_replacements``
for the placeholder tokens, its tokenizer for the text, ``create_mm_token_type_ids`` for the
token types. Only the image part is cached; the text is tokenised for every request.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from transformers import BatchFeature

from app.engine.image_cache import ByteLru, CacheCounts


class CachedImageProcessing:
    """A processor call for prompts with one image each, the image part kept in a ``ByteLru``."""

    def __init__(self, processor, max_bytes: int):
        self.processor = processor
        self._store: ByteLru[dict[str, torch.Tensor]] = ByteLru(max_bytes)

    def counts(self) -> CacheCounts:
        return self._store.counts()

    def __call__(
        self, texts: Sequence[str], images: Sequence[Image.Image], keys: Sequence[bytes], size: dict
    ) -> BatchFeature:
        """``processor(text=texts, images=images, padding=True, return_tensors="pt", images_kwargs={"size": size})``."""
        features = []
        for image, key in zip(images, keys, strict=True):
            found = self._store.get(key)
            if found is None:
                found = dict(
                    self.processor.image_processor(
                        image, size=size, do_convert_rgb=image.mode != "RGB", return_tensors="pt"
                    )
                )
                self._store.put(key, found, sum(t.numel() * t.element_size() for t in found.values()))
            features.append(found)
        image_inputs = {name: torch.cat([f[name] for f in features]) for name in features[0]}
        replacements = [self.processor.replace_image_token(image_inputs, index) for index in range(len(images))]
        texts, _ = self.processor.get_text_with_replacements(list(texts), replacements)
        text_inputs = dict(self.processor.tokenizer(texts, padding=True, return_tensors="pt"))
        if self.processor.return_mm_token_type_ids:
            text_inputs["mm_token_type_ids"] = torch.as_tensor(
                self.processor.create_mm_token_type_ids(text_inputs["input_ids"])
            )
        return BatchFeature({**text_inputs, **image_inputs})
