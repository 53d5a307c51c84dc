"""The ensemble spec: one TOML file that declares pre-processing, regions and members.

The spec is the single source of truth for everything that differs between ensembles
(the Jones et al. 2020 ten-member DRN system, the small demo ensemble, a one-member
Olczak et al. 2017 style model). Triton configs, the in-process reference and the
export scripts are all derived from it.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from fracscan import contract

Arch = Literal["drn_c_26", "drn_d_22", "drn_d_38", "drn_d_54", "vgg16", "vgg16_bn"]
MemberInput = Literal["plain", "lcn", "both"]
ScoreHead = Literal["gap", "spp"]
Resize = Literal["pad", "stretch"]
Crop = Literal["anatomy", "keep_markers"]
QualityCheck = Literal["laterality", "body_part"]

DRN_ARCHS: tuple[str, ...] = ("drn_c_26", "drn_d_22", "drn_d_38", "drn_d_54")
VGG_ARCHS: tuple[str, ...] = ("vgg16", "vgg16_bn")  # vgg16_bn: batch norm after each conv, folded at export
ARCHS: tuple[str, ...] = (*DRN_ARCHS, *VGG_ARCHS)
MEMBER_INPUTS: tuple[str, ...] = ("plain", "lcn", "both")
SCORE_HEADS: tuple[str, ...] = ("gap", "spp")
RESIZES: tuple[str, ...] = ("pad", "stretch")
CROPS: tuple[str, ...] = ("anatomy", "keep_markers")
QUALITY_CHECKS: tuple[str, ...] = ("laterality", "body_part")
LATERALITY_CLASSES: tuple[str, ...] = ("left", "right")  # a laterality check's classes: DICOM "L" / "R"
MAP_STRIDE = 8  # DRN output stride: the probability map is S/8 x S/8
VGG_STRIDE = 32  # VGG-16's five max pools: the features are S/32 x S/32

UNKNOWN_REGION = contract.UNKNOWN_REGION


class SpecError(ValueError):
    """The spec file is malformed; the message names the file and the field."""


@dataclass(frozen=True)
class PreprocessSpec:
    size: int = 1024  # S: long side after resize, frame is S x S
    lcn_sigma: float = 16.0  # Gaussian sigma of the local mean/std, in pixels of the S x S frame
    lcn_floor: float = 0.1  # lower bound of the local std (plain image units, range [-1, 1])
    lcn_clip: float = 3.0  # LCN values are clipped to +-lcn_clip, then divided by it -> [-1, 1]
    resize: Resize = "pad"  # pad: long side S, aspect kept, padded (Jones); stretch: S x S, aspect not kept (Olczak)
    lcn: bool = True  # false: the members' input is the plain channel only ([1, S, S])
    crop: Crop = "anatomy"  # anatomy: burned-in markers are cropped away; keep_markers: they stay in the frame

    @property
    def map_size(self) -> int:
        return self.size // MAP_STRIDE

    @property
    def channels(self) -> int:
        """Channels of the members' shared input PIXELS: plain (+ LCN)."""
        return 2 if self.lcn else 1


@dataclass(frozen=True)
class HeadSpec:
    """A named classification head every member outputs (Olczak et al. 2017: laterality, body part, view).

    The ensemble answers the top class and the members' mean softmax in `classes` order (the tensor
    names are `contract.head_outputs(name)`). `regions` maps classes to the spec's regions (a body-part head): the region of
    a radiograph that neither the user nor DICOM names (REGION_SOURCE "model"). `check` compares the
    head with what DICOM states (ImageLaterality / Laterality, BodyPartExamined): a contradiction at
    top-class probability >= `check_confidence` adds a QC warning to the answer.
    """

    name: str
    classes: tuple[str, ...]
    regions: tuple[tuple[str, str], ...] = ()  # (class, region) pairs: a tuple keeps the spec hashable
    check: QualityCheck | None = None
    check_confidence: float = 0.9

    def region_of(self, label: str) -> str | None:
        return dict(self.regions).get(label)


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
    # Set from the ensemble by parse_spec (not member keys in the TOML): every member reads the same
    # PIXELS [pixel_channels, S, S] and outputs every head of the ensemble.
    pixel_channels: int = 2
    heads: tuple[HeadSpec, ...] = ()

    @property
    def in_channels(self) -> int:
        return 2 if self.input == "both" else 1


ENSEMBLE_MEMBER_FIELDS = ("pixel_channels", "heads")  # MemberSpec fields the ensemble sets


