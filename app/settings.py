"""Chord's one typed settings object.

Read from ``config/chord.toml`` (or the file named by ``CHORD_CONFIG``) and overridden by
environment variables of the same name in upper case (``MODEL_PATH``, ``PORT``, ...).
Every field has a default and a one-line description; a test fails when one is undocumented.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from app.errors import SettingsError

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_FILE = PROJECT_ROOT / "config" / "chord.toml"
# MODEL_PATH=demo selects the tiny model bundled with Chord, trained on synthetic shape scenes.
DEMO_MODEL_ALIAS = "demo"
DEMO_MODEL_DIR = PROJECT_ROOT / "app" / "demo_model"
DEMO_MODEL_NAME = "chord-demo (demo model)"
# Qwen2.5-VL: one visual token per 28x28 pixels; grounding is reported to degrade at the
# processor's 16k-token maximum, so the default keeps images near 1280 visual tokens.
PIXELS_PER_VISUAL_TOKEN = 28 * 28
SECRET_FIELDS = ("api_key", "ui_auth", "engine_api_key")
_MEMORY_BUDGET = re.compile(r"^\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$", re.IGNORECASE)


class Settings(BaseSettings):
    """Every knob of Chord. Environment variables override ``config/chord.toml``."""

    model_config = SettingsConfigDict(extra="forbid", case_sensitive=False, validate_default=True)

    model_path: str = Field(
        "models/Qwen2.5-VL-7B-Instruct",
        description="Checkpoint directory (relative paths are from the project root), a hub id, or 'demo'.",
    )
    device: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="Where the model runs; auto picks CUDA when present."
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Weights dtype; auto is bfloat16 on GPUs that support it, else float32."
    )
    attn_impl: Literal["auto", "flash_attention_2", "sdpa", "eager"] = Field(
        "auto", description="Attention kernel; auto is flash_attention_2 when flash_attn imports on CUDA, else sdpa."
    )
    quantization: Literal["none", "int8", "int4"] = Field(
        "none",
        description="Weights in 8 or 4 bits (bitsandbytes; the vision tower and output head stay at DTYPE); "
        "none = DTYPE throughout.",
    )
    compile: bool = Field(
        False,
        description="torch.compile the language model (dynamic shapes); minutes of compiling at start and per new "
        "batch shape, see docs/benchmarks.md.",
    )
    model_process: bool = Field(
        True,
        description="Run the model in its own process (its own interpreter lock) so HTTP work never stalls it.",
    )
    preload_model_code: bool = Field(
        True,
        description="Import torch, transformers and the model's code once, in the keeper the serving process is "
        "forked from: a replaced serving process and its model process start without imports.",
    )
    torch_threads: int = Field(
        0,
        ge=0,
        le=1024,
        description="CPU threads for the model's math; 0 = auto: one less than the usable cores (at least 1).",
    )
    max_new_tokens: int = Field(512, ge=1, le=2048, description="Most tokens generated for one answer.")
    min_pixels: int = Field(
        4 * PIXELS_PER_VISUAL_TOKEN,
        ge=PIXELS_PER_VISUAL_TOKEN,
        description="Smallest image area (pixels) fed to the model.",
    )
    max_pixels: int = Field(
        1280 * PIXELS_PER_VISUAL_TOKEN,
        ge=PIXELS_PER_VISUAL_TOKEN,
        description="Largest image area (pixels) fed to the model.",
    )
    max_memory: str = Field(
        "", description="Per-device memory budget for offload, e.g. '20GiB' or '0=20GiB,cpu=64GiB'; empty = no limit."
    )
    host: str = Field("127.0.0.1", description="Address the server binds.")
    port: int = Field(7860, ge=1, le=65535, description="Port the server listens on.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Logging level.")
    max_batch_size: int = Field(16, ge=1, le=256, description="Most requests per batched generation; 1 = no batching.")
    max_batch_wait_ms: float = Field(10.0, ge=0, le=10_000, description="Longest wait for a batch to fill, in ms.")
    continuous_batching: bool = Field(
        True,
        description="Requests join the running batch between decoding steps (when the model allows it); "
        "false: each batch runs one generate to its end.",
    )
    image_cache_mb: int = Field(
        256,
        ge=0,
        le=1_000_000,
        description="MB for an image's work kept for repeat questions (processor output in the server, the prompt's "
        "key/values through the image where the model runs, each at most this); 0 = off.",
    )
    max_queue: int = Field(64, ge=1, le=100_000, description="Requests waiting beyond this are refused with 503.")
    max_upload_bytes: int = Field(20_000_000, ge=1, description="Largest accepted upload, in bytes; larger gets 413.")
    max_image_pixels: int = Field(
        100_000_000, ge=1, le=170_000_000, description="Largest image (w*h) decoded; larger gets 413 before decoding."
    )
    max_request_pixels: int = Field(
        400_000_000,
        ge=1,
        description="Most decoded pixels one request may bring (batch items and video frames summed); more gets 413.",
    )
    decode_budget_pixels: int = Field(
        200_000_000,
        ge=1_000_000,
        description="Decoded pixels in flight across all requests (about 4 bytes each); past it requests wait.",
    )
    max_request_bytes: int = Field(
        100_000_000,
        ge=1,
        description="Largest request body (batch, video, Gradio upload), refused while it arrives; larger gets 413.",
    )
    max_image_side: int = Field(
        4096, ge=64, description="Longer sides are downscaled for the model; boxes map back to the original."
    )
    max_prompt_chars: int = Field(500, ge=1, le=100_000, description="Longest prompt, in characters; longer gets 422.")
    large_image_mode: Literal["off", "refine", "tiles"] = Field(
        "refine",
        description="Images past TILE_SIZE^2 pixels: 'off' one pass; 'refine' zoom into each candidate to confirm it; "
        "'tiles' also search tiles (per request: tiling=true).",
    )
    tiling: bool = Field(False, description="Old switch kept as an alias: true means LARGE_IMAGE_MODE=tiles.")
    tile_size: int = Field(1024, ge=256, description="Tile side, in pixels of the original image, when tiling.")
    review_threshold: float = Field(
        0.7, ge=0.0, le=1.0, description="A result whose best box scores under this (or has no box) needs review."
    )
    api_key: str = Field("", description="When set, REST and Gradio API calls need it (Bearer or X-API-Key).")
    ui_auth: str = Field("", description="UI logins 'user:password[,user2:password2]'; empty = no UI login.")
    exit_on_load_failure: bool = Field(
        True, description="Exit (status 3) when the model cannot load, so Supervisor marks it FATAL."
    )
    request_timeout_s: float = Field(120.0, gt=0, le=3600, description="A request not answered by then gets 504.")
    stall_timeout_s: float = Field(
        15.0,
        gt=0,
        le=3600,
        description="Work waiting and no model progress (a step, a prefill) for this long: /health 503 stalled.",
    )
    # The engine: in-process transformers, or an OpenAI-compatible server (vLLM, SGLang, transformers serve).
    engine: Literal["transformers", "openai"] = Field(
        "transformers", description="transformers = the model in this process; openai = an OpenAI-compatible server."
    )
    engine_url: str = Field(
        "http://127.0.0.1:8000",
        description="Base URL of the OpenAI-compatible server (ENGINE=openai), with or without /v1.",
    )
    engine_model: str = Field(
        "Qwen/Qwen2.5-VL-7B-Instruct", description="Model name the engine serves (the 'model' field of each request)."
    )
    engine_api_key: str = Field("", description="Bearer token for the engine; empty = no Authorization header.")
    engine_family: Literal["auto", "qwen2-vl", "qwen2.5-vl", "qwen3-vl"] = Field(
        "auto", description="Coordinate system of the engine's model; auto = MODEL_PATH's config.json, else the name."
    )
    engine_connect_timeout_s: float = Field(
        5.0, gt=0, le=600, description="Seconds to connect to the engine before 502 engine_unavailable."
    )
    engine_timeout_s: float = Field(
        110.0, gt=0, le=3600, description="Seconds the engine may take for one answer before 504 engine_timeout."
    )
    engine_concurrency: int = Field(16, ge=1, le=4096, description="Most requests in flight to the engine at once.")
    engine_pool_size: int = Field(32, ge=1, le=4096, description="Most open HTTP connections to the engine.")

    @field_validator("max_memory")
    @classmethod
    def _check_max_memory(cls, value: str) -> str:
        parse_max_memory(value, cuda_devices=1)
        return value

    @field_validator("engine_url")
    @classmethod
    def _check_engine_url(cls, value: str) -> str:
        """The server's base URL: ``http://host:8000`` and ``http://host:8000/v1`` (the SDKs' form) mean the same."""
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"engine_url must be an http:// or https:// URL (http://127.0.0.1:8000), got {value!r}")
        return re.sub(r"/v1/*$", "", value.rstrip("/"))

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value):
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_pixel_range(self) -> Settings:
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels ({self.min_pixels}) must not exceed max_pixels ({self.max_pixels})")
        if self.decode_budget_pixels < self.max_image_pixels:
            raise ValueError(
                f"decode_budget_pixels ({self.decode_budget_pixels}) must be at least max_image_pixels "
                f"({self.max_image_pixels}): an image the server accepts must be able to decode"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = Path(os.environ.get("CHORD_CONFIG", DEFAULT_CONFIG_FILE))
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=config_file)

    def resolved_model_path(self) -> str:
        """``model_path`` with a relative local path made absolute from the project root; 'demo': the bundled model."""
        if self.model_path == DEMO_MODEL_ALIAS:
            return str(DEMO_MODEL_DIR)
        path = Path(self.model_path).expanduser()
        if not path.is_absolute() and (PROJECT_ROOT / path).exists():
            return str(PROJECT_ROOT / path)
        return str(path)

    def describe(self) -> str:
        """Every setting for the start-up log line, secrets masked."""
        values = self.model_dump()
        shown = {name: ("***" if name in SECRET_FIELDS and value else value) for name, value in values.items()}
        return ", ".join(f"{name}={value!r}" for name, value in shown.items())

    # --- videos: POST /api/ground/video and the UI's Video tab (the CLI has no cap) ---
    video_max_seconds: float = Field(
        30.0, gt=0, le=3600, description="Longest video the server accepts, in seconds; longer gets 413."
    )
    video_max_frames: int = Field(
        120, ge=1, le=10_000, description="Most frames one video request may sample (seconds x fps); more gets 413."
    )

    # --- the resource log (scripts/resource_log.py, [program:chord-resources]): logs/metrics.log and its ALERTs ---
    resource_log_interval_s: float = Field(
        60.0, ge=1, le=86_400, description="Seconds between two lines of logs/metrics.log (the resource log)."
    )
    alert_memory_percent: float = Field(
        90.0, gt=0, le=100, description="Resource log ALERT when the machine's memory use passes this percent."
    )
    alert_gpu_memory_percent: float = Field(
        90.0, gt=0, le=100, description="Resource log ALERT when a GPU's memory use passes this percent."
    )
    alert_disk_percent: float = Field(
        90.0, gt=0, le=100, description="Resource log ALERT when the disk of logs/ or the model passes this percent."
    )
    alert_success_rate_percent: float = Field(
        95.0,
        ge=0,
        le=100,
        description="Resource log ALERT when fewer requests than this percent were answered without a 5xx.",
    )
    alert_latency_s: float = Field(
        5.0, gt=0, description="Resource log ALERT when the average request took longer than this, in seconds."
    )
    alert_errors: int = Field(10, ge=0, description="Resource log ALERT when more errors than this occurred.")


def load_settings(**overrides) -> Settings:
    """Settings from config file and environment; SettingsError naming the key and allowed values."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "settings"
            value = err.get("input")
            shown = "" if isinstance(value, dict) else f"={value!r}"
            problems.append(f"{key.upper()}{shown}: {err['msg']}")
        source = os.environ.get("CHORD_CONFIG", str(DEFAULT_CONFIG_FILE))
        raise SettingsError(f"invalid setting ({source} or environment): " + "; ".join(problems)) from None


def parse_max_memory(text: str, cuda_devices: int) -> dict[int | str, str]:
    """``'20GiB'`` (each GPU) or ``'0=20GiB,1=20GiB,cpu=64GiB'`` -> accelerate's ``max_memory`` dict."""
    text = text.strip()
    if not text:
        return {}
    if "=" not in text:
        _check_budget(text)
        return {i: text for i in range(cuda_devices)}
    budget: dict[int | str, str] = {}
    for part in text.split(","):
        device, _, amount = part.partition("=")
        device, amount = device.strip(), amount.strip()
        _check_budget(amount)
        if device == "cpu":
            budget["cpu"] = amount
        elif device.isdigit():
            budget[int(device)] = amount
        else:
            raise ValueError(f"max_memory device must be a GPU index or 'cpu', got {device!r}")
    return budget


def _check_budget(amount: str) -> None:
    if not _MEMORY_BUDGET.match(amount):
        raise ValueError(f"max_memory amount must look like '20GiB' or '500MB', got {amount!r}")
