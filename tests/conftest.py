"""Shared fixtures: one real embedded Triton server for the whole test session."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import pytest

from fracscan.demo.synthetic import make_case, png_bytes
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


@cache
def synthetic_png(seed: int = 0, shape=(420, 300)) -> bytes:
    """A small 16-bit PNG radiograph from the demo generator; odd seeds are fractured."""
    return png_bytes(make_case(seed, fracture=bool(seed % 2), shape=tuple(shape)))


def example_files() -> list[Path]:
    return (
        sorted(p for p in EXAMPLES.iterdir() if p.is_file() and p.suffix not in (".csv", ".md", ".txt"))
        if EXAMPLES.is_dir()
        else []
    )
