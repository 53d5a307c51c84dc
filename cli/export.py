"""`fracscan export`: build a Triton model repository from an ensemble spec."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fracscan.cli.console import fail, note
from fracscan.spec import SpecError, builtin_spec_path, load_spec


def export(
    output: Annotated[Path, typer.Option("--output", "-o", help="Repository directory to write.")],
    spec: Annotated[str, typer.Option(help="Ensemble spec (TOML), or a built-in name: jones2020, demo.")] = "jones2020",
    target: Annotated[str, typer.Option(help="Member runtime: cpu | onnxruntime | tensorrt.")] = "cpu",
    thresholds: Annotated[
        Path | None, typer.Option(help="thresholds.json to install (default: uncalibrated 0.5).")
    ] = None,
    max_batch_size: Annotated[int, typer.Option(help="Largest batch every model accepts.")] = 8,
) -> None:
    """Build a Triton model repository from an ensemble spec.

    Each member comes from its `onnx` file or is exported from its PyTorch `checkpoint`
    (needs the export extra). Config files are generated for the chosen target.
    """
    from fracscan.export.build import build_repository  # torch only when a checkpoint must be exported
    from fracscan.export.repository import TARGETS, RepositoryOptions
    from fracscan.postprocess import Thresholds, ThresholdsError

    if target not in TARGETS:
        fail(f"--target must be one of {', '.join(TARGETS)}, got {target!r}")
    spec_path = Path(spec) if Path(spec).suffix else builtin_spec_path(spec)
    try:
        ensemble = load_spec(spec_path)
        chosen = Thresholds.load(thresholds) if thresholds else None
        written = build_repository(ensemble, output, target, chosen, RepositoryOptions(max_batch_size=max_batch_size))
    except (SpecError, ThresholdsError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    note(f"Wrote {target} repository for '{ensemble.name}' ({len(ensemble.members)} members) to {written}")
