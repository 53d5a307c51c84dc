"""`fracscan export`: build a Triton model repository from an ensemble spec."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

from fracscan.cli.console import fail, note, show_provenance, warn
from fracscan.spec import EnsembleSpec, SpecError, builtin_spec_names, builtin_spec_path, load_spec


def export(
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Repository directory to write (or update: unchanged members are reused)."),
    ] = None,
    spec: Annotated[
        str, typer.Option(help=f"Ensemble spec (TOML), or a built-in name: {', '.join(builtin_spec_names())}.")
    ] = "jones2020",
    target: Annotated[str, typer.Option(help="Member runtime: cpu | onnxruntime | tensorrt.")] = "cpu",
    thresholds: Annotated[
        Path | None,
        typer.Option(
            help="thresholds.json to install (default: the calibrated ones already in --output while the members "
            "are unchanged, else uncalibrated 0.5)."
        ),
    ] = None,
    max_batch_size: Annotated[int, typer.Option(help="Largest batch every model accepts.")] = 8,
    cpu_cores: Annotated[
        int | None,
        typer.Option(min=1, help="CPU cores of the serving machine: sizes `preprocess` (default: 2 instances)."),
    ] = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Load every member, report parameter counts and every missing/unexpected key; write nothing.",
        ),
    ] = False,
    random_init: Annotated[
        bool,
        typer.Option(
            "--random-init",
            help="Seeded random weights for every member, for sizing and load tests (marked RANDOM WEIGHTS).",
        ),
    ] = False,
) -> None:
    """Build a Triton model repository from an ensemble spec (fields: docs/spec.md).

    Each member comes from its `onnx` file, is exported from its PyTorch `checkpoint` (a
    FractureMember or DRN reference state_dict; needs the export extra), or, for the demo spec,
    from the committed demo repository. Members are exported one at a time and reported with
    their parity figure; an interrupted export resumes: unchanged members are reused. Config
    files are generated for the chosen target. Calibrated thresholds already in the output
    folder are kept only while the members are unchanged.
    """
    from fracscan import provenance
    from fracscan.export.build import build_repository  # torch only when a checkpoint must be exported
    from fracscan.export.model_config import RepositoryOptions
    from fracscan.export.repository import TARGETS, preprocess_instances_for
    from fracscan.thresholds import Thresholds, ThresholdsError

    if target not in TARGETS:
        fail(f"--target must be one of {', '.join(TARGETS)}, got {target!r}")
    if output is None and not check:
        fail("missing option '--output' / '-o': the repository directory to write (or pass --check)")
    try:
        ensemble = load_spec(Path(spec) if Path(spec).suffix else builtin_spec_path(spec))
        if check:
            _check(ensemble, random_init)
        chosen = Thresholds.load(thresholds) if thresholds else None
        options = RepositoryOptions(
            max_batch_size=max_batch_size, preprocess_instances=preprocess_instances_for(cpu_cores, target)
        )
        assert output is not None
        note(f"Exporting '{ensemble.name}' ({len(ensemble.members)} members) for {target} to {output}")
        written = build_repository(
            ensemble, output, target, chosen, options, random_init=random_init, report=note, warn=warn
        )
    except typer.Exit:
        raise  # --check's verdict (click's Exit is a RuntimeError)
    except ImportError as exc:
        from fracscan.export.build import INSTALL_EXPORT

        fail(f"{exc}: exporting checkpoints needs torch: {INSTALL_EXPORT}")
    except KeyboardInterrupt:
        fail("interrupted: temporary files removed; run the same command again to continue", 130)
    except (SpecError, ThresholdsError, FileNotFoundError, ValueError, RuntimeError, AssertionError) as exc:
        fail(str(exc))  # ParityError is an AssertionError, ExportError a RuntimeError
    note(f"Wrote {target} repository for '{ensemble.name}' ({len(ensemble.members)} members) to {written}")
    show_provenance(provenance.read(written))


def _check(ensemble: EnsembleSpec, random_init: bool) -> NoReturn:
    """Report every member (exit 0 when all load cleanly, 2 otherwise); nothing is written."""
    from fracscan.export.inspect_members import inspect_members

    checks = inspect_members(ensemble, random_init)
    for check in checks:
        summary, *details = check.lines()
        (note if check.ok else warn)(summary)
        for line in details:
            note(line)
    bad = [ch.name for ch in checks if not ch.ok]
    if bad:
        fail(f"{len(bad)} of {len(checks)} members would not export: {', '.join(bad)}")
    note(f"all {len(checks)} members of '{ensemble.name}' load; nothing was written")
    raise typer.Exit(0)
