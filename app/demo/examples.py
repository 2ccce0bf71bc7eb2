"""The UI's demo scenes: a few generated scenes, each with a phrase naming one of its shapes.

They come from their own seeded stream ('examples'), never used for training or evaluation, so
the first click shows the demo model on a scene it has not seen.
"""

from __future__ import annotations

from pathlib import Path

from app.demo.scenes import make_scene, pick_target, scene_rng

# One phrase style per example, so the examples show English and Chinese.
EXAMPLE_STYLES = ("en_the", "zh_de", "en", "zh")


def write_demo_examples(directory: Path, count: int = 4) -> list[list[str]]:
    """Write ``count`` scenes as PNG into ``directory``; ``[[image path, phrase], ...]`` for gr.Examples."""
    directory.mkdir(parents=True, exist_ok=True)
    examples = []
    for index in range(count):
        rng = scene_rng("examples", index)
        scene = make_scene(rng)
        target = pick_target(rng, scene, EXAMPLE_STYLES[index % len(EXAMPLE_STYLES)])
        path = directory / f"demo-scene-{index}.png"
        scene.image.save(path)
        examples.append([str(path), target.phrase])
    return examples
