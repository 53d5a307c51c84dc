"""Write docs/contract.md from fracscan/contract.py: `python scripts/contract_docs.py [--check]`.

Names, datatypes and dims come from the contract module; this file holds only the words that
explain them. A contract name without a description stops the script, and `--check` (run by
tests/test_docs.py) exits 1 when docs/contract.md differs from what the contract now says.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fracscan import contract as c

PAGE = Path(__file__).resolve().parent.parent / "docs" / "contract.md"
COMMAND = "python scripts/contract_docs.py > docs/contract.md"


class _Dim(int):
    """A dimension that stands for a spec's number (members, classes): printed by its letter."""

    def __new__(cls, letter: str) -> _Dim:
        dim = super().__new__(cls, 0)
        dim.letter = letter
        return dim

    def __repr__(self) -> str:
        return self.letter

    __str__ = __repr__


MEMBERS, CLASSES = _Dim("M"), _Dim("K")
HEAD = "<head>"

DESCRIPTIONS: dict[str, str] = {
    c.IMAGE: "encoded image: DICOM Part-10, PNG (8/16-bit; colour is converted to gray), JPEG, TIFF, or NumPy "
    "`.npy` 2-D array; raw bytes, or their base64 text (for plain JSON clients)",
    c.REGION: "optional; a region name or DICOM term (`wrist`, `LOWER LEG`); empty or absent: derived from DICOM "
    "tags (BodyPartExamined, Study/Series description, protocol), else `unknown`",
    c.SCORE: "ensemble fracture probability (unweighted mean of the members)",
    c.FRACTURE: "`SCORE >= THRESHOLD`",
    c.THRESHOLD: "the threshold applied (the region's, or the fallback)",
    c.REGION_USED: "one of the spec's regions, or `unknown`",
    c.REGION_SOURCE: "`user`, `dicom`, `model` (a body-part head named it: ensembles with heads only) or `unknown`",
    c.FALLBACK: "the region has no calibrated threshold: the fallback was applied",
    c.MEMBER_SCORES: "each member's probability (their spread: the members disagree)",
    c.BOXES: "`x0, y0, x1, y1, confidence` in original pixel coordinates, highest confidence first, only for a "
    "positive radiograph; rows with confidence `-1` are padding",
    c.LEVEL: "`negative`, `suspicious` (score >= `THRESHOLD`, the high-sensitivity point) or `definite` (score >= "
    "max(`THRESHOLD`, `DEFINITE_THRESHOLD`), the high-specificity point); the boxes inherit it",
    c.DEFINITE_THRESHOLD: "the definite point applied (never below `THRESHOLD`), `-1` when the region has none "
    "(not NaN: strict JSON clients)",
    "<HEAD>": "the head's top class (`LATERALITY`: `left`)",
    "<HEAD>_PROBS": "the members' mean softmax, in the spec's class order; `label_filename` = `<head>_labels.txt` "
    "(Triton's classification extension answers `1.000000:0:left`)",
    c.QC: "empty, or the quality-control warnings joined by `; `",
    c.MODEL_IDENTITY: "who answered, as compact JSON: `spec`, `members` (the members' content hash), `thresholds` "
    "(the applied thresholds' content hash), `flags` (`demo`, `random_weights`, `uncalibrated`); read by the "
    "`threshold` step from the files it serves (see identity.md)",
    c.STUDY_SCORE: "the views' scores aggregated by the rule",
    c.STUDY_FRACTURE: "`STUDY_SCORE >= STUDY_THRESHOLD`",
    c.STUDY_THRESHOLD: "the study threshold applied",
    c.STUDY_LEVEL: "`negative`, `suspicious` or `definite`, for the study",
    c.STUDY_DEFINITE_THRESHOLD: "the study's definite point, `-1` when none",
    c.STUDY_FALLBACK: "the study region has no calibrated study threshold",
    c.STUDY_RULE: "`max` (default), `mean` or `noisy_or` (1 - prod(1 - s))",
    c.STUDY_CALIBRATED: "false: no study thresholds, the image-level ones were applied with `max`",
    c.STUDY_VIEWS_USED: "the views that were scored",
    c.VIEW_SCORES: "per view, in request order; `-1` for a view that failed",
    c.VIEW_THRESHOLDS: "each view's image-level threshold",
    c.VIEW_LEVELS: "each view's level",
    c.VIEW_REGIONS: "each view's region",
    c.VIEW_ERRORS: "empty for a view that was scored, else why it failed",
    c.VIEW_BOXES: "`view, x0, y0, x1, y1, confidence`",
}
STUDY_REGION = "the study region: the user's, else the one most views resolve to (a tie goes to the earliest view)"

