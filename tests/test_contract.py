"""The serving contract has one home, and the client install stays light."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

from fracscan import contract, provenance

ROOT = Path(__file__).resolve().parent.parent
# Code that builds, serves or reads tensors. The CLI only talks to the SDK, and prints words such
# as "FRACTURE" for people, so it is not scanned.
SCANNED = ("fracscan", "client", "export", "demo", "benchmarks")
TENSOR_NAMES = {
    value
    for key, value in vars(contract).items()
    if key.isupper() and isinstance(value, str) and value.isupper() and len(value) > 2 and not value.endswith("_")
}
PATTERNS = ("SCORE_{", "MAP_{", "member_{", "_PROBS")


def _string_literals(path: Path) -> list[tuple[int, str]]:
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    out = []
    for tok in tokens:
        if tok.type == tokenize.STRING or tok.type == getattr(tokenize, "FSTRING_MIDDLE", -1):
            out.append((tok.start[0], tok.string))
    return out


def test_tensor_names_are_spelled_only_in_the_contract():
    assert {"IMAGE", "SCORE", "BOXES", "REGION_USED", "MEMBER_SCORES", "LEVEL"} <= TENSOR_NAMES
    offenders = []
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == ROOT / "fracscan" / "contract.py":
                continue
            for line, literal in _string_literals(path):
                body = literal.strip("rbfRBF").strip("\"'")
                if body in TENSOR_NAMES or any(p in literal for p in PATTERNS):
                    offenders.append(f"{path.relative_to(ROOT)}:{line}: {literal}")
    assert not offenders, "tensor names outside fracscan/contract.py:\n" + "\n".join(offenders)


def test_the_scan_finds_a_spelled_name(tmp_path):
    # The scanner above must be able to fail: a literal tensor name is found.
    sample = tmp_path / "sample.py"
    sample.write_text('x = result.as_numpy("BOXES")\ny = f"SCORE_{i:02d}"\n')
    found = [lit for _, lit in _string_literals(sample)]
    assert any("BOXES" in lit for lit in found) and any("SCORE_{" in lit for lit in found)


def test_client_import_pulls_in_no_demo_torch_or_onnx():
    code = (
        "import sys, fracscan.client, fracscan.cli.app; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx', 'onnxruntime') "
        "or m.startswith('fracscan.demo') or m.startswith('fracscan.export')); print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_ensemble_config_carries_the_provenance(repository):
    from fracscan.export.repository import parse_config

    cfg = parse_config((repository / contract.ENSEMBLE_MODEL / contract.CONFIG_FILE).read_text())
    served = provenance.from_parameters({k: {"string_value": v.string_value} for k, v in cfg.parameters.items()})
    on_disk = provenance.read(repository)
    assert served is not None and served.members_hash == on_disk.members_hash != ""
    # The hashes name the files that are served.
    member = repository / contract.member_model(0) / contract.MODEL_VERSION / contract.ONNX_FILE
    assert on_disk.member_hashes[0] == provenance.sha256_file(member)


def test_provenance_notices():
    demo = provenance.Provenance(spec="demo", demo=True, calibrated=True)
    assert demo.notices() == (provenance.DEMO_NOTICE,) and not demo.clinical
    raw = provenance.Provenance(spec="jones2020", random_weights=True)
    assert raw.notices() == (provenance.RANDOM_NOTICE, provenance.UNCALIBRATED_NOTICE)
    clinical = provenance.Provenance(spec="mine", calibrated=True, member_hashes=("a" * 64,))
    assert clinical.notices() == () and clinical.clinical
    assert provenance.Provenance.from_json(json.loads(json.dumps(clinical.to_json()))) == clinical


@pytest.mark.parametrize("legacy_spec, demo", [("demo", True), ("jones2020", False)])
def test_a_server_without_provenance_is_judged_by_its_spec(legacy_spec, demo):
    record = provenance.from_parameters({contract.PARAM_SPEC: {"string_value": legacy_spec}})
    assert record is not None and record.demo is demo
