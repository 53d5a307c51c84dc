"""Where a repository's answers come from: the one place that decides "is this the demo?".

`fracscan export` (and the demo build) write `provenance.json` beside the Triton models and copy it
into the ensemble config's parameters, so a remote client learns the same facts from the server:
the spec's name, whether the members are the synthetic-data DEMO or random weights, a content hash
of every member's model file, and whether the thresholds were calibrated. `serve`, `health`,
`predict` and every result writer read this record; their warnings come from `notices()`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
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


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Provenance:
    spec: str
    demo: bool = False
    random_weights: bool = False
    calibrated: bool = False
    member_hashes: tuple[str, ...] = ()  # sha256 of each member's model.onnx, in member order
    created: str = ""  # when the repository was written (ISO 8601)

    @property
    def members_hash(self) -> str:
        """One short hash over every member's content: names this set of weights (SR, logs, re-export checks)."""
        if not self.member_hashes:
            return ""
        return hashlib.sha256("".join(self.member_hashes).encode()).hexdigest()[:16]

    @property
    def clinical(self) -> bool:
        """False when no clinical meaning can be given to the answers."""
        return not (self.demo or self.random_weights)

    def notices(self) -> tuple[str, ...]:
        """The warnings every command shows (and every result writer records) for this repository."""
        out = []
        if self.demo:
            out.append(DEMO_NOTICE)
        if self.random_weights:
            out.append(RANDOM_NOTICE)
        if not self.calibrated:
            out.append(UNCALIBRATED_NOTICE)
        return tuple(out)

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
        )

    def with_calibration(self, calibrated: bool) -> Provenance:
        return replace(self, calibrated=calibrated)


def read(repository: str | Path) -> Provenance:
    """The provenance of a repository on disk; the thresholds file has the last word on calibration."""
    repository = Path(repository)
    path = repository / contract.PROVENANCE_FILE
    if path.is_file():
        record = Provenance.from_json(json.loads(path.read_text()))
    else:  # written before provenance.json existed
        from fracscan.spec import load_spec

        spec = load_spec(repository / contract.SPEC_FILE)
        record = Provenance(spec=spec.name, demo=spec.demo or spec.name == DEMO_SPEC)
    thresholds = repository / contract.THRESHOLDS_FILE
    if thresholds.is_file():
        prov = json.loads(thresholds.read_text()).get("provenance") or {}
        record = record.with_calibration(is_calibrated(prov))
    return record


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
