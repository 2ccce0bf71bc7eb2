"""The bundled demo model, loaded with MODEL_PATH=demo through the engine as the server loads it."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.demo.evaluation import REQUIRED_HIT_RATE, check_accuracy, engine_grounder
from app.engine.transformers_engine import TransformersEngine
from app.settings import DEMO_MODEL_DIR, DEMO_MODEL_NAME, load_settings

MAX_CHECKPOINT_BYTES = 25 * 2**20


@pytest.fixture(scope="module")
def demo_engine():
    return TransformersEngine.load(load_settings(model_path="demo", device="cpu"))


def test_model_path_demo_resolves_to_the_bundled_model(monkeypatch):
    monkeypatch.setenv("MODEL_PATH", "demo")
    assert Path(load_settings().resolved_model_path()) == DEMO_MODEL_DIR


def test_demo_model_is_small_and_complete():
    files = {p.name: p.stat().st_size for p in DEMO_MODEL_DIR.iterdir()}
    for name in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json", "README.md"):
        assert name in files, f"app/demo_model/{name} is missing"
    assert sum(files.values()) < MAX_CHECKPOINT_BYTES


def test_engine_says_demo_model(demo_engine):
    assert demo_engine.info.model == DEMO_MODEL_NAME
    assert "demo model" in demo_engine.info.to_dict()["model"]
    assert type(demo_engine.model).__name__ == "Qwen2_5_VLForConditionalGeneration"


def test_demo_model_grounds_fresh_scenes(demo_engine):
    """Issue 7's bar on 20 scenes it never saw: at least 80 % get IoU >= 0.5."""
    report = check_accuracy(engine_grounder(demo_engine), n=20)
    assert report.hit_rate >= REQUIRED_HIT_RATE, report.summary()
    assert report.valid_rate >= 0.95, report.summary()
