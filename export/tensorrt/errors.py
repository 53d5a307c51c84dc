"""The two ways an engine build stops; the CLI maps them to exit codes 1 and 2."""

from __future__ import annotations


class EngineBuildError(RuntimeError):
    """An engine could not be built, verified or installed; the message says which member and why."""


class BuilderUnavailable(RuntimeError):
    """No usable TensorRT builder / runtime / GPU here; the message says what is missing."""
