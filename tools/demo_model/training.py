"""Training the demo model: tokenizer merges, model shape, batches with answer-only labels, the loop.

Imports torch; the scripts and tests call it. Every training example comes from the same code path
the engine uses at inference: ``grounding_prompt`` inside the processor's chat template, the image
through the checkpoint's own processor (loaded back with ``AutoProcessor`` as the engine loads it),
and the target box scaled to the resized input that processor really produced.
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

from app.demo.answer_format import answer_text, to_input_box
from app.demo.scenes import (
    COLOUR_ZH,
    COLOURS,
    MAX_OBJECTS,
    PHRASE_STYLES,
    SHAPE_ZH,
    SHAPES,
    Scene,
    SceneObject,
    draw_shape,
    jittered_colour,
    make_scene,
    phrase_for,
    scene_rng,
)
from app.engine.tiny_checkpoint import (
    PRETOKENIZE_REGEX,
    TinyShape,
    build_config,
    build_processor,
    build_tokenizer,
    generation_config,
)
from app.grounding.families import Family
from app.grounding.prompts import grounding_prompt

logger = logging.getLogger(__name__)

IGNORE = -100
STATE_FILE = "train_state.pt"
MODEL_DIR = "model"
# A resumed run may change only its schedule: how long it runs and how long the one-object phase lasts.
SCHEDULE_FIELDS = ("steps", "curriculum_fraction")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run; stored in its checkpoint so a resume continues the same run."""

    steps: int = 8000
    batch_size: int = 8
    lr: float = 1e-3
    warmup_steps: int = 150
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    seed: int = 0
    # Curriculum: the share of one-object scenes falls from 1 to the domain's 1/4 over this part of the run.
    curriculum_fraction: float = 0.3
    multi_target_prob: float = 0.2
    # M-RoPE hands each head's frequency pairs, fastest first, to (time, row, column) in that order.
    # Qwen's 1e6 base leaves rows and columns only near-zero frequencies (no position at this size);
    # a very low base leaves no slow pairs, so attention cannot match content 30+ tokens away (the
    # label was never copied). With base 1000 and (2, 3, 11) the columns get only slow pairs (a probe
    # could not read them); run G used base 100 with the position loss below (app/demo_model/README.md).
    rope_theta: float = 1000.0
    mrope_section: tuple[int, int, int] = (2, 3, 11)
    # Random q/k biases of this size make every attention score a strong function of relative (row,
    # column) position from the first step, so position is readable before any q/k weight is learnt.
    qk_bias_init_std: float = 1.5
    # Auxiliary loss during training only: a linear probe must read each image token's (row, column)
    # from the language model's hidden state after this many layers. Rotary position is relative, so
    # nothing else puts absolute position into the content the answer tokens read; without it the
    # column of an image token was not linearly readable even after 6900 steps. The probe is not
    # part of the exported model (which stays a plain Qwen2.5-VL). 0 turns it off.
    position_aux_weight: float = 0.0
    position_aux_layer: int = 2
    # Auxiliary loss during training only: a linear probe must read the colour and the shape of the object
    # covering each image token from the same hidden state as the position probe (background is a class).
    identity_aux_weight: float = 0.0
    # Attention supervision during training only: in this layer, these heads of each answer token that
    # writes a box must put their attention on the image tokens of the object that box is for. Run I found
    # and placed shapes but chose the asked one among several barely above chance (it boxed a shape of
    # another colour and shape about as often as one sharing either); this makes the choice explicit.
    attention_aux_weight: float = 0.0
    attention_aux_layer: int = 2
    attention_aux_heads: tuple[int, ...] = (0, 1)
    # Share of multi-object scenes whose other shapes share the target's colour or its shape.
    hard_distractor_prob: float = 0.0
    # Share of one-object scenes once the curriculum is over (the domain's own share is 1/4).
    final_one_object_share: float = 1 / MAX_OBJECTS
    # A checkpoint directory (same model shape) whose weights start the run; empty: random init.
    init_from: str = ""
    vision_window_px: int = 448
    shape: dict = field(
        default_factory=lambda: asdict(
            TinyShape(
                hidden_size=128,
                intermediate_size=384,
                num_hidden_layers=4,
                num_attention_heads=4,
                num_key_value_heads=2,
                vision_depth=2,
                vision_hidden_size=128,
                vision_intermediate_size=256,
                vision_heads=2,
                min_pixels=28 * 28 * 16,
                max_pixels=28 * 28 * 36,
            )
        )
    )


