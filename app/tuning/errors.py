"""The one error tuning raises, written for the user who has to act on it."""

from __future__ import annotations


class TuningError(Exception):
    """A model cannot be measured as asked; the message says why and what to change."""
