"""Errors of `batchserve profile`, each written for the user who has to act on it."""

from __future__ import annotations


class ProfileError(Exception):
    """The command cannot do what was asked; the message says why and what to change."""