def merge_corpus() -> list[str]:
    """Every text the model reads or writes, with sample numbers: the material for BPE merges.

    Chinese phrases enter only as separate words (颜色, 的, 形状): a CJK run is one pre-token, and
    merging whole phrases would make each of the 24 phrases an atomic token, different in the
    prompt (after “) and in the answer, instead of colour and shape tokens shared by all of them.
    """
    rng = np.random.default_rng(12345)
    texts = ["system\nYou are a helpful assistant.", "user\n", "assistant\n"]
    texts += [*COLOUR_ZH.values(), *SHAPE_ZH.values(), "的", "“", "”", "、"]
    for colour in COLOURS:
        for shape in SHAPES:
            for style in ("en_the", "en"):
                phrase = phrase_for(colour, shape, style)
                texts.append(grounding_prompt([phrase], Family.QWEN2_5_VL))
                texts.append(grounding_prompt([phrase, phrase], Family.QWEN2_5_VL))
                box = tuple(int(v) for v in rng.integers(0, 400, size=4))
                texts.append(answer_text([(box, phrase), (box, phrase)]))
    texts.append(grounding_prompt(["X"], Family.QWEN2_5_VL).replace("“X”", "“"))
    texts.append(grounding_prompt(["一", "一"], Family.QWEN2_5_VL).replace("“一”", ""))
    return texts * 4


def build_merges(texts: list[str], vocab_size: int = 1200) -> list[tuple[str, str]]:
    """Byte-level BPE merges learnt on ``texts`` with the tokenizer's own pre-tokenisation."""
    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, initial_alphabet=alphabet, show_progress=False
    )
    backend.train_from_iterator(texts, trainer)
    return [tuple(m) for m in json.loads(backend.to_str())["model"]["merges"]]


def build_skeleton(out_dir: Path, config: TrainConfig):
    """Write tokenizer + processor files to ``out_dir``; return a fresh model and the processor loaded back."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shape = TinyShape(**config.shape)
    tokenizer = build_tokenizer(merges=build_merges(merge_corpus()))
    model_config = build_config(tokenizer, shape)
    model_config.text_config.rope_parameters["rope_theta"] = config.rope_theta
    half_head = shape.hidden_size // shape.num_attention_heads // 2
    if sum(config.mrope_section) != half_head:
        raise ValueError(f"mrope_section {config.mrope_section} must sum to head_dim / 2 = {half_head}")
    model_config.text_config.rope_parameters["mrope_section"] = list(config.mrope_section)
    model_config.vision_config.window_size = config.vision_window_px
    torch.manual_seed(config.seed)
    model = Qwen2_5_VLForConditionalGeneration(model_config)
    position_sensitive_init(model, config.qk_bias_init_std, config.seed)
    if config.init_from:
        start_from(model, Path(config.init_from))
    model.generation_config = generation_config(tokenizer)
    build_processor(tokenizer, shape).save_pretrained(out_dir)
    return model, AutoProcessor.from_pretrained(out_dir)


def start_from(model, checkpoint: Path) -> None:
    """Copy the weights of ``checkpoint`` (a model of the same shape and positions) into ``model``."""
    source = Qwen2_5_VLForConditionalGeneration.from_pretrained(checkpoint)
    ours, theirs = model.config.text_config.rope_parameters, source.config.text_config.rope_parameters
    if {k: ours[k] for k in ("rope_theta", "mrope_section")} != {k: theirs[k] for k in ("rope_theta", "mrope_section")}:
        raise ValueError(f"{checkpoint} has other positions ({theirs}) than this run ({ours})")
    model.load_state_dict(source.state_dict())


def position_sensitive_init(model, std: float, seed: int) -> None:
    """Draw the language model's q/k projection biases from N(0, std^2).

    With zero biases and small weights, attention starts nearly uniform and carries almost no
    position; the rotary (M-RoPE) angle between two large random biases makes each head's score a
    rich function of the relative time/row/column offset instead, so an image token's first-layer
    output already depends on where it is (a linear probe reads its column at 0.33-0.42 accuracy
    instead of the 0.16 majority guess, measured on 48 scenes).
    """
    if std <= 0:
        return
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            for projection in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                projection.bias.copy_(torch.randn(projection.bias.shape, generator=generator) * std)


@dataclass
class Example:
    prompt_ids: list[int]
    answer_ids: list[int]
    pixel_values: torch.Tensor
    grid_thw: torch.Tensor
    answer: str
    image: Image.Image
    phrases: tuple[str, ...]
    # The processor's per-token modality ids for the prompt (image tokens marked). The model's M-RoPE
    # positions come from them when present, as they are at inference; training without them
    # taught run G positions the engine never uses (app/demo_model/README.md).
    prompt_token_types: list[int]
    # Training-only targets: each image token's colour and shape class (background last), and for each
    # answer item the answer tokens of its box with the prompt positions of that object's image tokens.
    cell_colours: list[int] = field(default_factory=list)
    cell_shapes: list[int] = field(default_factory=list)
    attention_targets: list[tuple[tuple[int, int], list[int]]] = field(default_factory=list)


def objects_for_step(rng: np.random.Generator, progress: float, config: TrainConfig) -> int:
    """Curriculum: one object at first, then the domain's uniform 1-4 (or ``final_one_object_share`` ones)."""
    floor = config.final_one_object_share
    p_one = max(floor, 1 - progress / max(config.curriculum_fraction, 1e-9) * (1 - floor))
    return 1 if rng.random() < p_one else int(rng.integers(2, MAX_OBJECTS + 1))


