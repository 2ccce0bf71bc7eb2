"""QUANTIZATION=int8|int4: bitsandbytes weights on the CPU as on CUDA, the vision tower kept at full
precision, the mode named by /health and the page header, and a clear start failure where it cannot run."""

from __future__ import annotations

import importlib.util
import io
import time

import bitsandbytes
import pytest
from starlette.testclient import TestClient

from app.engine.quantization import KEEP_FULL_PRECISION, quantization_config
from app.engine.transformers_engine import TransformersEngine
from app.errors import ModelLoadError, SettingsError
from app.grounding.geometry import iou
from app.server.main import create_app
from app.settings import load_settings
from app.ui.page import header_text
from tools.demo_model.evaluation import engine_grounder, fresh_cases


def test_none_loads_the_checkpoint_as_it_is():
    assert quantization_config("none", "cpu", None) is None


@pytest.mark.parametrize(("mode", "bits"), [("int8", "load_in_8bit"), ("int4", "load_in_4bit")])
def test_int8_and_int4_keep_the_vision_tower_and_head_at_full_precision(mode, bits):
    config = quantization_config(mode, "cpu", None)
    assert getattr(config, bits) is True
    assert config.llm_int8_skip_modules == KEEP_FULL_PRECISION == ["model.visual", "lm_head"]


def test_a_device_bitsandbytes_cannot_run_on_fails_at_start_saying_so(monkeypatch):
    monkeypatch.setattr(bitsandbytes, "supported_torch_devices", {"cuda"})
    with pytest.raises(
        ModelLoadError, match=r"QUANTIZATION=int4: bitsandbytes .* cannot run on cpu .*QUANTIZATION=none"
    ):
        quantization_config("int4", "cpu", None)


def test_without_bitsandbytes_a_quantized_mode_fails_at_start_saying_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a)
    )
    with pytest.raises(ModelLoadError, match="QUANTIZATION=int8 needs the bitsandbytes package"):
        quantization_config("int8", "cpu", None)


def test_an_unknown_mode_is_refused_with_the_allowed_ones():
    with pytest.raises(SettingsError, match="QUANTIZATION='fp4': Input should be 'none', 'int8' or 'int4'"):
        load_settings(quantization="fp4")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_the_demo_model_loads_quantized_answers_and_health_names_the_mode(mode):
    settings = load_settings(model_path="demo", device="cpu", quantization=mode, model_process=False)
    with TestClient(create_app(settings)) as client:
        for _ in range(600):
            health = client.get("/health").json()
            if health["status"] != "loading":
                break
            time.sleep(0.1)
        assert health["status"] == "ok" and health["quantization"] == mode
        case = fresh_cases(1, "test")[0]
        png = io.BytesIO()
        case.image.save(png, "PNG")
        response = client.post(
            "/api/ground", files={"image": ("scene.png", png.getvalue())}, data={"prompt": case.phrase}
        )
        assert response.status_code == 200, response.text
        assert response.json()["boxes"], response.json()
        assert f"{mode} weights" in header_text(client.app.state.service)  # the page header


@pytest.mark.slow
def test_int8_keeps_the_vision_tower_and_finds_the_boxes_full_precision_finds():
    cases = fresh_cases(40, "test")
    tops = {}
    for mode in ("none", "int8"):
        engine = TransformersEngine.load(load_settings(model_path="demo", device="cpu", quantization=mode))
        try:
            if mode == "int8":
                kinds = {name: type(module).__name__ for name, module in engine.model.named_modules()}
                assert not any(kind == "Linear8bitLt" for name, kind in kinds.items() if ".visual." in f".{name}.")
                assert sum(kind == "Linear8bitLt" for kind in kinds.values()) >= 7 * 2  # every layer's projections
            found = engine_grounder(engine)(cases)
        finally:
            engine.close()
        tops[mode] = [boxes[0][0] if boxes else None for boxes in found]
    agree = [
        a is not None and b is not None and iou(a, b) >= 0.9 for a, b in zip(tops["none"], tops["int8"], strict=True)
    ]
    assert sum(agree) / len(agree) >= 0.9, tops
