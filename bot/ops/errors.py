"""What an ops command reports instead of a result: each maps to one exit code."""

from __future__ import annotations


class NotFound(LookupError):
    """What the command was asked about does not exist (exit code 1)."""


class BadInput(ValueError):
    """An argument an operator gave is not valid; the message says what is (exit code 2)."""
