"""Settings: one typed object, documented everywhere, bad values refused at start with a clear message."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from app.errors import SettingsError
from app.settings import DEFAULT_CONFIG_FILE, Settings, load_settings, parse_max_memory

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_has_a_description():
    for name, field in Settings.model_fields.items():
        assert field.description, f"{name} has no description"


def test_every_setting_is_in_the_config_file_with_a_comment():
    text = DEFAULT_CONFIG_FILE.read_text()
    keys = tomllib.loads(text)
    for name in Settings.model_fields:
        assert name in keys, f"{name} missing from config/chord.toml"
        before = text[: re.search(rf"^{name}\s*=", text, re.MULTILINE).start()].rstrip().splitlines()
        assert before and before[-1].startswith("#"), f"{name} has no comment above it in config/chord.toml"


def test_every_setting_is_in_the_settings_table():
    settings_doc = (ROOT / "docs" / "settings.md").read_text()
    for name in Settings.model_fields:
        assert f"`{name.upper()}`" in settings_doc, f"{name.upper()} is not documented in docs/settings.md"


def test_config_file_defaults_match_the_code():
    file_values = tomllib.loads(DEFAULT_CONFIG_FILE.read_text())
    for name, field in Settings.model_fields.items():
        assert file_values[name] == field.default, name


def test_environment_overrides_the_config_file(monkeypatch, tmp_path):
    config = tmp_path / "chord.toml"
    config.write_text('port = 9000\nmodel_path = "/from/file"\n')
    monkeypatch.setenv("CHORD_CONFIG", str(config))
    monkeypatch.setenv("PORT", "9100")
    settings = load_settings()
    assert settings.port == 9100 and settings.model_path == "/from/file"


@pytest.mark.parametrize(
    ("env", "value", "expected"),
    [
        ("DEVICE", "gpu", "DEVICE='gpu': Input should be 'auto', 'cuda' or 'cpu'"),
        ("DTYPE", "fp8", "DTYPE='fp8': Input should be 'auto', 'bfloat16', 'float16' or 'float32'"),
        ("ATTN_IMPL", "flash", "ATTN_IMPL='flash'"),
        ("MAX_NEW_TOKENS", "0", "MAX_NEW_TOKENS='0': Input should be greater than or equal to 1"),
        ("MAX_NEW_TOKENS", "5000", "MAX_NEW_TOKENS='5000': Input should be less than or equal to 2048"),
        ("PORT", "http", "PORT='http'"),
        ("MAX_MEMORY", "lots", "MAX_MEMORY='lots'"),
        ("MIN_PIXELS", "99999999", "min_pixels (99999999) must not exceed max_pixels"),
        ("ENGINE", "vllm", "ENGINE='vllm': Input should be 'transformers' or 'openai'"),
        ("ENGINE_URL", "gpu-node:8000", "ENGINE_URL='gpu-node:8000': Value error, engine_url must be an http://"),
    ],
)
def test_bad_values_fail_with_the_key_and_the_allowed_values(monkeypatch, env, value, expected):
    monkeypatch.setenv(env, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert expected in info.value.message


def test_the_engine_api_key_is_masked_in_the_start_up_log():
    assert "engine_api_key='***'" in load_settings(engine_api_key="s3cret").describe()
    assert "s3cret" not in load_settings(engine_api_key="s3cret").describe()


def test_unknown_key_in_the_config_file_is_refused(monkeypatch, tmp_path):
    config = tmp_path / "chord.toml"
    config.write_text("prot = 80\n")
    monkeypatch.setenv("CHORD_CONFIG", str(config))
    with pytest.raises(SettingsError, match="PROT"):
        load_settings()


@pytest.mark.parametrize(
    ("text", "gpus", "expected"),
    [
        ("", 2, {}),  # no budget
        ("20GiB", 2, {0: "20GiB", 1: "20GiB"}),  # each GPU
        ("0=10GiB,cpu=64GiB", 1, {0: "10GiB", "cpu": "64GiB"}),  # explicit devices
    ],
)
def test_parse_max_memory(text, gpus, expected):
    assert parse_max_memory(text, gpus) == expected


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("http://gpu-node:8000", "http://gpu-node:8000"),  # the documented form
        ("http://gpu-node:8000/", "http://gpu-node:8000"),  # a trailing slash
        ("http://gpu-node:8000/v1", "http://gpu-node:8000"),  # the OpenAI SDK's and vLLM's form
        ("https://gpu-node/v1/", "https://gpu-node"),  # both
        ("http://gpu-node:8000/proxy/v1", "http://gpu-node:8000/proxy"),  # behind a path prefix
    ],
)
def test_engine_url_works_with_or_without_v1(given, used):
    assert load_settings(engine_url=given).engine_url == used