NAMES: list[tuple[str, str]] = [
    (c.ENSEMBLE_MODEL, "the ensemble: one radiograph (or a batch) per request"),
    (c.STUDY_MODEL, "every view of one study in one request (python backend, BLS)"),
    (c.PREPROCESS_MODEL, "decode, crop, resize: the plain frame"),
    (c.NORMALIZE_MODEL, "plain + LCN channels (an ONNX graph on GPU targets)"),
    (c.member_model(0), "the members, `member_00` ... (fan-out)"),
    (c.AVERAGE_MODEL, "the members' mean score, map and head probabilities"),
    (c.THRESHOLD_MODEL, "thresholds, decision, level, boxes, head answers and QC"),
    (c.SPEC_FILE, "the ensemble spec as served (docs/spec.md)"),
    (c.THRESHOLDS_FILE, "per-region operating points, written by `fracscan calibrate`"),
    (c.PROVENANCE_FILE, "demo, random weights, calibrated, the members' content hashes"),
    (c.labels_file(HEAD), "one class per line (Triton's `label_filename` convention)"),
    (c.PARAM_SPEC, "ensemble config parameter: the spec's name"),
    (c.PARAM_DESCRIPTION, "ensemble config parameter: the spec's description"),
    (c.PARAM_PROVENANCE, "ensemble config parameter: the provenance record (JSON)"),
    (c.PARAM_HEADS, "ensemble config parameter: `{head: [class, ...]}` (ensembles with heads only)"),
]

HEAD_TEXT = """\
# The serving contract (KServe v2)

<!-- Generated from fracscan/contract.py by `{command}`; tests/test_docs.py fails when it is stale. -->

Every name below, and every file and model name of a repository, is defined once, in
`fracscan/contract.py`; a test fails when a tensor name is spelled anywhere else. The SDK
([sdk.md](sdk.md)) and the CLI ([cli.md](cli.md)) speak this contract for you; this page is for
clients of your own.

## Model `{ensemble}`

`platform: "ensemble"`, `max_batch_size` 8. `M` is the number of members.

"""

MIDDLE_TEXT = """
A request may ask for any subset of the outputs (`"outputs": [{{"name": "SCORE"}}]`): every output comes
from the ensemble's last step, which passes the earlier steps' answers on. The ensemble config's
parameters carry the repository's provenance record (spec, demo, random weights, calibrated, the
members' content hash): `fracscan health --json` shows it.

### Ensembles with classification heads

A spec with `[heads.<head>]` tables (the Olczak system, [olczak.md](olczak.md)) adds per head, `K`
its number of classes, after the outputs above (without heads the contract is exactly the table above):

"""

STUDY_TEXT = """
## Model `{study}`

Every view of one study in one request; no batch dimension (the dims are the whole tensor). It
calls `{ensemble}` once per view, so one bad view does not sink its study: it is reported in
`VIEW_ERRORS` and the study is decided on the others. Study thresholds live in `thresholds.json`
(section `study`) together with the rule they were calibrated for.

"""

STEPS_TEXT = """
## Inside the ensemble

The steps and the tensors between them (`S`: the spec's size; the members' maps are S/8 a side):

```text
{steps}
```

## Model, file and parameter names

| name | what it is |
|---|---|
"""

