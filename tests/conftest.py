"""Shared fixtures: tiny Qwen2.5-VL checkpoints built offline, once per test session."""

from __future__ import annotations

import pytest

# Groups of heavy tests (pyproject.toml declares them); each is slow too, so -m "not slow" stays the fast set.
HEAVY_GROUPS = ("browser", "supervisor", "nginx", "soak", "prometheus")


def pytest_collection_modifyitems(config, items) -> None:
    unmarked = [
        item.nodeid
        for item in items
        if any(item.get_closest_marker(group) for group in HEAVY_GROUPS) and not item.get_closest_marker("slow")
    ]
    if unmarked:
        raise pytest.UsageError(f"marked {'/'.join(HEAVY_GROUPS)} but not slow: " + ", ".join(unmarked))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """A random-weight tiny Qwen2.5-VL whose answers vary with the image and the phrase."""
    from app.engine.tiny_checkpoint import build_tiny_checkpoint

    return str(build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-qwen2.5-vl"), seed=0, init_std=0.5))


@pytest.fixture(scope="session")
def tiny_engine(tiny_checkpoint):
    from app.engine.transformers_engine import TransformersEngine
    from app.settings import load_settings

    settings = load_settings(model_path=tiny_checkpoint, device="cpu", max_new_tokens=24, max_pixels=28 * 28 * 64)
    return TransformersEngine.load(settings)


@pytest.fixture(scope="session")
def sample_png(tmp_path_factory) -> str:
    """A 320x240 PNG (wider than tall, so a swapped width and height would show)."""
    from PIL import Image, ImageDraw

    path = tmp_path_factory.mktemp("images") / "sample.png"
    image = Image.new("RGB", (320, 240), (235, 235, 225))
    draw = ImageDraw.Draw(image)
    draw.rectangle((40, 60, 140, 180), fill=(200, 30, 30))
    draw.ellipse((190, 50, 290, 150), fill=(30, 90, 200))
    image.save(path)
    return str(path)


@pytest.fixture(scope="session")
def server(tiny_checkpoint, tmp_path_factory):
    """The real server (``python -m app serve``) with the tiny checkpoint, shared by the whole session."""
    from live_server import running_server

    with running_server(tiny_checkpoint, tmp_path_factory.mktemp("server")) as live:
        yield live


@pytest.fixture(scope="session")
def demo_server(tmp_path_factory):
    """The real server on the bundled demo model (``MODEL_PATH=demo``), as a newcomer starts it."""
    from live_server import running_server

    with running_server("demo", tmp_path_factory.mktemp("demo-server"), MAX_NEW_TOKENS="128") as live:
        yield live


@pytest.fixture(scope="session")
def broken_server(tmp_path_factory):
    """The real server pointed at a MODEL_PATH that does not exist, told to stay up and say why."""
    from live_server import running_server

    log_dir = tmp_path_factory.mktemp("broken-server")
    with running_server(str(log_dir / "no-such-model"), log_dir, EXIT_ON_LOAD_FAILURE="false", wanted=503) as live:
        yield live
