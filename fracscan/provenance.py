"""Where a repository's answers come from: the one place that decides "is this the demo?".

`fracscan export` (and the demo build) write `provenance.json` beside the Triton models and copy it
into the ensemble config's parameters, so a remote client learns the same facts from the server:
the spec's name, whether the members are the synthetic-data DEMO or random weights, a content hash
of every member's model file, whether the thresholds were calibrated, when, and a content hash of
the thresholds file. `serve`, `health` and `predict` read this record; their warnings come from `notices()`.

`ModelIdentity` is the short form every answer carries (the `threshold` step computes it at load from
the files it serves and returns it as the MODEL_IDENTITY output): spec name, members' hash, thresholds
hash and the flags demo / random_weights / uncalibrated. `ExpectedModel` is what `--expect-model
SPEC[:MEMBERS_HASH]` asks for. docs/identity.md describes both.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from fracscan import contract
from fracscan.thresholds import is_calibrated

DEMO_NOTICE = "DEMO ensemble: small models trained on synthetic radiographs. Not for clinical use."
RANDOM_NOTICE = "RANDOM WEIGHTS: the members are untrained (for sizing and load tests only). Not for clinical use."
UNCALIBRATED_NOTICE = (
    "UNCALIBRATED thresholds (0.5 everywhere): decisions mean nothing until `fracscan calibrate` has run."
)
DEMO_SPEC = "demo"  # repositories written before provenance.json existed are judged by their spec's name

FLAG_DEMO, FLAG_RANDOM, FLAG_UNCALIBRATED = "demo", "random_weights", "uncalibrated"
FLAGS: tuple[str, ...] = (FLAG_DEMO, FLAG_RANDOM, FLAG_UNCALIBRATED)  # in this order wherever they are listed
BANNERS = {FLAG_DEMO: "DEMO", FLAG_RANDOM: "RANDOM WEIGHTS", FLAG_UNCALIBRATED: "UNCALIBRATED"}
NOTICES = {FLAG_DEMO: DEMO_NOTICE, FLAG_RANDOM: RANDOM_NOTICE, FLAG_UNCALIBRATED: UNCALIBRATED_NOTICE}
HASH_LENGTH = 16  # hex digits of the members' and the thresholds' content hashes


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def thresholds_hash(raw: Any) -> str:
    """The content hash of a thresholds file's JSON: key order and white space do not change it."""
    canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:HASH_LENGTH]


@dataclass(frozen=True)
class ModelIdentity:
    """Who answered: spec name, members' hash, thresholds hash, flags (from FLAGS; empty = calibrated, clinical)."""

    spec: str
    members: str
    thresholds: str
    flags: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        unknown = set(self.flags) - set(FLAGS)
        if unknown:
            raise ValueError(f"unknown model identity flag(s) {sorted(unknown)}: expected {', '.join(FLAGS)}")
        object.__setattr__(self, "flags", tuple(f for f in FLAGS if f in self.flags))

    @property
    def clinical(self) -> bool:
        """False for the demo and for random weights (an uncalibrated ensemble is clinical, but undecided)."""
        return FLAG_DEMO not in self.flags and FLAG_RANDOM not in self.flags

    def compact(self) -> str:
        """`spec@members/thresholds[+flag...]`, e.g. `demo@569471531d30e22b/3f0c1a2b4d5e6f70+demo`."""
        return f"{self.spec}@{self.members}/{self.thresholds}" + "".join(f"+{f}" for f in self.flags)

    __str__ = compact

    def banners(self) -> tuple[str, ...]:
        """What overlays and Secondary Captures draw: "DEMO", "RANDOM WEIGHTS", "UNCALIBRATED" as they apply."""
        return tuple(BANNERS[f] for f in self.flags)

    def notices(self) -> tuple[str, ...]:
        return tuple(NOTICES[f] for f in self.flags)

    def to_json(self) -> dict[str, Any]:
        return {"spec": self.spec, "members": self.members, "thresholds": self.thresholds, "flags": list(self.flags)}

    def to_text(self) -> str:
        """Compact JSON: the MODEL_IDENTITY output's one element."""
        return json.dumps(self.to_json(), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: Any) -> ModelIdentity:
        """From `to_json()` or its text; ValueError for anything else."""
        if isinstance(raw, (str, bytes)):
            raw = json.loads(raw)
        if not isinstance(raw, dict) or not isinstance(raw.get("flags", []), list):
            raise ValueError(f"not a model identity: {str(raw)[:200]}")
        return cls(
            spec=str(raw.get("spec", "")),
            members=str(raw.get("members", "")),
            thresholds=str(raw.get("thresholds", "")),
            flags=tuple(str(f) for f in raw.get("flags", [])),
        )