TAIL_TEXT = """
Server URLs: `http://` (default port {http}), `https://` (443), `grpc://` ({grpc}), `grpcs://` (443); metrics on
{metrics}. `fracscan serve` keeps tritonserver's default ports.

## What a request may carry, and what a bad one gets

DICOM is decoded on the server with pydicom and the pylibjpeg plug-ins (every common transfer
syntax); MONOCHROME1 is inverted and the modality LUT / rescale applied. A request may carry N
images (N answers back); concurrent single-image requests are batched dynamically in the members.

A bad request gets HTTP 400 / gRPC `INVALID_ARGUMENT` with a message naming the step and the cause
(`in ensemble 'fracscan', preprocess: DICOM is not an image: SOP Class 'Basic Text SR Storage'
carries no pixels to score`), and the server stays healthy. A malformed DICOM value gets a 400
naming the attribute (`DICOM attribute NumberOfFrames is not a valid integer`), never quoting a
value: no patient name, ID, birth date or accession number appears in an error.

Inputs are bounded before they are decoded: an image above the pixel limit (`FRACSCAN_MAX_PIXELS`,
default 100 megapixels) is refused from the size its header declares (PNG IHDR, JPEG / JPEG-LS
frame header, TIFF directory, `.npy` header, DICOM Rows x Columns and the frame header inside
compressed pixel data), so a decompression bomb is refused in milliseconds without allocating its
pixels. Images under 8 pixels a side are refused. `preprocess` decodes the images of a batch one
after another, so its memory per batch is bounded by one image's decode at the limit (about 0.8 GB
for a 100 MP 16-bit PNG) plus the encoded request.

A body that is not valid KServe JSON (`{{"inputs": [`, a missing `inputs` array) is refused by
Triton's HTTP frontend before any model runs, with **500** and `failed to parse the request JSON
buffer` or `Unable to parse 'inputs'`: Triton's own behaviour, which a python model cannot change;
treat it as a client error (the SDK never sends one).

The ensemble's response `parameters` hold `sequence_id`, `sequence_start` and `sequence_end` once per
output tensor (eleven times for a full answer): Triton's ensemble scheduler adds them; fracscan's models
answer no parameters (a request to one of them directly carries none). They mean nothing for this
stateless model; ignore them.

## With curl

Against a running server (`fracscan serve`, or `make serve`). The base64 image is too large for a
command-line argument, so the body is written to a temporary file first:

<!-- runnable: server -->
```bash
body=$(mktemp)
{{ printf '{{"inputs": [{{"name": "IMAGE", "shape": [1, 1], "datatype": "BYTES", "data": ["'
  base64 -w0 examples/tibia_fibula_fracture.png
  printf '"]}}, {{"name": "REGION", "shape": [1, 1], "datatype": "BYTES", "data": ["tibia_fibula"]}}]}}'
}} > "$body"
curl -s localhost:8000/v2/models/fracscan/infer -H 'Content-Type: application/json' --data-binary @"$body"
rm -f "$body"
```
"""


def _dims(dims: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def _table(rows: list[tuple[str, c.Tensor, str]]) -> str:
    lines = ["| | name | type | dims | |", "|---|---|---|---|---|"]
    lines += [f"| {kind} | `{t.name}` | {t.datatype} | {_dims(t.dims)} | {text} |" for kind, t, text in rows]
    return "\n".join(lines) + "\n"


def _described(tensors: tuple[c.Tensor, ...], kind: str, overrides: dict[str, str] | None = None) -> list:
    rows = []
    for t in tensors:
        text = (overrides or {}).get(t.name) or DESCRIPTIONS.get(t.name)
        if text is None:
            raise SystemExit(f"contract name {t.name!r} has no description in {Path(__file__).name}")
        rows.append((kind, t, text))
    return rows


def render() -> str:
    fmt = {"ensemble": c.ENSEMBLE_MODEL, "study": c.STUDY_MODEL, "command": COMMAND}
    heads = ((HEAD, CLASSES),)
    page = HEAD_TEXT.format(**fmt)
    page += _table(_described(c.ENSEMBLE_INPUTS, "in") + _described(c.ensemble_outputs(MEMBERS), "out"))
    page += MIDDLE_TEXT.format(**fmt)
    page += _table(_described(c.head_answer_outputs(heads), "out"))
    page += STUDY_TEXT.format(**fmt)
    study_in = _described(c.STUDY_INPUTS, "in", {c.IMAGE: "the study's views, each as `IMAGE` above"})
    page += _table(study_in + _described(c.study_outputs(), "out", {c.REGION_USED: STUDY_REGION}))
    drawings = [p for p in (c.__doc__ or "").split("\n\n") if p.startswith("    ")]  # the docstring's diagrams
    page += STEPS_TEXT.format(steps="\n\n".join("\n".join(ln[4:] for ln in p.splitlines()) for p in drawings))
    page += "".join(f"| `{name}` | {text} |\n" for name, text in NAMES)
    page += TAIL_TEXT.format(http=c.HTTP_PORT, grpc=c.GRPC_PORT, metrics=c.METRICS_PORT)
    return page


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help=f"exit 1 when {PAGE.name} is stale")
    args = parser.parse_args()
    page = render()
    if args.check:
        if PAGE.read_text() != page:
            print(f"docs/contract.md is stale: run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
