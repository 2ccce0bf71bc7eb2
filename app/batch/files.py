"""Which files of a folder are images (by extension), in a stable order."""

from __future__ import annotations

from pathlib import Path

from app.service.uploads import IMAGE_EXTENSIONS


def find_images(root: str | Path, recursive: bool = False) -> list[Path]:
    """Files under ``root`` with an image extension (any case), sorted by their path relative to ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    candidates = root.rglob("*") if recursive else root.iterdir()
    found = [p for p in candidates if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())
