"""Shared by the app.repository.config tests (tests/unit/test_config_*.py): writing a model's
config.toml."""

from __future__ import annotations

from pathlib import Path

from app.repository.config import CONFIG_FILE


def write_config(model_dir: Path, text: str) -> Path:
    path = model_dir / CONFIG_FILE
    path.write_text(text, encoding="utf-8")
    return path
