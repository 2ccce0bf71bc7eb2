"""The bundled demo model, loaded with MODEL_PATH=demo through the engine as the server loads it."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from app.engine.base import GroundingRequest
from app.engine.transformers_engine import TransformersEngine
from app.settings import DEMO_MODEL_DIR, DEMO_MODEL_NAME, load_settings
from tools.demo_model.evaluation import REQUIRED_HIT_RATE, check_accuracy, engine_grounder, fresh_cases, http_grounder

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


@pytest.mark.xfail(
    strict=True,
    reason="issues 7 and 23 are blocked: the bundled checkpoint is below the bar (see app/demo_model/README.md); "
    "strict, so a checkpoint that passes turns this into a failure that asks for the marker's removal",
)
def test_demo_model_grounds_fresh_scenes(demo_engine):
    """Issue 7's bar on 20 scenes it never saw: at least 80 % get IoU >= 0.5."""
    report = check_accuracy(engine_grounder(demo_engine), n=20)
    assert report.hit_rate >= REQUIRED_HIT_RATE, report.summary()


def test_demo_model_answers_in_the_qwen2_5_vl_dialect(demo_engine):
    """Whatever its accuracy, the demo model answers JSON bbox_2d that the core parses and maps."""
    cases = fresh_cases(8, "test")
    results = demo_engine.ground([GroundingRequest(case.image, (case.phrase,)) for case in cases])
    assert all(r.text.startswith('[{"bbox_2d": [') for r in results), [r.text for r in results]
    assert sum(bool(r.boxes) for r in results) >= 6, [r.text for r in results]
    for case, result in zip(cases, results, strict=True):
        assert result.input_size[0] * result.input_size[1] <= 28 * 28 * 36
        w, h = case.image.size
        assert all(0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h for x1, y1, x2, y2 in result.boxes)


@pytest.fixture(scope="module")
def served_report(demo_server):
    """Issue 7's end-to-end check: 20 fresh scenes over the real server's /api/ground."""
    return check_accuracy(http_grounder(demo_server.url), n=20)


@pytest.mark.slow  # starts the real server (demo_server)
def test_the_server_on_the_demo_model_answers_fresh_scenes_over_http(demo_server, served_report):
    health = httpx.get(f"{demo_server.url}/health", timeout=10).json()
    assert health["model"] == DEMO_MODEL_NAME and "demo model" in health["model"]
    assert served_report.n == 20
    assert served_report.valid_rate >= 0.25, served_report.summary()  # labelled boxes came back through HTTP


@pytest.mark.slow  # starts the real server (demo_server)
@pytest.mark.xfail(
    strict=True,
    reason="issues 7 and 23 are blocked: the bundled checkpoint is below the bar (see app/demo_model/README.md)",
)
def test_the_server_on_the_demo_model_grounds_fresh_scenes(served_report):
    """Issue 7's bar through the whole stack: at least 80 % of 20 fresh scenes get IoU >= 0.5."""
    assert served_report.hit_rate >= REQUIRED_HIT_RATE, served_report.summary()
