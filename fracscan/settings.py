"""fracscan's settings from the environment: read once, at first use, and checked where they are used.

Importing fracscan reads nothing and changes no library's global state. `current()` reads the
environment the first time it is called (a server's python stubs: in the environment the server gave
them); a bad value is kept as written and raises SettingError, naming the variable, only where that
setting is used, so one bad setting never stops code that does not need it. `refresh()` reads the
environment again (for a process that changed it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

MAX_PIXELS_ENV = "FRACSCAN_MAX_PIXELS"
ORT_THREADS_ENV = "FRACSCAN_ORT_THREADS"
# The pixel limit. The largest radiographs in clinical use are stitched full-leg / whole-spine images,
# about 43 x 130 cm at 0.1-0.15 mm a pixel (~ 4,300 x 13,000 = 56 megapixels); single flat-panel
# exposures are 9-18 MP and digital mammograms ~ 30 MP. 100 MP admits all of them with room to
# spare, and bounds one decoded image to 400 MB of float32.
DEFAULT_MAX_PIXELS = 100_000_000
DEFAULT_ORT_THREADS = 1


class SettingError(ValueError):
    """An environment variable holds a value fracscan cannot use; the message names the variable."""


def _positive_int(name: str, raw: str, default: int, what: str) -> int:
    if not raw:
        return default
    try:
        value = int(float(raw))  # "1e8" is a fine way to write 100 million
    except (ValueError, OverflowError):
        value = 0
    if value <= 0:
        raise SettingError(f"{name} must be a positive number of {what}, got {raw!r}")
    return value


@dataclass(frozen=True)
class Settings:
    """The environment as read once: raw strings, turned into values (and checked) when asked for."""

    max_pixels_raw: str = ""
    ort_threads_raw: str = ""
    cache_home: Path = Path.home() / ".cache"  # XDG_CACHE_HOME

    @property
    def max_pixels(self) -> int:
        """The most pixels a decoded image may have (FRACSCAN_MAX_PIXELS, else 100 MP)."""
        return _positive_int(MAX_PIXELS_ENV, self.max_pixels_raw, DEFAULT_MAX_PIXELS, "pixels")

    @property
    def ort_threads(self) -> int:
        """ONNX Runtime intra-op threads per session (FRACSCAN_ORT_THREADS, else 1)."""
        return _positive_int(ORT_THREADS_ENV, self.ort_threads_raw, DEFAULT_ORT_THREADS, "threads")

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls(
            max_pixels_raw=env.get(MAX_PIXELS_ENV, "").strip(),
            ort_threads_raw=env.get(ORT_THREADS_ENV, "").strip(),
            cache_home=Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache"),
        )


@cache
def current() -> Settings:
    """This process's settings, read from the environment at the first call."""
    return Settings.from_environment()


def refresh() -> Settings:
    """Read the environment again; the settings from now on."""
    current.cache_clear()
    return current()
