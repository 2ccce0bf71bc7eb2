"""Shared fixtures: tiny Qwen2.5-VL checkpoints built offline, once per test session."""

from __future__ import annotations

import pytest

from app.engine.tiny_checkpoint import build_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """A random-weight tiny Qwen2.5-VL whose answers vary with the image and the phrase."""
    return str(build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-qwen2.5-vl"), seed=0, init_std=0.5))


@pytest.fixture(scope="session")
def tiny_engine(tiny_checkpoint):
    from app.engine.transformers_engine import TransformersEngine
    from app.settings import load_settings

    settings = load_settings(model_path=tiny_checkpoint, device="cpu", max_new_tokens=24, max_pixels=28 * 28 * 64)
    return TransformersEngine.load(settings)