@dataclass(frozen=True)
class EnsembleSpec:
    name: str
    preprocess: PreprocessSpec
    regions: dict[str, tuple[str, ...]]  # canonical region -> DICOM aliases (upper case)
    members: tuple[MemberSpec, ...]
    description: str = ""
    demo: bool = False  # the synthetic-data DEMO ensemble: every answer says so (see fracscan.provenance)
    heads: tuple[HeadSpec, ...] = ()
    source: Path | None = field(default=None, compare=False)

    @property
    def map_members(self) -> tuple[int, ...]:
        return tuple(i for i, m in enumerate(self.members) if m.map)

    @property
    def region_head(self) -> HeadSpec | None:
        """The head whose classes map to regions (at most one), or None."""
        return next((h for h in self.heads if h.regions), None)

    @property
    def head_dims(self) -> contract.Heads:
        """(head, number of classes) pairs: what the contract's tensor lists take."""
        return tuple((h.name, len(h.classes)) for h in self.heads)

    def head(self, name: str) -> HeadSpec:
        return next(h for h in self.heads if h.name == name)

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


# What a spec may hold at the top level, as a reader writes it.
TOP_LEVEL: dict[str, str] = {
    "name": "'name'",
    "description": "'description'",
    "demo": "'demo'",
    "preprocess": "[preprocess]",
    "regions": "[regions]",
    "heads": "[heads.<name>]",
    "members": "[[members]]",
}


def _refuse_unknown(path: Path | str, raw: dict[str, Any], known: dict[str, str], where: str = "") -> None:
    """A misspelt table or key stops the load, naming the file, the table and the nearest known name."""
    for key, value in raw.items():
        if key in known:
            continue
        if isinstance(value, dict):
            shown = f"table [{where.strip('[]') + '.' if where else ''}{key}]"
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            shown = f"table [[{key}]]"
        else:
            shown = f"key '{key}'" + (f" in {where}" if where else " at the top level")
        close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
        hint = f" — did you mean {known[close[0]]}?" if close else f"; known: {', '.join(known.values())}"
        raise _fail(path, f"unknown {shown}{hint}")


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
    _refuse_unknown(path, raw, TOP_LEVEL)
    pre_raw = raw.get("preprocess", {})
    if not isinstance(pre_raw, dict):
        raise _fail(path, "[preprocess] must be a table")
    _refuse_unknown(path, pre_raw, {k: f"'{k}'" for k in PreprocessSpec.__dataclass_fields__}, "[preprocess]")
    pre = PreprocessSpec(**pre_raw)
    if pre.size < 32 or pre.size % MAP_STRIDE:
        raise _fail(path, f"[preprocess] size must be a multiple of {MAP_STRIDE} and >= 32, got {pre.size}")
    for key, allowed in (("resize", RESIZES), ("crop", CROPS)):
        if getattr(pre, key) not in allowed:
            raise _fail(path, f"[preprocess] {key} = {getattr(pre, key)!r}, expected one of {list(allowed)}")
    if not isinstance(pre.lcn, bool):
        raise _fail(path, f"[preprocess] lcn must be true or false, got {pre.lcn!r}")

    regions_raw = raw.get("regions")
    if not isinstance(regions_raw, dict) or not regions_raw:
        raise _fail(path, "[regions] must map each region name to a list of DICOM aliases")
    regions = {str(name).lower(): tuple(str(a).upper() for a in aliases) for name, aliases in regions_raw.items()}
    if UNKNOWN_REGION in regions:
        raise _fail(path, f"'{UNKNOWN_REGION}' is reserved for the fallback and cannot be a region")

    heads = _parse_heads(raw.get("heads", {}), regions, path)

    members_raw = raw.get("members")
    if not isinstance(members_raw, list) or not members_raw:
        raise _fail(path, "[[members]] must list at least one member")
    members = []
    member_keys = {k: f"'{k}'" for k in MemberSpec.__dataclass_fields__ if k not in ENSEMBLE_MEMBER_FIELDS}
    for i, m in enumerate(members_raw):
        if not isinstance(m, dict):
            raise _fail(path, "[[members]] must be tables, one [[members]] per member")
        where = f"member #{i} ({m.get('name', '?')})"
        _refuse_unknown(path, m, member_keys, f"[[members]] #{i} ({m.get('name', '?')})")
        if "name" not in m or "arch" not in m:
            raise _fail(path, f"{where} needs 'name' and 'arch'")
        for key, allowed in (("arch", ARCHS), ("input", MEMBER_INPUTS), ("head", SCORE_HEADS)):
            if key in m and m[key] not in allowed:
                raise _fail(path, f"{where}: {key} = {m[key]!r}, expected one of {list(allowed)}")
        if not pre.lcn:
            m = {"input": "plain", **m}  # without LCN the plain channel is all there is
        member = MemberSpec(**m, pixel_channels=pre.channels, heads=heads)
        _check_member(member, pre, path, where)
        members.append(member)
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise _fail(path, f"member names must be unique, got {names}")
    return EnsembleSpec(
        name=str(raw.get("name", "fracscan")),
        description=str(raw.get("description", "")),
        demo=bool(raw.get("demo", False)),
        heads=heads,
        preprocess=pre,
        regions=regions,
        members=tuple(members),
        source=Path(path) if not isinstance(path, Path) else path,
    )