def hard_scene(rng: np.random.Generator, n_objects: int) -> Scene:
    """A scene whose first object is the target and whose others mostly share its colour or its shape.

    The placement, background and jitter are the domain's (``make_scene``); only the kinds are chosen.
    """
    base = make_scene(rng, n_objects)
    kinds = [(c, s) for c in COLOURS for s in SHAPES]
    target = kinds[int(rng.integers(len(kinds)))]
    sharing = [k for k in kinds if k != target and (k[0] == target[0] or k[1] == target[1])]
    others = [k for k in kinds if k != target and k not in sharing]
    chosen = [target]
    for _ in base.objects[1:]:
        pool = sharing if sharing and (rng.random() < 0.75 or not others) else others
        kind = pool.pop(int(rng.integers(len(pool))))
        chosen.append(kind)
    image = Image.new("RGB", base.image.size, base.background)
    draw = ImageDraw.Draw(image)
    objects = []
    for (colour, shape), obj in zip(chosen, base.objects, strict=True):
        objects.append(SceneObject(colour, shape, obj.box, jittered_colour(rng, colour)))
        draw_shape(draw, shape, obj.box, objects[-1].rgb)
    return Scene(image=image, objects=tuple(objects), background=base.background)


def make_example(processor, index: int, progress: float, config: TrainConfig) -> Example:
    rng = scene_rng("train", index)
    n_objects = objects_for_step(rng, progress, config)
    if n_objects > 1 and config.hard_distractor_prob > 0 and rng.random() < config.hard_distractor_prob:
        scene = hard_scene(rng, n_objects)
        objects = list(scene.objects)
        rest = objects[1:]
        rng.shuffle(rest)
        objects = objects[:1] + rest
    else:
        scene = make_scene(rng, n_objects)
        objects = list(scene.objects)
        rng.shuffle(objects)
    count = 1
    if len(objects) > 1 and rng.random() < config.multi_target_prob:
        count = int(rng.integers(2, len(objects) + 1))
    style = PHRASE_STYLES[int(rng.integers(len(PHRASE_STYLES)))]
    targets = [(obj.box, obj.phrase(style)) for obj in objects[:count]]
    prompt = grounding_prompt([phrase for _, phrase in targets], Family.QWEN2_5_VL)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=[scene.image], return_tensors="pt")
    _, grid_h, grid_w = inputs["image_grid_thw"][0].tolist()
    patch = processor.image_processor.patch_size
    input_wh = (grid_w * patch, grid_h * patch)
    answer = answer_text([(to_input_box(box, scene.image_wh, input_wh), phrase) for box, phrase in targets])
    encoded = processor.tokenizer(answer + "<|im_end|>", add_special_tokens=False, return_offsets_mapping=True)
    answer_ids = encoded["input_ids"]
    prompt_ids = inputs["input_ids"][0].tolist()
    phrases = tuple(phrase for _, phrase in targets)
    token_types = inputs["mm_token_type_ids"][0].tolist()
    cell = patch * processor.image_processor.merge_size
    grid = (grid_h * patch // cell, grid_w * patch // cell)
    scale = (input_wh[0] / scene.image_wh[0], input_wh[1] / scene.image_wh[1])
    input_boxes = [tuple(v * scale[i % 2] for i, v in enumerate(obj.box)) for obj in objects]
    colours, shapes = cell_identities(grid, cell, input_boxes, objects)
    image_token_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    image_positions = [i for i, token in enumerate(prompt_ids) if token == image_token_id]
    spans = box_token_spans(answer, [off for off in encoded["offset_mapping"]])
    attention_targets = [
        (span, [image_positions[c] for c in target_cells(grid, cell, input_boxes[k])]) for k, span in enumerate(spans)
    ]
    return Example(
        prompt_ids, answer_ids, inputs["pixel_values"], inputs["image_grid_thw"], answer, scene.image, phrases,
        token_types, colours, shapes, attention_targets,
    )  # fmt: skip


def _overlap(box, cell_box) -> float:
    w = min(box[2], cell_box[2]) - max(box[0], cell_box[0])
    h = min(box[3], cell_box[3]) - max(box[1], cell_box[1])
    return max(w, 0) * max(h, 0)


def _cell_boxes(grid: tuple[int, int], cell: int):
    return [(c * cell, r * cell, (c + 1) * cell, (r + 1) * cell) for r in range(grid[0]) for c in range(grid[1])]


def cell_identities(grid, cell: int, boxes, objects) -> tuple[list[int], list[int]]:
    """Colour and shape class of each image token (row-major): the object covering most of it, if a quarter."""
    colours, shapes = [], []
    for cell_box in _cell_boxes(grid, cell):
        cover = [_overlap(box, cell_box) for box in boxes]
        best = int(np.argmax(cover))
        if cover[best] >= 0.25 * cell * cell:
            colours.append(list(COLOURS).index(objects[best].colour))
            shapes.append(SHAPES.index(objects[best].shape))
        else:
            colours.append(len(COLOURS))
            shapes.append(len(SHAPES))
    return colours, shapes


def target_cells(grid, cell: int, box) -> list[int]:
    """The image tokens (row-major indices) holding at least a tenth of ``box`` (at least the one holding most)."""
    area = max((box[2] - box[0]) * (box[3] - box[1]), 1e-9)
    cover = [_overlap(box, cell_box) / area for cell_box in _cell_boxes(grid, cell)]
    cells = [i for i, share in enumerate(cover) if share >= 0.1]
    return cells or [int(np.argmax(cover))]


def box_token_spans(answer: str, offsets) -> list[tuple[int, int]]:
    """For each answer item, the answer-token indices [start, end) from its opening brace to its box's ``]``."""
    spans, search = [], 0
    while (start := answer.find('{"bbox_2d"', search)) >= 0:
        end = answer.index("]", start)
        tokens = [i for i, (a, b) in enumerate(offsets) if a < end + 1 and b > start]
        spans.append((tokens[0], tokens[-1] + 1))
        search = end
    return spans


def collate(examples: list[Example], pad_id: int, multiple: int = 8) -> dict[str, torch.Tensor]:
    """Right-padded ids (length rounded up to ``multiple``) with labels on the answer tokens and ``<|im_end|>``."""
    length = max(len(e.prompt_ids) + len(e.answer_ids) for e in examples)
    length = -(-length // multiple) * multiple
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), length), dtype=torch.long)
    token_types = torch.zeros((len(examples), length), dtype=torch.long)  # answer and padding: text (0)
    attend = torch.zeros((len(examples), length, length), dtype=torch.bool)
    for row, e in enumerate(examples):
        seq = e.prompt_ids + e.answer_ids
        ids[row, : len(seq)] = torch.tensor(seq)
        labels[row, len(e.prompt_ids) : len(seq)] = torch.tensor(e.answer_ids)
        mask[row, : len(seq)] = 1
        token_types[row, : len(e.prompt_ids)] = torch.tensor(e.prompt_token_types)
        for (first, end), keys in e.attention_targets:
            # The hidden state one position earlier is the one that predicts each of these tokens.
            queries = torch.arange(len(e.prompt_ids) + first - 1, len(e.prompt_ids) + end - 1)
            attend[row, queries.unsqueeze(1), torch.tensor(keys).unsqueeze(0)] = True
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "mm_token_type_ids": token_types,
        "labels": labels,
        "pixel_values": torch.cat([e.pixel_values for e in examples]),
        "image_grid_thw": torch.cat([e.grid_thw for e in examples]),
        "cell_colours": torch.tensor([c for e in examples for c in e.cell_colours], dtype=torch.long),
        "cell_shapes": torch.tensor([s for e in examples for s in e.cell_shapes], dtype=torch.long),
        "attention_targets": attend,
    }


