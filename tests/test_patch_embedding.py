"""The patch embedding as a matrix product gives what the checkpoint's Conv3d gives."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import AutoModelForImageTextToText

from app.engine.base import GroundingRequest
from app.engine.patch_embedding import LinearPatchEmbed, use_linear_patch_embedding


def test_the_served_model_embeds_patches_as_the_conv3d_does_and_answers_the_same(tiny_engine, tiny_checkpoint):
    served = tiny_engine.model
    assert isinstance(served.model.visual.patch_embed, LinearPatchEmbed)
    plain = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()
    assert isinstance(plain.model.visual.patch_embed.proj, nn.Conv3d)
    assert served.state_dict().keys() == plain.state_dict().keys()  # same names: nothing renamed or added

    rng = np.random.default_rng(3)
    requests = [
        GroundingRequest(Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)), (phrase,))
        for (w, h), phrase in [((200, 120), "the red car"), ((90, 160), "左边的人"), ((140, 140), "cup")]
    ]
    inputs = dict(tiny_engine.prepare(requests).inputs)
    with torch.inference_mode():
        expected = plain.model.visual.patch_embed(inputs["pixel_values"])
        got = served.model.visual.patch_embed(inputs["pixel_values"])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)

    served_ids, served_logprobs = tiny_engine.runner.generate_ids(inputs, 12)
    tiny_engine.runner.model = plain
    try:
        plain_ids, plain_logprobs = tiny_engine.runner.generate_ids(inputs, 12)
    finally:
        tiny_engine.runner.model = served
    assert torch.equal(served_ids, plain_ids)
    torch.testing.assert_close(served_logprobs, plain_logprobs, rtol=1e-4, atol=1e-4)


def test_an_overlapping_convolution_is_left_alone():
    class Vision(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch_embed = nn.Module()
            self.patch_embed.proj = nn.Conv3d(3, 8, kernel_size=(2, 4, 4), stride=(2, 2, 2), bias=False)

    vision = Vision()
    assert use_linear_patch_embedding(vision) == []
    assert isinstance(vision.patch_embed.proj, nn.Conv3d) and not isinstance(vision.patch_embed, LinearPatchEmbed)
