"""The demo-model training script: a few steps on a tiny shape, resumed from its checkpoint."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from transformers import AutoProcessor

from app.demo.scenes import COLOUR_ZH, COLOURS, SHAPE_ZH, SHAPES, scene_rng
from app.engine.base import GroundingRequest
from app.engine.tiny_checkpoint import TinyShape
from app.engine.transformers_engine import TransformersEngine
from app.settings import DEMO_MODEL_DIR, load_settings
from tools.demo_model.training import (
    IGNORE,
    STATE_FILE,
    TrainConfig,
    build_merges,
    build_skeleton,
    collate,
    hard_scene,
    lr_factor,
    make_example,
    merge_corpus,
    objects_for_step,
)

ROOT = Path(__file__).resolve().parent.parent
TINY = replace(
    TrainConfig(), shape=asdict(TinyShape(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)), mrope_section=(2, 1, 1)
)


def _script():
    spec = importlib.util.spec_from_file_location("train_demo_model", ROOT / "scripts" / "train_demo_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """Two steps of the real script on a tiny shape, then a resume to three."""
    out = tmp_path_factory.mktemp("demo-run")
    args = ["--out", str(out), "--tiny", "--batch-size", "2", "--save-every", "1", "--no-progress", "--threads", "1"]
    # With every training-only aid on: the colour/shape probe, attention supervision, hard distractors.
    args += ["--identity-aux-weight", "0.5", "--attention-aux-weight", "0.5", "--attention-aux-layer", "1"]
    args += ["--hard-distractor-prob", "0.5", "--curriculum-fraction", "0"]
    assert _script().main([*args, "--steps", "2"]) == 0
    first = torch.load(out / STATE_FILE, weights_only=False)
    assert first["step"] == 2
    assert _script().main([*args, "--steps", "3", "--export", str(out / "exported")]) == 0
    return out, first


def test_training_resumes_from_its_checkpoint(trained_run):
    out, first = trained_run
    second = torch.load(out / STATE_FILE, weights_only=False)
    assert second["step"] == 3
    assert second["optimizer"]["state"], "optimizer moments are saved and carried on"
    assert not torch.equal(first["identity_probe"]["weight"], second["identity_probe"]["weight"])
    changed = [k for k in first["model"] if not torch.equal(first["model"][k], second["model"][k])]
    assert changed, "the resumed step trained the restored weights"
    assert (out / "exported" / "model.safetensors").exists() and (out / "exported" / "tokenizer.json").exists()


def test_resume_refuses_another_configuration(trained_run, tmp_path):
    out, _ = trained_run
    with pytest.raises(ValueError, match="another configuration"):
        _script().main(["--out", str(out), "--tiny", "--steps", "4", "--lr", "0.1", "--no-progress"])


def test_the_engine_loads_the_trained_checkpoint_and_prompts_as_training_did(trained_run):
    out, _ = trained_run
    engine = TransformersEngine.load(load_settings(model_path=str(out / "exported"), device="cpu", max_new_tokens=8))
    assert engine.info.model == "exported"
    example = make_example(engine.processor, 5, 1.0, TINY)
    inputs = engine.prepare([GroundingRequest(example.image, example.phrases)]).inputs
    assert inputs["input_ids"][0].tolist() == example.prompt_ids, "training prompt == the engine's prompt"
    assert torch.equal(inputs["pixel_values"], example.pixel_values)
    # Every input the engine gives the model, training gives it too (positions come from mm_token_type_ids).
    batch = collate([example], engine.processor.tokenizer.pad_token_id)
    assert set(inputs) <= set(batch), set(inputs) - set(batch)
    prompt = slice(0, len(example.prompt_ids))
    for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
        assert batch[key][0, prompt].tolist() == inputs[key][0].tolist(), key
    result = engine.ground([GroundingRequest(example.image, example.phrases)])[0]
    assert result.input_size == [int(example.grid_thw[0, 2]) * 14, int(example.grid_thw[0, 1]) * 14]


def test_labels_cover_exactly_the_answer(trained_run):
    out, _ = trained_run
    engine = TransformersEngine.load(load_settings(model_path=str(out / "exported"), device="cpu"))
    tokenizer = engine.processor.tokenizer
    examples = [make_example(engine.processor, i, 1.0, TINY) for i in range(4)]
    batch = collate(examples, tokenizer.pad_token_id)
    assert batch["input_ids"].shape[1] % 8 == 0
    for row, example in enumerate(examples):
        labels = batch["labels"][row]
        kept = labels[labels != IGNORE].tolist()
        assert tokenizer.decode(kept, skip_special_tokens=False) == example.answer + "<|im_end|>"
        assert example.answer.startswith('[{"bbox_2d": [') and example.answer.endswith('"}]')


def test_merges_shorten_the_answer_format():
    merges = build_merges(merge_corpus())
    joined = {a + b for a, b in merges}
    assert {"Ġhelpful", "bbox", "label", "Locate"} <= joined


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 1 / 200),  # warm-up starts near zero
        (199, 1.0),  # warm-up ends at the peak
        (8000, 0.05),  # cosine ends at min_lr_ratio
    ],
)
def test_lr_schedule(step, expected):
    assert lr_factor(step, replace(TrainConfig(), steps=8000, warmup_steps=200)) == pytest.approx(expected)


def test_curriculum_goes_from_one_object_to_the_domain():
    config = TrainConfig()
    start = [objects_for_step(scene_rng("train", i), 0.0, config) for i in range(200)]
    end = [objects_for_step(scene_rng("train", i), 1.0, config) for i in range(400)]
    assert set(start) == {1}
    assert set(end) == {1, 2, 3, 4} and 0.15 < end.count(1) / len(end) < 0.35


def test_a_run_can_start_from_a_trained_checkpoint(trained_run, tmp_path):
    out, _ = trained_run
    model, _ = build_skeleton(tmp_path / "model", replace(TINY, init_from=str(out / "exported")))
    exported = TransformersEngine.load(load_settings(model_path=str(out / "exported"), device="cpu")).model
    theirs = exported.state_dict()
    assert all(torch.equal(value, theirs[name]) for name, value in model.state_dict().items())


def test_hard_scenes_put_shapes_sharing_the_targets_colour_or_shape_next_to_it():
    shared = others = 0
    for index in range(60):
        scene = hard_scene(scene_rng("train", index), 4)
        target, *rest = scene.objects
        assert len({(o.colour, o.shape) for o in scene.objects}) == len(scene.objects)  # each pair once
        x1, y1, x2, y2 = target.box
        assert scene.image.getpixel(((x1 + x2) // 2, (y1 + y2) // 2)) == target.rgb  # drawn where its box says
        shared += sum(o.colour == target.colour or o.shape == target.shape for o in rest)
        others += len(rest)
    assert shared / others > 0.65  # the domain's random draws share one of the two for 5 of 11 kinds


@pytest.fixture(scope="module")
def demo_processor():
    return AutoProcessor.from_pretrained(DEMO_MODEL_DIR)


def test_box_tokens_are_pointed_at_the_image_tokens_of_their_object(demo_processor):
    """Attention supervision: the tokens writing a box look at the image tokens under that box's centre."""
    config = replace(TrainConfig(), multi_target_prob=1.0, hard_distractor_prob=0.5, curriculum_fraction=0)
    examples = [make_example(demo_processor, index, 1.0, config) for index in range(12)]
    assert max(len(e.attention_targets) for e in examples) >= 3
    batch = collate(examples, demo_processor.tokenizer.pad_token_id)
    image_token_id = demo_processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    for row, example in enumerate(examples):
        image_positions = [i for i, t in enumerate(example.prompt_ids) if t == image_token_id]
        columns = int(example.grid_thw[0, 2]) // 2
        items = json.loads(example.answer)
        assert len(example.attention_targets) == len(items)
        for ((first, end), keys), item in zip(example.attention_targets, items, strict=True):
            written = demo_processor.tokenizer.decode(example.answer_ids[first:end])
            assert json.dumps(item["bbox_2d"]) in written and item["label"] not in written
            x1, y1, x2, y2 = item["bbox_2d"]
            centre_cell = (y1 + y2) // 2 // 28 * columns + (x1 + x2) // 2 // 28
            assert image_positions[centre_cell] in keys
            queries = len(example.prompt_ids) + first - 1  # the position whose output is the box's first token
            assert batch["attention_targets"][row, queries, keys].all()
        assert len(batch["cell_colours"]) == len(batch["cell_shapes"]) == batch["input_ids"].eq(image_token_id).sum()


def test_image_tokens_inside_a_large_shape_are_labelled_with_its_colour_and_shape(demo_processor):
    config = replace(TrainConfig(), curriculum_fraction=0, multi_target_prob=1.0)
    checked = 0
    for index in range(80):
        example = make_example(demo_processor, index, 1.0, config)
        columns = int(example.grid_thw[0, 2]) // 2
        for item in json.loads(example.answer):
            x1, y1, x2, y2 = item["bbox_2d"]
            if min(x2 - x1, y2 - y1) < 56:  # only then is the centre's token wholly inside the shape's box
                continue
            cell = (y1 + y2) // 2 // 28 * columns + (x1 + x2) // 2 // 28
            shape = next(s for s in SHAPES if s in item["label"] or SHAPE_ZH[s] in item["label"])
            colour = next(c for c in COLOURS if c in item["label"] or COLOUR_ZH[c] in item["label"])
            assert example.cell_shapes[cell] == SHAPES.index(shape)
            assert example.cell_colours[cell] == list(COLOURS).index(colour)
            checked += 1
    assert checked >= 5