def _check_member(member: MemberSpec, pre: PreprocessSpec, path: Path | str, where: str) -> None:
    if not pre.lcn and member.input != "plain":
        raise _fail(path, f"{where}: input = {member.input!r} needs LCN, but [preprocess] lcn = false")
    if member.arch in VGG_ARCHS:
        if member.map or member.attention or member.head != "gap":
            raise _fail(path, f"{where}: a {member.arch} member has no map, attention or spp head")
        grid = pre.size // VGG_STRIDE
        if pre.size % VGG_STRIDE or not (grid % 7 == 0 or grid == 8):
            raise _fail(
                path, f"{where}: {member.arch} needs [preprocess] size = 224 x k or 256 (7 x 7 pooling), got {pre.size}"
            )


# A member keeps its heads in a torch ModuleDict keyed by head name, so these names (its attributes; a test
# keeps the list complete) cannot be heads.
_MODULE_ATTRIBUTES = frozenset(
    {
        "T_destination",
        "add_module",
        "apply",
        "bfloat16",
        "buffers",
        "call_super_init",
        "children",
        "clear",
        "compile",
        "cpu",
        "cuda",
        "double",
        "dump_patches",
        "eval",
        "extra_repr",
        "float",
        "forward",
        "get_buffer",
        "get_extra_state",
        "get_parameter",
        "get_submodule",
        "half",
        "ipu",
        "items",
        "keys",
        "load_state_dict",
        "modules",
        "mtia",
        "named_buffers",
        "named_children",
        "named_modules",
        "named_parameters",
        "parameters",
        "pop",
        "register_backward_hook",
        "register_buffer",
        "register_forward_hook",
        "register_forward_pre_hook",
        "register_full_backward_hook",
        "register_full_backward_pre_hook",
        "register_load_state_dict_post_hook",
        "register_load_state_dict_pre_hook",
        "register_module",
        "register_parameter",
        "register_state_dict_post_hook",
        "register_state_dict_pre_hook",
        "requires_grad_",
        "set_extra_state",
        "set_submodule",
        "share_memory",
        "state_dict",
        "to",
        "to_empty",
        "train",
        "training",
        "type",
        "update",
        "values",
        "xpu",
        "zero_grad",
    }
)


def _parse_heads(raw: Any, regions: dict[str, tuple[str, ...]], path: Path | str) -> tuple[HeadSpec, ...]:
    """[heads.<name>] tables: classes, optional regions (class -> region), check, check_confidence."""
    if not isinstance(raw, dict):
        raise _fail(path, "[heads] must be tables [heads.<name>] with a 'classes' list")
    heads = []
    allowed = set(HeadSpec.__dataclass_fields__) - {"name"}
    for name, table in raw.items():
        where = f"[heads.{name}]"
        if not (isinstance(name, str) and name.isidentifier() and name == name.lower()):
            raise _fail(path, f"{where}: a head name is lower case letters, digits and _")
        if name in _MODULE_ATTRIBUTES:
            raise _fail(path, f"{where}: {name!r} is a method of the members' head container; choose another name")
        upper, probs = contract.head_outputs(name)
        if upper in contract.RESERVED_NAMES or probs in contract.RESERVED_NAMES:
            raise _fail(path, f"{where}: the name collides with the contract's reserved output {upper!r}")
        if not isinstance(table, dict):
            raise _fail(path, f"{where} must be a table with a 'classes' list")
        _refuse_unknown(path, table, {k: f"'{k}'" for k in sorted(allowed)}, where)
        raw_classes = table.get("classes", ())
        if not isinstance(raw_classes, list) or not all(isinstance(k, str) for k in raw_classes):
            raise _fail(path, f"{where}: classes must be a list of class names, got {raw_classes!r}")
        classes = tuple(raw_classes)
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise _fail(path, f"{where}: classes must list at least two distinct class names, got {list(classes)}")
        mapping = {str(k): str(v).lower() for k, v in table.get("regions", {}).items()}
        if set(mapping) - set(classes) or set(mapping.values()) - set(regions):
            raise _fail(path, f"{where}: regions must map its classes to the spec's [regions], got {mapping}")
        check = table.get("check")
        if check is not None and check not in QUALITY_CHECKS:
            raise _fail(path, f"{where}: check = {check!r}, expected one of {list(QUALITY_CHECKS)}")
        if check == "laterality" and set(classes) != set(LATERALITY_CLASSES):
            raise _fail(path, f"{where}: a laterality check needs classes {list(LATERALITY_CLASSES)}")
        if check == "body_part" and not mapping:
            raise _fail(path, f"{where}: a body_part check needs 'regions' (class -> region) to compare with DICOM")
        confidence = float(table.get("check_confidence", 0.9))
        if not 0.0 < confidence <= 1.0:
            raise _fail(path, f"{where}: check_confidence must be in (0, 1], got {confidence}")
        heads.append(HeadSpec(name, classes, tuple(mapping.items()), check, confidence))
    if sum(1 for h in heads if h.regions) > 1:
        raise _fail(path, "[heads]: at most one head may map its classes to regions")
    _check_unique_tensors(tuple((h.name, len(h.classes)) for h in heads), path)
    return tuple(heads)


