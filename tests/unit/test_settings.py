"""Settings come from defaults, then BATCHSERVE_* environment variables, then CLI flags."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.cli import build_parser, settings_from_args
from app.settings import Settings


def test_defaults_serve_the_local_repository_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MODEL_REPOSITORY", "HOST", "PORT"):
        monkeypatch.delenv(f"BATCHSERVE_{name}", raising=False)
    settings = Settings()
    assert (settings.model_repository, settings.host, settings.port) == (
        Path("models"),
        "127.0.0.1",
        8000,
    )


def test_environment_sets_what_the_flags_leave_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHSERVE_PORT", "9100")
    monkeypatch.setenv("BATCHSERVE_MODEL_REPOSITORY", "/srv/models")
    monkeypatch.setenv("BATCHSERVE_HOST", "0.0.0.0")
    args = build_parser().parse_args(["serve", "--host", "127.0.0.2"])
    settings = settings_from_args(args)
    assert settings.port == 9100
    assert settings.model_repository == Path("/srv/models")
    assert settings.host == "127.0.0.2"  # the flag wins over the environment


def test_a_bad_environment_value_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHSERVE_PORT", "99999")
    with pytest.raises(ValidationError, match="port"):
        Settings()
