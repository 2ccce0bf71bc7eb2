"""The transformers engine on a tiny Qwen2.5-VL loaded through the same from_pretrained path as a 7B."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.engine.base import GroundingRequest
from app.engine.transformers_engine import TransformersEngine
from app.errors import ModelLoadError
from app.grounding.answers import build_result
from app.grounding.families import Family
from app.settings import load_settings

SIZES = [(64, 64), (300, 100), (120, 500), (640, 480), (1, 1), (10, 300)]
PHRASES = ["the red circle", "蓝色的正方形", "all traffic lights", "the white vase", "图中穿蓝色衬衫的男人", "cup"]


def noise_image(wh, seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (wh[1], wh[0], 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def requests_of_mixed_sizes():
    return [GroundingRequest(noise_image(wh, i), (p,)) for i, (wh, p) in enumerate(zip(SIZES, PHRASES, strict=True))]


def test_tiny_checkpoint_loads_as_qwen2_5_vl_on_cpu(tiny_engine, tiny_checkpoint):
    assert tiny_engine.family is Family.QWEN2_5_VL
    assert tiny_engine.info.device == "cpu" and tiny_engine.info.dtype == "float32"
    assert tiny_engine.info.attn_impl == "sdpa"
    assert type(tiny_engine.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert json.loads((Path(tiny_checkpoint) / "config.json").read_text())["model_type"] == "qwen2_5_vl"
    assert sum(p.numel() for p in tiny_engine.model.parameters()) < 1_000_000


def test_batch_of_mixed_sizes_gives_each_request_its_own_answer(tiny_engine, requests_of_mixed_sizes):
    assert tiny_engine.processor.tokenizer.padding_side == "left"
    batched = tiny_engine.ground(requests_of_mixed_sizes)
    alone = [tiny_engine.ground([r])[0] for r in requests_of_mixed_sizes]
    assert [r.text for r in batched] == [r.text for r in alone]
    assert len({r.text for r in batched}) == len(batched), "different images and phrases give different answers"
    for request, result in zip(requests_of_mixed_sizes, batched, strict=True):
        assert result.image_size == list(request.image.size)
        w, h = result.input_size
        assert w % 28 == 0 and h % 28 == 0
        assert result.phrases == list(request.phrases)
        json.dumps(result.to_dict())  # serialisable


def test_requests_prepared_apart_and_merged_are_the_batch_prepared_together(tiny_engine, requests_of_mixed_sizes):
    """The scheduler prepares requests as they arrive and merges them: the model must see the same batch."""
    together = tiny_engine.prepare(requests_of_mixed_sizes)
    parts = [tiny_engine.prepare(requests_of_mixed_sizes[:2]), tiny_engine.prepare(requests_of_mixed_sizes[2:])]
    merged = tiny_engine.merge(parts)
    assert set(merged.inputs) == set(together.inputs)
    for key in together.inputs:
        assert torch.equal(merged.inputs[key], together.inputs[key]), key
    assert merged.image_whs == together.image_whs
    texts = [r.text for r in tiny_engine.generate(requests_of_mixed_sizes, merged)]
    assert texts == [r.text for r in tiny_engine.ground(requests_of_mixed_sizes)]


def test_input_size_is_the_processors_resize(tiny_engine):
    result = tiny_engine.ground([GroundingRequest(noise_image((640, 480), 0), ("x",))])[0]
    # MAX_PIXELS = 64 visual tokens of 28x28: 640x480 shrinks to 252x168 (9x6 tokens of 28 px = 54 <= 64).
    assert result.input_size == [252, 168]


def test_scores_are_token_probabilities(tiny_engine):
    request = GroundingRequest(noise_image((200, 200), 3), ("dog",))
    inputs = tiny_engine.prepare([request]).inputs
    prompt_len = inputs["input_ids"].shape[1]
    import torch

    with torch.inference_mode():
        out = tiny_engine.model.generate(**inputs, max_new_tokens=5, do_sample=False, output_logits=True,
                                         return_dict_in_generate=True)  # fmt: skip
    first_token = out.sequences[0, prompt_len]
    expected = torch.log_softmax(out.logits[0][0].float(), -1)[first_token].exp().item()
    # Ask the engine's own recorder for the same step.
    from transformers import LogitsProcessorList

    from app.engine.local_model import ChosenTokenLogprobs

    recorder = ChosenTokenLogprobs()
    with torch.inference_mode():
        tiny_engine.model.generate(**inputs, max_new_tokens=5, do_sample=False,
                                   logits_processor=LogitsProcessorList([recorder]))  # fmt: skip
    assert recorder.tokens[0][0].item() == first_token.item()
    assert recorder.logprobs[0][0].exp().item() == pytest.approx(expected, rel=1e-4)


def test_a_json_answer_gets_scores_between_zero_and_one():
    text = '[{"bbox_2d": [10, 20, 30, 40], "label": "a"}]'
    prefixes = [text[: i + 1] for i in range(len(text))]
    logprobs = [-0.1] * len(text)
    result = build_result(text, Family.QWEN2_5_VL, (100, 100), (50, 50), ["a"], "m", 1.0, prefixes, logprobs)
    assert result.boxes == [[20, 40, 60, 80]] and result.labels == ["a"]
    assert result.scores == [pytest.approx(0.9048, abs=1e-4)]


def test_per_request_max_new_tokens_is_respected(tiny_engine):
    image = noise_image((100, 100), 5)
    short, long = tiny_engine.ground(
        [GroundingRequest(image, ("a",), max_new_tokens=3), GroundingRequest(image, ("a",), max_new_tokens=20)]
    )
    import torch

    inputs = tiny_engine.prepare([GroundingRequest(image, ("a",))]).inputs
    with torch.inference_mode():
        three = tiny_engine.model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    expected = tiny_engine.processor.tokenizer.decode(three[0, inputs["input_ids"].shape[1] :])
    assert short.text == expected
    assert len(short.text) < len(long.text)


@pytest.mark.parametrize(
    ("model_path", "message"),
    [
        ("/no/such/checkpoint", "does not exist"),
        ("models/not-downloaded", "does not exist"),
    ],
)
def test_missing_model_path_names_the_path_and_the_fix(model_path, message):
    with pytest.raises(ModelLoadError) as info:
        TransformersEngine.load(load_settings(model_path=model_path, device="cpu"))
    assert model_path.split("/")[-1] in info.value.message and message in info.value.message
    assert "MODEL_PATH" in info.value.message


def test_unreadable_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not a readable checkpoint"):
        TransformersEngine.load(load_settings(model_path=str(tmp_path), device="cpu"))


def test_non_qwen_checkpoint_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelLoadError, match="not a supported Qwen VL family"):
        TransformersEngine.load(load_settings(model_path=str(tmp_path), device="cpu"))


@pytest.mark.parametrize(
    ("settings_range", "checkpoint_range", "expected"),
    [
        ((3136, 1003520), (3136, 12845056), (3136, 1003520)),  # a real Qwen2.5-VL: MAX_PIXELS applies
        ((3136, 1003520), (3136, 50176), (3136, 50176)),  # a small checkpoint keeps its own limit
        ((200_000, 1003520), (3136, 50176), (50176, 50176)),  # MIN_PIXELS above it: the checkpoint wins
    ],
)
def test_pixel_range_narrows_to_the_checkpoint(settings_range, checkpoint_range, expected):
    from app.engine.pixels import effective_pixel_range

    settings = load_settings(min_pixels=settings_range[0], max_pixels=settings_range[1])
    size = {"shortest_edge": checkpoint_range[0], "longest_edge": checkpoint_range[1]}
    assert effective_pixel_range(settings, size) == expected


@pytest.mark.parametrize("wh", [(10, 3000), (4000, 12), (1, 1)])
def test_extreme_strips_are_padded_for_the_processor_and_cut_back(tiny_engine, wh):
    result = tiny_engine.ground([GroundingRequest(noise_image(wh, 7), ("x",))])[0]
    assert result.image_size == list(wh)
    for x1, y1, x2, y2 in result.boxes:
        assert 0 <= x1 < x2 <= wh[0] and 0 <= y1 < y2 <= wh[1]


def test_out_of_memory_frees_the_cache_and_is_a_clear_503(tiny_engine, monkeypatch):
    """Fault injection: generate raises the OOM a full GPU raises; the engine answers, then serves on."""
    import torch

    from app.errors import OutOfMemory

    real_generate = tiny_engine.model.generate

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(tiny_engine.model, "generate", out_of_memory)
    with pytest.raises(OutOfMemory) as info:
        tiny_engine.ground([GroundingRequest(noise_image((50, 50), 1), ("x",))])
    assert info.value.status == 503 and info.value.code == "out_of_memory"
    monkeypatch.setattr(tiny_engine.model, "generate", real_generate)
    assert tiny_engine.ground([GroundingRequest(noise_image((50, 50), 1), ("x",))])[0].image_size == [50, 50]


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            {"size": {"shortest_edge": 3136, "longest_edge": 12845056}},
            {"shortest_edge": 3136, "longest_edge": 12845056},
        ),  # transformers >= 5
        ({"min_pixels": 3136, "max_pixels": 1003520}, {"shortest_edge": 3136, "longest_edge": 1003520}),  # older keys
        ({"patch_size": 14}, {}),  # no pixel range
    ],
)
def test_checkpoint_processor_size(config, expected):
    from app.engine.pixels import checkpoint_processor_size

    assert checkpoint_processor_size(config) == expected


def test_image_processor_config_is_read_from_either_file(tiny_checkpoint):
    from app.engine.pixels import image_processor_config

    config = image_processor_config(tiny_checkpoint)  # the tiny one has processor_config.json only
    assert config["patch_size"] == 14 and config["size"]["longest_edge"] == 28 * 28 * 64