def _check_unique_tensors(heads: contract.Heads, path: Path | str) -> None:
    """Head names whose tensors collide with others' (`view` and `view_probs`, `score_00`) are refused."""
    members = 2  # enough to produce every per-member name pattern
    names = [t.name for t in contract.ensemble_outputs(members, heads)]
    names += [t.name for t in contract.average_inputs(members, (0, 1), 8, heads)]
    names += [t.name for t in contract.threshold_inputs(members, 8, True, heads)]
    study = [t.name for t in contract.study_outputs(heads)]  # the study model's own outputs
    repeated = sorted({n for group in (names, study) for n in group if group.count(n) > 1})
    if repeated:
        raise _fail(path, f"[heads]: the head names make tensor names collide: {repeated}")


_LATER_PREPROCESS_KEYS = ("resize", "lcn", "crop")  # written only when set: older specs read the same


def _preprocess_dict(pre: PreprocessSpec) -> dict[str, Any]:
    default = PreprocessSpec()
    return {k: v for k, v in asdict(pre).items() if k not in _LATER_PREPROCESS_KEYS or v != getattr(default, k)}


def spec_to_dict(spec: EnsembleSpec) -> dict[str, Any]:
    """The TOML-ready form of a spec (unset optional member fields are left out)."""
    heads = {}
    for h in spec.heads:
        table: dict[str, Any] = {"classes": list(h.classes)}
        if h.regions:
            table["regions"] = dict(h.regions)
        if h.check:
            table["check"] = h.check
        if h.check or h.regions or h.check_confidence != HeadSpec.check_confidence:
            table["check_confidence"] = h.check_confidence
        heads[h.name] = table
    return {
        "name": spec.name,
        "description": spec.description,
        **({"demo": True} if spec.demo else {}),
        "preprocess": _preprocess_dict(spec.preprocess),
        "regions": {name: list(aliases) for name, aliases in spec.regions.items()},
        **({"heads": heads} if heads else {}),
        "members": [
            {k: v for k, v in asdict(m).items() if v is not None and k not in ENSEMBLE_MEMBER_FIELDS}
            for m in spec.members
        ],
    }


def save_spec(spec: EnsembleSpec, path: str | Path) -> None:
    import tomli_w

    Path(path).write_text(tomli_w.dumps(spec_to_dict(spec)))


_DEMO_SPECS = {"demo": "demo.toml", "olczak_demo": "olczak.toml"}  # in the demo wing, beside their artifacts


def builtin_spec_names() -> tuple[str, ...]:
    """The specs shipped with fracscan (`fracscan/specs/*.toml`), then the demos'."""
    files = resources.files("fracscan.specs").iterdir()
    return (*sorted(p.name.removesuffix(".toml") for p in files if p.name.endswith(".toml")), *_DEMO_SPECS)


def builtin_spec_path(name: str) -> Path:
    """Path of a spec shipped with fracscan: 'jones2020' (default, full size), 'olczak2017', 'demo' or 'olczak_demo'.

    The demos' specs live in the demo wing beside their artifacts (data files: nothing is imported).
    An unknown name raises SpecError listing the names there are.
    """
    if name in _DEMO_SPECS:
        return Path(str(resources.files("fracscan.demo") / _DEMO_SPECS[name]))
    if name not in builtin_spec_names():
        names = ", ".join(builtin_spec_names())
        raise SpecError(f"no built-in spec {name!r}: the built-in specs are {names} (or give a .toml file)")
    return Path(str(resources.files("fracscan.specs") / f"{name}.toml"))
