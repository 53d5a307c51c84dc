"""`fracscan export`: members (ONNX files or PyTorch checkpoints) -> a Triton repository."""

from __future__ import annotations

import tempfile
from pathlib import Path

from fracscan.export.repository import RepositoryOptions, Target, write_repository
from fracscan.postprocess import Thresholds
from fracscan.spec import EnsembleSpec


def member_onnx_files(spec: EnsembleSpec, workdir: Path) -> list[Path]:
    """Each member's ONNX: its `onnx` file, or exported (with a parity check) from its checkpoint."""
    base = spec.source.parent if spec.source else Path.cwd()
    files = []
    for index, member in enumerate(spec.members):
        if member.onnx:
            path = base / member.onnx
            if not path.exists():
                raise FileNotFoundError(f"member '{member.name}': ONNX file {path} not found")
            files.append(path)
        elif member.checkpoint:
            from fracscan.export.members import load_member  # torch: the export extra
            from fracscan.export.onnx_export import check_parity, export_member

            model = load_member(member, base)
            path = workdir / f"{spec.member_model_name(index)}.onnx"
            export_member(model, member, spec.preprocess.size, path)
            check_parity(model, path, spec.preprocess.size)
            files.append(path)
        else:
            raise ValueError(f"member '{member.name}' has neither an 'onnx' file nor a 'checkpoint' in {spec.source}")
    return files


def build_repository(
    spec: EnsembleSpec,
    output: Path,
    target: Target,
    thresholds: Thresholds | None = None,
    options: RepositoryOptions = RepositoryOptions(),
) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        files = member_onnx_files(spec, Path(tmp))
        if target == "tensorrt":  # fail now, not later when the engines are built in the container
            from fracscan.export.onnx_check import check_members  # needs onnx (the export extra)

            check_members(files, spec.preprocess.size)
        return write_repository(spec, Path(output), target, files, thresholds, options)
