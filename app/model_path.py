"""Where a checkpoint is, checked before anything heavy is imported. No torch here."""

from __future__ import annotations

from pathlib import Path

from app.errors import ModelLoadError


def looks_like_hub_id(path: str) -> bool:
    """``org/name`` that is not a local folder name such as ``models/...``."""
    org, slash, name = path.partition("/")
    return bool(slash) and "/" not in name and org not in ("models", ".", "..", "~") and not Path(org).exists()


def require_model_path(path: str) -> None:
    """ModelLoadError naming the path and the fix when ``path`` is neither a directory nor a hub id."""
    if not Path(path).exists() and not looks_like_hub_id(path):
        raise ModelLoadError(
            f"MODEL_PATH {path!r} does not exist. Download a model with scripts/download_model.sh, "
            "or set MODEL_PATH (config/chord.toml or the environment) to a checkpoint directory."
        )