@dataclass(frozen=True)
class ExpectedModel:
    """The model that must answer: `--expect-model SPEC[:MEMBERS_HASH]` (the hash or a prefix of it), or a
    repository's spec, members' hash and thresholds hash (`predict --repository DIR`)."""

    spec: str
    members: str = ""
    thresholds: str = ""

    @classmethod
    def parse(cls, text: str) -> ExpectedModel:
        spec, _, members = text.strip().partition(":")
        members = members.strip().lower()
        if not spec.strip() or (members and not all(ch in "0123456789abcdef" for ch in members)):
            raise ValueError(f"bad expected model {text!r}: expected SPEC or SPEC:MEMBERS_HASH (hex)")
        return cls(spec.strip(), members)

    def matches(self, identity: ModelIdentity | None) -> bool:
        return (
            identity is not None
            and identity.spec == self.spec
            and identity.members.startswith(self.members)
            and identity.thresholds.startswith(self.thresholds)
        )

    def __str__(self) -> str:
        text = f"{self.spec}:{self.members}" if self.members else self.spec
        return f"{text} (thresholds {self.thresholds})" if self.thresholds else text


@dataclass(frozen=True)
class Provenance:
    spec: str
    demo: bool = False
    random_weights: bool = False
    calibrated: bool = False
    member_hashes: tuple[str, ...] = ()  # sha256 of each member's model.onnx, in member order
    created: str = ""  # when the repository was written (ISO 8601)
    thresholds_hash: str = ""  # thresholds_hash() of the thresholds file the `threshold` step applies
    calibrated_at: str = ""  # when those thresholds were calibrated (ISO 8601; "" when not or not recorded)

    @property
    def members_hash(self) -> str:
        """One short hash over every member's content: names this set of weights (SR, logs, re-export checks)."""
        if not self.member_hashes:
            return ""
        return hashlib.sha256("".join(self.member_hashes).encode()).hexdigest()[:HASH_LENGTH]

    @property
    def clinical(self) -> bool:
        """False when no clinical meaning can be given to the answers."""
        return not (self.demo or self.random_weights)

    @property
    def identity(self) -> ModelIdentity:
        flags = ((FLAG_DEMO, self.demo), (FLAG_RANDOM, self.random_weights), (FLAG_UNCALIBRATED, not self.calibrated))
        return ModelIdentity(self.spec, self.members_hash, self.thresholds_hash, tuple(f for f, on in flags if on))

    def notices(self) -> tuple[str, ...]:
        """The warnings every command shows (and every result writer records) for this repository."""
        return self.identity.notices()

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"member_hashes": list(self.member_hashes), "members_hash": self.members_hash}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Provenance:
        return cls(
            spec=str(raw.get("spec", "")),
            demo=bool(raw.get("demo", False)),
            random_weights=bool(raw.get("random_weights", False)),
            calibrated=bool(raw.get("calibrated", False)),
            member_hashes=tuple(str(h) for h in raw.get("member_hashes", ())),
            created=str(raw.get("created", "")),
            thresholds_hash=str(raw.get("thresholds_hash", "")),
            calibrated_at=str(raw.get("calibrated_at", "")),
        )

    def with_thresholds(self, raw: dict[str, Any]) -> Provenance:
        """This record for the thresholds file `raw` (its JSON): calibrated or not, when, and its content hash."""
        prov = raw.get("provenance") or {}
        calibrated = is_calibrated(prov)
        when = str(prov.get("date", "")) if calibrated else ""
        return replace(self, calibrated=calibrated, calibrated_at=when, thresholds_hash=thresholds_hash(raw))


def read(repository: str | Path, thresholds: dict[str, Any] | None = None) -> Provenance:
    """The provenance of a repository on disk; the thresholds file has the last word on calibration.

    `thresholds`: the thresholds file's JSON as the caller already read it (so that the record names the
    very thresholds a server applies, even when the file is replaced meanwhile).
    """
    repository = Path(repository)
    path = repository / contract.PROVENANCE_FILE
    if path.is_file():
        record = Provenance.from_json(json.loads(path.read_text()))
    else:  # written before provenance.json existed
        from fracscan.spec import load_spec

        spec = load_spec(repository / contract.SPEC_FILE)
        record = Provenance(spec=spec.name, demo=spec.demo or spec.name == DEMO_SPEC)
    path = repository / contract.THRESHOLDS_FILE
    if thresholds is None and path.is_file():
        thresholds = json.loads(path.read_text())
    return record if thresholds is None else record.with_thresholds(thresholds)


def identity(repository: str | Path) -> ModelIdentity:
    """The identity a server on `repository` answers with (what `predict --repository` compares)."""
    return read(repository).identity


def write(repository: str | Path, record: Provenance) -> Path:
    path = Path(repository) / contract.PROVENANCE_FILE
    path.write_text(json.dumps(record.to_json(), indent=2) + "\n")
    return path


def from_parameters(parameters: dict[str, Any]) -> Provenance | None:
    """From an ensemble config's `parameters` as KServe returns them ({name: {"string_value": ...}})."""

    def value(key: str) -> str:
        raw = parameters.get(key)
        return str(raw.get("string_value", "")) if isinstance(raw, dict) else str(raw or "")

    text = value(contract.PARAM_PROVENANCE)
    if text:
        try:
            return Provenance.from_json(json.loads(text))
        except (ValueError, TypeError):
            return None
    spec = value(contract.PARAM_SPEC)  # a server exported before provenance existed
    return Provenance(spec=spec, demo=spec == DEMO_SPEC, calibrated=True) if spec else None
