"""Shared fixtures: one real embedded Triton server for the whole test session."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fracscan.server import DEMO_REPOSITORY, EmbeddedServer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
# The committed demo repository; FRACSCAN_TEST_REPOSITORY points the tests at another one.
REPOSITORY = Path(os.environ.get("FRACSCAN_TEST_REPOSITORY") or DEMO_REPOSITORY)


@pytest.fixture(scope="session")
def repository() -> Path:
    return REPOSITORY


@pytest.fixture(scope="session")
def server(tmp_path_factory, repository):
    log = tmp_path_factory.mktemp("triton") / "server.log"
    with EmbeddedServer(repository, log_path=log) as srv:
        yield srv


@pytest.fixture(scope="session")
def reference(repository):
    from fracscan.pipeline import ReferenceRunner

    return ReferenceRunner(repository)


def synthetic_png(seed: int = 0, shape=(420, 300)) -> bytes:
    """A small radiograph-like PNG: a bright 'bone' in soft tissue on a dark background."""
    rng = np.random.default_rng(seed)
    h, w = shape
    img = rng.normal(200, 60, shape).clip(0)
    y0, x0 = rng.integers(10, 60, 2)
    img[y0 : h - y0, x0 : w - x0] += 15000
    cx = rng.integers(w // 3, 2 * w // 3)
    img[y0 : h - y0, cx - 25 : cx + 25] += 25000
    if seed % 2:
        img[h // 2 - 2 : h // 2 + 2, cx - 25 : cx + 25] -= 20000  # a lucent line
    buf = io.BytesIO()
    Image.fromarray(img.clip(0, 65535).astype(np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


def example_files() -> list[Path]:
    return sorted(p for p in EXAMPLES.iterdir() if p.is_file() and p.suffix not in (".csv", ".md", ".txt")) if EXAMPLES.is_dir() else []
