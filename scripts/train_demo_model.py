"""Train Chord's demo model: a tiny Qwen2.5-VL that grounds coloured shapes in synthetic scenes.

    python scripts/train_demo_model.py --out runs/demo --steps 7000
    python scripts/train_demo_model.py --out runs/demo --steps 7000 --export app/demo_model

Runs on CPU (uses CUDA when present). Checkpoints to ``OUT/train_state.pt`` every ``--save-every``
steps and resumes from it when run again with the same arguments; ``OUT/model`` is always a
loadable checkpoint. ``--export`` copies the finished model (safetensors, tokenizer, processor).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from app.engine.tiny_checkpoint import TinyShape  # noqa: E402
from tools.demo_model.training import TrainConfig, pick_device, train  # noqa: E402

EXPORTED = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "processor_config.json", "chat_template.jinja")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = TrainConfig()
    parser.add_argument("--out", type=Path, required=True, help="run directory (checkpoints, exported model)")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    parser.add_argument(
        "--curriculum-fraction",
        type=float,
        default=defaults.curriculum_fraction,
        help="share of the run over which one-object scenes give way to the domain's 1-4 (may change on resume)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--rope-theta", type=float, default=defaults.rope_theta)
    parser.add_argument(
        "--mrope-section",
        default=",".join(map(str, defaults.mrope_section)),
        help="frequency pairs per head for (time, row, column), fastest first; they sum to head_dim / 2",
    )
    parser.add_argument(
        "--position-aux-weight",
        type=float,
        default=defaults.position_aux_weight,
        help="weight of the training-only loss that makes image tokens carry their (row, column); 0 = off",
    )
    parser.add_argument("--position-aux-layer", type=int, default=defaults.position_aux_layer)
    parser.add_argument(
        "--identity-aux-weight",
        type=float,
        default=defaults.identity_aux_weight,
        help="weight of the training-only loss that makes image tokens carry the colour and shape on them; 0 = off",
    )
    parser.add_argument(
        "--attention-aux-weight",
        type=float,
        default=defaults.attention_aux_weight,
        help="weight of the training-only loss that points box tokens' attention at their object; 0 = off",
    )
    parser.add_argument("--attention-aux-layer", type=int, default=defaults.attention_aux_layer)
    parser.add_argument(
        "--attention-aux-heads",
        default=",".join(map(str, defaults.attention_aux_heads)),
        help="the heads of that layer whose attention is supervised",
    )
    parser.add_argument(
        "--hard-distractor-prob",
        type=float,
        default=defaults.hard_distractor_prob,
        help="share of multi-object scenes whose other shapes share the target's colour or shape",
    )
    parser.add_argument(
        "--final-one-object-share",
        type=float,
        default=defaults.final_one_object_share,
        help="share of one-object scenes after the curriculum (the domain's is 0.25)",
    )
    parser.add_argument("--init-from", default="", help="checkpoint directory whose weights start the run")
    parser.add_argument("--tiny", action="store_true", help="a minute-sized model, for tests and smoke runs")
    parser.add_argument("--save-every", type=int, default=250)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--export", type=Path, help="copy the finished model files here")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar (logs every 50 steps)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    config = replace(
        defaults,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        curriculum_fraction=args.curriculum_fraction,
        seed=args.seed,
        rope_theta=args.rope_theta,
        mrope_section=tuple(int(v) for v in args.mrope_section.split(",")),
        position_aux_weight=args.position_aux_weight,
        position_aux_layer=args.position_aux_layer,
        identity_aux_weight=args.identity_aux_weight,
        attention_aux_weight=args.attention_aux_weight,
        attention_aux_layer=args.attention_aux_layer,
        attention_aux_heads=tuple(int(v) for v in args.attention_aux_heads.split(",")),
        hard_distractor_prob=args.hard_distractor_prob,
        final_one_object_share=args.final_one_object_share,
        init_from=args.init_from,
    )
    if args.tiny:
        shape = TinyShape(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)
        config = replace(config, shape=asdict(shape), mrope_section=(2, 1, 1))
    started = time.perf_counter()
    model_dir = train(args.out, config, pick_device(args.device), args.save_every, progress_bar=not args.no_progress)
    logging.info("trained to step %d in %.0f s this session", config.steps, time.perf_counter() - started)
    if args.export:
        args.export.mkdir(parents=True, exist_ok=True)
        for name in EXPORTED:
            if (model_dir / name).exists():
                shutil.copy2(model_dir / name, args.export / name)
        logging.info("exported %s to %s", model_dir, args.export)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
