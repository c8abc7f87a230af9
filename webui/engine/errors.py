"""Errors the engine raises with a message meant for the user."""
from __future__ import annotations

from pathlib import Path


class EngineError(Exception):
    """Base class: the message says what is wrong in words a user can act on."""


class CheckpointError(EngineError):
    """A model file could not be read or understood. Names the file and the reason."""

    def __init__(self, path: Path | str, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path.name}: {reason}")


class InvalidParameterError(EngineError, ValueError):
    """A generation parameter has a value the engine cannot use. Names the field."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class InterruptedError_(EngineError):
    """Raised inside the sampling loop when the job was interrupted."""
