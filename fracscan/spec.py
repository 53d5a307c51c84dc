"""The ensemble spec: one TOML file that declares pre-processing, regions and members.

The spec is the single source of truth for everything that differs between ensembles
(the Jones et al. 2020 ten-member DRN system, the small demo ensemble, a one-member
Olczak et al. 2017 style model). Triton configs, the in-process reference and the
export scripts are all derived from it.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from fracscan import contract

Arch = Literal["drn_c_26", "drn_d_22", "drn_d_38", "drn_d_54"]
MemberInput = Literal["plain", "lcn", "both"]
ScoreHead = Literal["gap", "spp"]

ARCHS: tuple[str, ...] = ("drn_c_26", "drn_d_22", "drn_d_38", "drn_d_54")
MEMBER_INPUTS: tuple[str, ...] = ("plain", "lcn", "both")
SCORE_HEADS: tuple[str, ...] = ("gap", "spp")
MAP_STRIDE = 8  # DRN output stride: the probability map is S/8 x S/8

UNKNOWN_REGION = contract.UNKNOWN_REGION


class SpecError(ValueError):
    """The spec file is malformed; the message names the file and the field."""


@dataclass(frozen=True)
class PreprocessSpec:
    size: int = 1024  # S: long side after resize, frame is S x S
    lcn_sigma: float = 16.0  # Gaussian sigma of the local mean/std, in pixels of the S x S frame
    lcn_floor: float = 0.1  # lower bound of the local std (plain image units, range [-1, 1])
    lcn_clip: float = 3.0  # LCN values are clipped to +-lcn_clip, then divided by it -> [-1, 1]

    @property
    def map_size(self) -> int:
        return self.size // MAP_STRIDE


@dataclass(frozen=True)
class MemberSpec:
    name: str
    arch: Arch
    input: MemberInput = "both"
    head: ScoreHead = "gap"
    attention: bool = False
    map: bool = False  # also outputs a pixel-wise probability map at stride 8
    width: float = 1.0  # channel-width multiplier (1.0 = the DRN paper's widths)
    checkpoint: str | None = None  # path to a PyTorch state_dict, relative to the spec file
    onnx: str | None = None  # or an already exported ONNX file, relative to the spec file

    @property
    def in_channels(self) -> int:
        return 2 if self.input == "both" else 1


@dataclass(frozen=True)
class EnsembleSpec:
    name: str
    preprocess: PreprocessSpec
    regions: dict[str, tuple[str, ...]]  # canonical region -> DICOM aliases (upper case)
    members: tuple[MemberSpec, ...]
    description: str = ""
    demo: bool = False  # the synthetic-data DEMO ensemble: every answer says so (see fracscan.provenance)
    source: Path | None = field(default=None, compare=False)

    @property
    def map_members(self) -> tuple[int, ...]:
        return tuple(i for i, m in enumerate(self.members) if m.map)

    def member_model_name(self, index: int) -> str:
        return contract.member_model(index)

    def resolve_region(self, requested: str | None, dicom_terms: tuple[str, ...] = ()) -> tuple[str, str]:
        """Return (region, source): the user's region if given, else one matched from DICOM terms.

        source is "user", "dicom" or "unknown". A requested region that is not in the region
        list yields ("unknown", "user"): it is still scored, against the fallback threshold.
        """
        if requested:
            return (self._canonical(requested) or UNKNOWN_REGION, "user")
        for term in dicom_terms:
            region = self._canonical(term)
            if region:
                return region, "dicom"
        # Descriptions such as "XR WRIST 3 VIEWS LEFT": look for an alias as a whole word.
        for term in dicom_terms:
            words = set(term.upper().replace("_", " ").replace("-", " ").replace("^", " ").split())
            for region, aliases in self.regions.items():
                if words & ({region.upper()} | set(aliases)):
                    return region, "dicom"
        return UNKNOWN_REGION, "unknown"

    def _canonical(self, name: str) -> str | None:
        key = name.strip().upper().replace(" ", "_").replace("-", "_")
        for region, aliases in self.regions.items():
            if key == region.upper() or key in aliases or key.replace("_", " ") in aliases:
                return region
        return None


def _fail(path: Path | str, msg: str) -> SpecError:
    return SpecError(f"{path}: {msg}")


def load_spec(path: str | Path) -> EnsembleSpec:
    """Load and validate an ensemble spec (TOML)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise _fail(path, "spec file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise _fail(path, f"not valid TOML: {exc}") from None
    return parse_spec(raw, path)


def parse_spec(raw: dict[str, Any], path: Path | str = "<spec>") -> EnsembleSpec:
    pre_raw = raw.get("preprocess", {})
    unknown = set(pre_raw) - set(PreprocessSpec.__dataclass_fields__)
    if unknown:
        raise _fail(path, f"[preprocess] has unknown keys {sorted(unknown)}")
    pre = PreprocessSpec(**pre_raw)
    if pre.size < 32 or pre.size % MAP_STRIDE:
        raise _fail(path, f"[preprocess] size must be a multiple of {MAP_STRIDE} and >= 32, got {pre.size}")

    regions_raw = raw.get("regions")
    if not isinstance(regions_raw, dict) or not regions_raw:
        raise _fail(path, "[regions] must map each region name to a list of DICOM aliases")
    regions = {str(name).lower(): tuple(str(a).upper() for a in aliases) for name, aliases in regions_raw.items()}
    if UNKNOWN_REGION in regions:
        raise _fail(path, f"'{UNKNOWN_REGION}' is reserved for the fallback and cannot be a region")

    members_raw = raw.get("members")
    if not isinstance(members_raw, list) or not members_raw:
        raise _fail(path, "[[members]] must list at least one member")
    members = []
    fields = set(MemberSpec.__dataclass_fields__)
    for i, m in enumerate(members_raw):
        where = f"member #{i} ({m.get('name', '?')})"
        unknown = set(m) - fields
        if unknown:
            raise _fail(path, f"{where} has unknown keys {sorted(unknown)}")
        if "name" not in m or "arch" not in m:
            raise _fail(path, f"{where} needs 'name' and 'arch'")
        for key, allowed in (("arch", ARCHS), ("input", MEMBER_INPUTS), ("head", SCORE_HEADS)):
            if key in m and m[key] not in allowed:
                raise _fail(path, f"{where}: {key} = {m[key]!r}, expected one of {list(allowed)}")
        members.append(MemberSpec(**m))
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise _fail(path, f"member names must be unique, got {names}")
    return EnsembleSpec(
        name=str(raw.get("name", "fracscan")),
        description=str(raw.get("description", "")),
        demo=bool(raw.get("demo", False)),
        preprocess=pre,
        regions=regions,
        members=tuple(members),
        source=Path(path) if not isinstance(path, Path) else path,
    )


def spec_to_dict(spec: EnsembleSpec) -> dict[str, Any]:
    """The TOML-ready form of a spec (unset optional member fields are left out)."""
    return {
        "name": spec.name,
        "description": spec.description,
        **({"demo": True} if spec.demo else {}),
        "preprocess": asdict(spec.preprocess),
        "regions": {name: list(aliases) for name, aliases in spec.regions.items()},
        "members": [{k: v for k, v in asdict(m).items() if v is not None} for m in spec.members],
    }


def save_spec(spec: EnsembleSpec, path: str | Path) -> None:
    import tomli_w

    Path(path).write_text(tomli_w.dumps(spec_to_dict(spec)))


def builtin_spec_path(name: str) -> Path:
    """Path of a spec shipped with fracscan: 'jones2020' (default, full size) or 'demo'.

    The demo's spec lives in the demo wing beside its artifacts (a data file: nothing is imported).
    """
    if name == "demo":
        return Path(str(resources.files("fracscan.demo") / "demo.toml"))
    ref = resources.files("fracscan.specs") / f"{name}.toml"
    return Path(str(ref))