TRAINING_ONLY_KEYS = ("labels", "cell_colours", "cell_shapes", "attention_targets")


def image_token_grid(grid_thw: torch.Tensor, merge: int = 2) -> torch.Tensor:
    """(row, column) of every image token, images in order, tokens row-major: the order the model sees them."""
    cells = []
    for _, h, w in grid_thw.tolist():
        rows, cols = h // merge, w // merge
        cells.append(torch.stack(torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij"), -1).view(-1, 2))
    return torch.cat(cells).float()


def position_loss(hidden: torch.Tensor, input_ids: torch.Tensor, image_token_id: int, grid_thw, probe) -> torch.Tensor:
    """Mean squared error of the probe's (row, column) for each image token, in units of 4 tokens."""
    states = hidden[input_ids == image_token_id]
    target = image_token_grid(grid_thw).to(states.device) / 4
    return torch.nn.functional.mse_loss(probe(states.float()), target)


def identity_loss(hidden, input_ids, image_token_id: int, colours, shapes, probe) -> torch.Tensor:
    """Cross-entropy of the probe's colour (4 + background) and shape (3 + background) for each image token."""
    logits = probe(hidden[input_ids == image_token_id].float())
    colour_logits, shape_logits = logits[:, : len(COLOURS) + 1], logits[:, len(COLOURS) + 1 :]
    return torch.nn.functional.cross_entropy(colour_logits, colours) + torch.nn.functional.cross_entropy(
        shape_logits, shapes
    )


def attention_loss(attentions: torch.Tensor, targets: torch.Tensor, heads) -> torch.Tensor:
    """Mean -log of the attention mass that the chosen heads of each box token put on its object's image tokens."""
    weights = attentions[:, list(heads)].float()
    rows = targets.any(-1)
    mass = (weights * targets.unsqueeze(1)).sum(-1)  # (batch, heads, queries)
    return -torch.log(mass.clamp_min(1e-6)).transpose(1, 2)[rows].mean()


def lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio``."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def answer_loss(logits: torch.Tensor, labels: torch.Tensor, digit_ids: torch.Tensor):
    """Mean cross-entropy over answer tokens, plus the loss and accuracy over the digit tokens alone."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    keep = labels != IGNORE
    flat_logits, flat_labels = logits[keep], labels[keep]
    losses = torch.nn.functional.cross_entropy(flat_logits, flat_labels, reduction="none")
    digits = torch.isin(flat_labels, digit_ids)
    digit_acc = (flat_logits[digits].argmax(-1) == flat_labels[digits]).float().mean()
    return losses.mean(), losses[digits].mean().detach(), digit_acc.detach()


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def train(out_dir: Path, config: TrainConfig, device: torch.device, save_every: int = 200, progress_bar=True) -> Path:
    """Train (or resume) the run in ``out_dir``; returns the exported checkpoint directory."""
    from tqdm import tqdm

    _keep_freed_memory()
    model_dir = out_dir / MODEL_DIR
    state_path = out_dir / STATE_FILE
    model, processor = build_skeleton(model_dir, config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.98), weight_decay=config.weight_decay)
    probe = None
    if config.position_aux_weight > 0:
        probe = _position_probe(model, config.seed)
        optimizer.add_param_group({"params": list(probe.parameters()), "weight_decay": 0.0})
    identity_probe = None
    if config.identity_aux_weight > 0:
        torch.manual_seed(config.seed + 2)
        identity_probe = torch.nn.Linear(model.config.text_config.hidden_size, len(COLOURS) + len(SHAPES) + 2)
        optimizer.add_param_group({"params": list(identity_probe.parameters()), "weight_decay": 0.0})
    if config.attention_aux_weight > 0:
        model.set_attn_implementation("eager")  # the attention weights themselves are trained
    step = 0
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        schedule = {name: getattr(config, name) for name in SCHEDULE_FIELDS}
        if {**state["config"], **schedule} != asdict(config):
            raise ValueError(f"{state_path} belongs to a run with another configuration: {state['config']}")
        for name, value in schedule.items():
            if state["config"][name] != value:
                logger.warning("%s changed from %s to %s on resume", name, state["config"][name], value)
        model.load_state_dict(state["model"])
        if probe is not None:
            probe.load_state_dict(state["probe"])
        if identity_probe is not None:
            identity_probe.load_state_dict(state["identity_probe"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        logger.info("resuming %s at step %d", out_dir, step)
    model.to(device).train()
    for extra in (probe, identity_probe):
        if extra is not None:
            extra.to(device).train()
    _move_optimizer(optimizer, device)
    tokenizer = processor.tokenizer
    image_token_id = model.config.image_token_id
    digit_ids = torch.tensor([tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)], device=device)
    logger.info("model: %.2f M parameters", sum(p.numel() for p in model.parameters()) / 1e6)
    bar = tqdm(total=config.steps, initial=step, disable=not progress_bar, dynamic_ncols=True)
    started = time.perf_counter()
    while step < config.steps:
        progress = step / config.steps
        examples = [
            make_example(processor, config.seed * 10_000_000 + step * config.batch_size + i, progress, config)
            for i in range(config.batch_size)
        ]
        batch = {k: v.to(device) for k, v in collate(examples, tokenizer.pad_token_id).items()}
        labels, colours, shapes, attend = (batch.pop(key) for key in TRAINING_ONLY_KEYS)
        for group in optimizer.param_groups:
            group["lr"] = config.lr * lr_factor(step, config)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            output = model(
                **batch,
                output_hidden_states=probe is not None or identity_probe is not None,
                output_attentions=config.attention_aux_weight > 0,
            )
        loss, digit_loss, digit_acc = answer_loss(output.logits, labels, digit_ids)
        aux = identity = attention = torch.zeros(())
        if probe is not None:
            hidden = output.hidden_states[config.position_aux_layer]
            aux = position_loss(hidden, batch["input_ids"], image_token_id, batch["image_grid_thw"], probe)
            loss = loss + config.position_aux_weight * aux
        if identity_probe is not None:
            hidden = output.hidden_states[config.position_aux_layer]
            identity = identity_loss(hidden, batch["input_ids"], image_token_id, colours, shapes, identity_probe)
            loss = loss + config.identity_aux_weight * identity
        if config.attention_aux_weight > 0:
            attentions = output.attentions[config.attention_aux_layer]
            attention = attention_loss(attentions, attend, config.attention_aux_heads)
            loss = loss + config.attention_aux_weight * attention
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", digits=f"{digit_loss.item():.3f}", acc=f"{digit_acc.item():.2f}")
        if step % 50 == 0:
            logger.info(
                "step %d loss %.4f digit_loss %.4f digit_acc %.3f position_mse %.4f identity %.4f attention %.4f "
                "lr %.2e elapsed %.0fs",
                step, loss.item(), digit_loss.item(), digit_acc.item(), aux.item(), identity.item(), attention.item(),
                optimizer.param_groups[0]["lr"], time.perf_counter() - started,
            )  # fmt: skip
        if step % save_every == 0 or step == config.steps:
            save_state(state_path, model, optimizer, step, config, probe, identity_probe)
            export(model, processor, model_dir)
    bar.close()
    return model_dir


def save_state(path: Path, model, optimizer, step: int, config: TrainConfig, probe=None, identity_probe=None) -> None:
    tmp = path.with_suffix(".tmp")
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "config": asdict(config)}
    if probe is not None:
        state["probe"] = probe.state_dict()
    if identity_probe is not None:
        state["identity_probe"] = identity_probe.state_dict()
    torch.save(state, tmp)
    tmp.replace(path)


def export(model, processor, model_dir: Path) -> None:
    """A checkpoint the engine loads like any Qwen2.5-VL: weights, config, tokenizer, processor."""
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    (model_dir / "special_tokens_check.txt").unlink(missing_ok=True)


def _keep_freed_memory() -> None:
    """Let glibc keep freed memory instead of returning it to the OS after every step.

    Each batch has new tensor shapes; with the default thresholds most of a CPU step went to page
    faults (about 2 s instead of 0.35 s per step on 2 cores).
    """
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, (1 << 31) - 1)
    libc.mallopt(m_top_pad, 1 << 29)


def _position_probe(model, seed: int) -> torch.nn.Linear:
    """The training-only linear probe from a hidden state to its image token's (row, column)."""
    torch.manual_seed(seed + 1)
    return torch.nn.Linear(model.config.text_config.hidden_size, 2)


def _move_optimizer(optimizer, device: torch.device) -> None:
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                state[key] = value.to(device)
