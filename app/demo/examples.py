"""The UI's examples, fitting the model that is loaded.

With the demo model: the first scenes of the evaluation stream, each with the target the evaluation
asks for (the same draws as ``tools/demo_model/evaluation.py``'s ``fresh_cases``, none picked by
hand): what a click shows is what the model's published hit rate measures.

With a real model: photos that ship inside the installed ``gradio`` package (``gradio/media_assets``,
Apache-2.0 like the package), each with phrases that make sense for it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from app.demo.scenes import make_scene, pick_target, scene_rng

EVALUATION_STREAM = "eval"

# (file in gradio's media_assets/images, what to find in it)
PHOTOS = (
    ("cheetah.jpg", "the running cheetah"),
    ("lion.jpg", "鬃毛浓密的狮子；母狮"),
    ("tower.jpg", "the Eiffel Tower; the bare branches"),
)


def write_demo_examples(directory: Path, count: int = 4) -> list[list[str]]:
    """Write the evaluation stream's first ``count`` scenes as PNG into ``directory``; ``[[path, phrase], ...]``."""
    directory.mkdir(parents=True, exist_ok=True)
    examples = []
    for index in range(count):
        rng = scene_rng(EVALUATION_STREAM, index)
        scene = make_scene(rng)
        target = pick_target(rng, scene)
        path = directory / f"demo-scene-{index}.png"
        scene.image.save(path)
        examples.append([str(path), target.phrase])
    return examples


def write_photo_examples(directory: Path) -> list[list[str]]:
    """Copy the photos shipped with gradio into ``directory``; ``[[path, phrase], ...]`` (those found)."""
    from gradio import media

    directory.mkdir(parents=True, exist_ok=True)
    examples = []
    for name, phrase in PHOTOS:
        try:
            source = Path(media.get_image(name))
        except (FileNotFoundError, ValueError):
            continue
        path = directory / name
        shutil.copyfile(source, path)
        examples.append([str(path), phrase])
    return examples
