"""The serving contract: every name that crosses a process boundary, in one place.

Repository generation (`fracscan.export.repository`), the Triton adapters (`fracscan.triton_models`),
the in-process reference, the SDK (`fracscan.client`) and the CLI all take tensor names, datatypes,
dims, model names and file names from here; `tests/test_contract.py` fails when a tensor name is
spelled anywhere else.

    fracscan (ensemble)   IMAGE [+ REGION] -> SCORE FRACTURE THRESHOLD REGION_USED REGION_SOURCE
                                              FALLBACK MEMBER_SCORES BOXES LEVEL DEFINITE_THRESHOLD
                                              MODEL_IDENTITY
      preprocess          IMAGE [+ REGION] -> FRAME GEOMETRY REGION_USED REGION_SOURCE
      normalize           FRAME            -> PIXELS                 (plain + LCN; runs on the GPU on GPU targets)
      member_NN           image            -> score [+ map]          (ensemble names SCORE_NN, MAP_NN)
      average             SCORE_NN, MAP_NN -> SCORE MEMBER_SCORES [MAP]
      threshold           SCORE GEOMETRY REGION_USED [MAP] -> FRACTURE THRESHOLD FALLBACK BOXES LEVEL
                                                              DEFINITE_THRESHOLD MODEL_IDENTITY

MODEL_IDENTITY (BYTES [1]) names the model that made the answer, as compact JSON
`{"spec": ..., "members": <16 hex>, "thresholds": <16 hex>, "flags": [...]}` (flags from "demo",
"random_weights", "uncalibrated"; `fracscan.provenance.ModelIdentity`). `threshold` computes it when it
loads, from the provenance.json and the thresholds.json it serves, so every answer names its own model
even when the server is redeployed between two requests; `fracscan_study` answers its own the same way.

An ensemble whose spec declares classification heads (Olczak et al. 2017) adds, per head `<head>` with
K classes: member output `head_<head>` [K] (softmax; ensemble name `<HEAD>_PROBS_NN`), averaged into
`<HEAD>_PROBS`; `preprocess` adds DICOM_LABELS [2] (what DICOM states: "ImageLaterality=L",
"BodyPartExamined=WRIST", "" when absent) for `threshold`, which answers `<HEAD>`, `<HEAD>_PROBS` and
QC (BYTES [1], "" or the quality-control warnings joined by "; ") and may take REGION_USED from the
body-part head (REGION_SOURCE "model"). Class names: the `fracscan` config's `heads` parameter (JSON)
and, per Triton's `label_filename` convention, `<head>_labels.txt` beside it. An ensemble without
heads has none of these: the Jones et al. contract is unchanged.

Naming rules for outputs that later models add, so nobody invents names: a classification head
`<head>` adds `<HEAD>` (BYTES [1], top class) and `<HEAD>_PROBS` (FP32 [K]); the two-level answer is
`LEVEL` (BYTES [1]) and `DEFINITE_THRESHOLD` (FP32 [1]); the study model `fracscan_study` prefixes its
study answer with `STUDY_` and its per-view answers with `VIEW_`:

    fracscan_study (BLS)  IMAGE [N] [+ REGION] -> STUDY_SCORE STUDY_FRACTURE STUDY_THRESHOLD STUDY_LEVEL
                                                  STUDY_DEFINITE_THRESHOLD STUDY_FALLBACK STUDY_RULE
                                                  STUDY_CALIBRATED STUDY_VIEWS_USED REGION_USED
                                                  VIEW_SCORES VIEW_THRESHOLDS VIEW_LEVELS VIEW_REGIONS VIEW_ERRORS VIEW_BOXES
                                                  MODEL_IDENTITY

With heads, `fracscan_study` adds per head STUDY_<HEAD> (BYTES [1]) and STUDY_<HEAD>_PROBS (FP32 [K], the
classes' shares of the views' votes: fracscan.study.study_heads), then STUDY_QC (BYTES [1]: "" or the
views' disagreements, "; "-joined), and per view, in request order, VIEW_<HEAD> (BYTES [N], "" for a
failed view), VIEW_<HEAD>_PROBS (FP32 [N, K], zeros for a failed view) and VIEW_QC (BYTES [N], the view's
own QC from the ensemble).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

Datatype = Literal["BYTES", "FP32", "BOOL", "INT32"]

# --- server URLs: scheme -> protocol, TLS and the default port (KServe v2 over HTTP or gRPC) ---
HTTP_PORT = 8000  # tritonserver's defaults, which `fracscan serve` keeps
GRPC_PORT = 8001
METRICS_PORT = 8002
URL_SCHEMES: dict[str, tuple[str, bool, int]] = {
    "http": ("http", False, HTTP_PORT),
    "https": ("http", True, 443),
    "grpc": ("grpc", False, GRPC_PORT),
    "grpcs": ("grpc", True, 443),
}
DEFAULT_URL = f"http://localhost:{HTTP_PORT}"


@dataclass(frozen=True)
class ServerAddress:
    """One server URL as the transports need it: `address` is host:port[/base-path] (tritonclient's form)."""

    url: str  # as the user wrote it
    protocol: str  # "http" or "grpc"
    tls: bool
    host: str
    port: int
    path: str = ""

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}{self.path}"


def split_urls(url: str | Sequence[str]) -> list[str]:
    """One URL, a comma-separated string of URLs, or a sequence of them -> the non-empty URLs."""
    return [u.strip() for u in (url.split(",") if isinstance(url, str) else url) if u and u.strip()]


def parse_server_url(url: str) -> ServerAddress:
    """`http://host[:port][/path]`, `https://`, `grpc://host[:port]`, `grpcs://`; the port defaults per scheme."""
    parts = urlsplit(url)
    if parts.scheme not in URL_SCHEMES or not parts.hostname:
        raise ValueError(f"bad server URL {url!r}: expected http://, https://, grpc:// or grpcs://host[:port]")
    protocol, tls, default_port = URL_SCHEMES[parts.scheme]
    path = parts.path.rstrip("/")
    if path and protocol == "grpc":
        raise ValueError(f"bad server URL {url!r}: a gRPC URL has no path")
    return ServerAddress(url, protocol, tls, parts.hostname, parts.port or default_port, path)


# --- model and file names ---
ENSEMBLE_MODEL = "fracscan"
STUDY_MODEL = "fracscan_study"
PREPROCESS_MODEL = "preprocess"
NORMALIZE_MODEL = "normalize"
AVERAGE_MODEL = "average"
THRESHOLD_MODEL = "threshold"

SPEC_FILE = "fracscan.toml"  # the ensemble spec as served
THRESHOLDS_FILE = "thresholds.json"  # per-region operating points
PROVENANCE_FILE = "provenance.json"  # demo / random weights / members' content hashes
CONFIG_FILE = "config.pbtxt"
ONNX_FILE = "model.onnx"
PYTHON_MODEL_FILE = "model.py"
MODEL_VERSION = "1"

# Ensemble config parameters that clients read (KServe model config).
PARAM_SPEC = "ensemble_spec"
PARAM_DESCRIPTION = "description"
PARAM_PROVENANCE = "provenance"
PARAM_HEADS = "heads"  # JSON {head: [class, ...]} in the spec's order (ensembles with heads only)
LABELS_SUFFIX = "_labels.txt"  # <head>_labels.txt: one class per line (Triton's label_filename convention)

UNKNOWN_REGION = "unknown"  # the region of a radiograph with no (supported) region: fallback threshold
RegionSource = Literal["user", "dicom", "model", "unknown"]
REGION_SOURCES: tuple[str, ...] = ("user", "dicom", "model", "unknown")  # model: a body-part head's class
Level = Literal["negative", "suspicious", "definite"]
LEVELS: tuple[str, ...] = ("negative", "suspicious", "definite")
NO_DEFINITE_THRESHOLD = -1.0  # DEFINITE_THRESHOLD when the region has none (a NaN would break strict JSON)
STUDY_RULES: tuple[str, ...] = ("max", "mean", "noisy_or")  # how view scores make a study score
DEFAULT_STUDY_RULE = "max"
NO_VIEW_SCORE = -1.0  # VIEW_SCORES of a view that failed (its VIEW_ERRORS says why)

BOX_COLUMNS = 5  # x0, y0, x1, y1, confidence in original pixels
VIEW_BOX_COLUMNS = 6  # view index, then the BOX_COLUMNS
BOX_PADDING = -1.0  # confidence of the rows that pad BOXES to a common length
GEOMETRY_LENGTH = 9  # fracscan.preprocess.Geometry as floats

# --- tensor names ---
IMAGE = "IMAGE"
REGION = "REGION"
FRAME = "FRAME"  # the plain S x S frame in [-1, 1], padding -1: [1, S, S]
PIXELS = "PIXELS"
GEOMETRY = "GEOMETRY"
REGION_USED = "REGION_USED"
REGION_SOURCE = "REGION_SOURCE"
SCORE = "SCORE"
MAP = "MAP"
MEMBER_SCORES = "MEMBER_SCORES"
FRACTURE = "FRACTURE"
THRESHOLD = "THRESHOLD"
FALLBACK = "FALLBACK"
BOXES = "BOXES"
LEVEL = "LEVEL"
DEFINITE_THRESHOLD = "DEFINITE_THRESHOLD"
QC = "QC"  # ensembles with heads: "" or the quality-control warnings, "; "-joined
MODEL_IDENTITY = "MODEL_IDENTITY"  # who answered: compact JSON of fracscan.provenance.ModelIdentity
QC_SEPARATOR = "; "  # joins several QC warnings in the QC tensor (and in the CLI's CSV cell and warning line)
DICOM_LABELS = "DICOM_LABELS"  # preprocess -> threshold: (laterality, body part) as "Keyword=VALUE" or ""
DICOM_LABEL_COUNT = 2

# The study model's answer (fracscan_study): one study, N views.
STUDY_SCORE = "STUDY_SCORE"
STUDY_FRACTURE = "STUDY_FRACTURE"
STUDY_THRESHOLD = "STUDY_THRESHOLD"
STUDY_LEVEL = "STUDY_LEVEL"
STUDY_DEFINITE_THRESHOLD = "STUDY_DEFINITE_THRESHOLD"
STUDY_FALLBACK = "STUDY_FALLBACK"
STUDY_RULE = "STUDY_RULE"
STUDY_CALIBRATED = "STUDY_CALIBRATED"  # false: no study thresholds, the image-level ones were applied
STUDY_VIEWS_USED = "STUDY_VIEWS_USED"
VIEW_SCORES = "VIEW_SCORES"
VIEW_THRESHOLDS = "VIEW_THRESHOLDS"  # each view's image-level threshold (NO_VIEW_SCORE for a failed view)
VIEW_LEVELS = "VIEW_LEVELS"
VIEW_REGIONS = "VIEW_REGIONS"
VIEW_ERRORS = "VIEW_ERRORS"  # "" for a view that was scored
VIEW_BOXES = "VIEW_BOXES"
STUDY_QC = "STUDY_QC"  # studies with heads: "" or the views' disagreements on a checked head, "; "-joined
VIEW_QC = "VIEW_QC"  # each view's QC as the ensemble answered it ("" for a failed view)

# A member model's own tensors (the ONNX graph's names: the same for every target).
MEMBER_INPUT = "image"
MEMBER_SCORE = "score"
MEMBER_MAP = "map"
MEMBER_HEAD_PREFIX = "head_"  # + head name: a member's softmax probabilities [K]

STUDY_PREFIX = "STUDY_"
VIEW_PREFIX = "VIEW_"
PROBS_SUFFIX = "_PROBS"
PASSED_SUFFIX = "_IN"  # see passed_through()


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: Datatype
    dims: tuple[int, ...]  # without the batch dimension; -1 = variable
    optional: bool = False


def member_model(index: int) -> str:
    return f"member_{index:02d}"


def member_score(index: int) -> str:
    """Member `index`'s score as the ensemble names it between steps."""
    return f"{SCORE}_{index:02d}"


def member_map(index: int) -> str:
    return f"{MAP}_{index:02d}"


def head_outputs(head: str) -> tuple[str, str]:
    """(top class, probabilities) output names of a classification head."""
    return head.upper(), f"{head.upper()}{PROBS_SUFFIX}"


def member_head(head: str) -> str:
    """A member's own (ONNX) output name for a head's probabilities."""
    return f"{MEMBER_HEAD_PREFIX}{head}"


def member_head_probs(index: int, head: str) -> str:
    """Member `index`'s head probabilities as the ensemble names them between steps."""
    return f"{head_outputs(head)[1]}_{index:02d}"


def study_head_outputs(head: str) -> tuple[str, str]:
    """(top class, probabilities) output names of a head's study answer (fracscan_study)."""
    top, probs = head_outputs(head)
    return f"{STUDY_PREFIX}{top}", f"{STUDY_PREFIX}{probs}"


def view_head_outputs(head: str) -> tuple[str, str]:
    """(top classes [N], probabilities [N, K]) output names of a head's per-view answers (fracscan_study)."""
    top, probs = head_outputs(head)
    return f"{VIEW_PREFIX}{top}", f"{VIEW_PREFIX}{probs}"


def labels_file(head: str) -> str:
    return f"{head}{LABELS_SUFFIX}"


Heads = tuple[tuple[str, int], ...]  # (head name, number of classes), in the spec's order


# --- the tensors of each model, given the spec's sizes ---

ENSEMBLE_INPUTS: tuple[Tensor, ...] = (
    Tensor(IMAGE, "BYTES", (1,)),
    Tensor(REGION, "BYTES", (1,), optional=True),
)


def preprocess_outputs(size: int, heads: Heads = ()) -> tuple[Tensor, ...]:
    out = (
        Tensor(FRAME, "FP32", (1, size, size)),
        Tensor(GEOMETRY, "FP32", (GEOMETRY_LENGTH,)),
        Tensor(REGION_USED, "BYTES", (1,)),
        Tensor(REGION_SOURCE, "BYTES", (1,)),
    )
    return out + ((Tensor(DICOM_LABELS, "BYTES", (DICOM_LABEL_COUNT,)),) if heads else ())


def normalize_inputs(size: int) -> tuple[Tensor, ...]:
    return (Tensor(FRAME, "FP32", (1, size, size)),)


def normalize_outputs(size: int, channels: int = 2) -> tuple[Tensor, ...]:
    return (Tensor(PIXELS, "FP32", (channels, size, size)),)


def member_inputs(size: int, channels: int = 2) -> tuple[Tensor, ...]:
    return (Tensor(MEMBER_INPUT, "FP32", (channels, size, size)),)


def member_outputs(map_size: int, has_map: bool, heads: Heads = ()) -> tuple[Tensor, ...]:
    out: tuple[Tensor, ...] = (Tensor(MEMBER_SCORE, "FP32", (1,)),)
    out += (Tensor(MEMBER_MAP, "FP32", (1, map_size, map_size)),) if has_map else ()
    return out + tuple(Tensor(member_head(h), "FP32", (k,)) for h, k in heads)


def average_inputs(members: int, map_members: tuple[int, ...], map_size: int, heads: Heads = ()) -> tuple[Tensor, ...]:
    scores = tuple(Tensor(member_score(i), "FP32", (1,)) for i in range(members))
    maps = tuple(Tensor(member_map(i), "FP32", (1, map_size, map_size)) for i in map_members)
    return (
        scores + maps + tuple(Tensor(member_head_probs(i, h), "FP32", (k,)) for h, k in heads for i in range(members))
    )


def head_probs_outputs(heads: Heads) -> tuple[Tensor, ...]:
    return tuple(Tensor(head_outputs(h)[1], "FP32", (k,)) for h, k in heads)


def average_outputs(members: int, map_size: int, has_map: bool, heads: Heads = ()) -> tuple[Tensor, ...]:
    out = (Tensor(SCORE, "FP32", (1,)), Tensor(MEMBER_SCORES, "FP32", (members,)))
    return out + ((Tensor(MAP, "FP32", (map_size, map_size)),) if has_map else ()) + head_probs_outputs(heads)


def passed_through(name: str) -> str:
    """The ensemble's name for an answer tensor on its way to the last step, which passes it on.

    Triton's ensemble scheduler cannot answer a request for a subset of outputs that leaves out
    every output of the last step ("unexpected deadlock, at least one output is not set"), so every
    ensemble output comes from the last step: earlier steps' answers reach it under these names.
    """
    return f"{name}{PASSED_SUFFIX}"


PASSED_ON: tuple[str, ...] = (SCORE, MEMBER_SCORES, REGION_USED, REGION_SOURCE)  # threshold passes these on


def passed_on(heads: Heads = ()) -> tuple[str, ...]:
    """What reaches `threshold` under passed-through names: PASSED_ON and each head's probabilities."""
    return PASSED_ON + tuple(t.name for t in head_probs_outputs(heads))


def threshold_inputs(members: int, map_size: int, has_map: bool, heads: Heads = ()) -> tuple[Tensor, ...]:
    out: tuple[Tensor, ...] = (
        Tensor(passed_through(SCORE), "FP32", (1,)),
        Tensor(passed_through(MEMBER_SCORES), "FP32", (members,)),
        Tensor(GEOMETRY, "FP32", (GEOMETRY_LENGTH,)),
        Tensor(passed_through(REGION_USED), "BYTES", (1,)),
        Tensor(passed_through(REGION_SOURCE), "BYTES", (1,)),
    )
    out += (Tensor(MAP, "FP32", (map_size, map_size)),) if has_map else ()
    if not heads:
        return out
    probs = tuple(Tensor(passed_through(t.name), "FP32", t.dims) for t in head_probs_outputs(heads))
    return out + probs + (Tensor(DICOM_LABELS, "BYTES", (DICOM_LABEL_COUNT,)),)


def head_answer_outputs(heads: Heads) -> tuple[Tensor, ...]:
    """Each head's top class and probabilities, then QC (nothing for an ensemble without heads)."""
    if not heads:
        return ()
    out: tuple[Tensor, ...] = ()
    for h, k in heads:
        top, probs = head_outputs(h)
        out += (Tensor(top, "BYTES", (1,)), Tensor(probs, "FP32", (k,)))
    return (*out, Tensor(QC, "BYTES", (1,)))


def ensemble_outputs(members: int, heads: Heads = ()) -> tuple[Tensor, ...]:
    """What one request to `fracscan` answers: the `threshold` step's outputs, in the README's order."""
    return _core_outputs(members) + head_answer_outputs(heads)


def _core_outputs(members: int) -> tuple[Tensor, ...]:
    return (
        Tensor(SCORE, "FP32", (1,)),
        Tensor(FRACTURE, "BOOL", (1,)),
        Tensor(THRESHOLD, "FP32", (1,)),
        Tensor(REGION_USED, "BYTES", (1,)),
        Tensor(REGION_SOURCE, "BYTES", (1,)),
        Tensor(FALLBACK, "BOOL", (1,)),
        Tensor(MEMBER_SCORES, "FP32", (members,)),
        Tensor(BOXES, "FP32", (-1, BOX_COLUMNS)),
        Tensor(LEVEL, "BYTES", (1,)),
        Tensor(DEFINITE_THRESHOLD, "FP32", (1,)),
        Tensor(MODEL_IDENTITY, "BYTES", (1,)),
    )


STUDY_INPUTS: tuple[Tensor, ...] = (  # the study model does not batch: dims are the whole tensor
    Tensor(IMAGE, "BYTES", (-1,)),
    Tensor(REGION, "BYTES", (1,), optional=True),
)


def study_outputs(heads: Heads = ()) -> tuple[Tensor, ...]:
    """What one request to `fracscan_study` answers: the study, then its views in request order; heads last."""
    return _study_core_outputs() + study_head_answer_outputs(heads)


def study_head_answer_outputs(heads: Heads) -> tuple[Tensor, ...]:
    """The study's and the views' head answers and QC (nothing for an ensemble without heads)."""
    if not heads:
        return ()
    study: tuple[Tensor, ...] = ()
    views: tuple[Tensor, ...] = ()
    for h, k in heads:
        top, probs = study_head_outputs(h)
        study += (Tensor(top, "BYTES", (1,)), Tensor(probs, "FP32", (k,)))
        top, probs = view_head_outputs(h)
        views += (Tensor(top, "BYTES", (-1,)), Tensor(probs, "FP32", (-1, k)))
    return (*study, Tensor(STUDY_QC, "BYTES", (1,)), *views, Tensor(VIEW_QC, "BYTES", (-1,)))


def _study_core_outputs() -> tuple[Tensor, ...]:
    return (
        Tensor(STUDY_SCORE, "FP32", (1,)),
        Tensor(STUDY_FRACTURE, "BOOL", (1,)),
        Tensor(STUDY_THRESHOLD, "FP32", (1,)),
        Tensor(STUDY_LEVEL, "BYTES", (1,)),
        Tensor(STUDY_DEFINITE_THRESHOLD, "FP32", (1,)),
        Tensor(STUDY_FALLBACK, "BOOL", (1,)),
        Tensor(STUDY_RULE, "BYTES", (1,)),
        Tensor(STUDY_CALIBRATED, "BOOL", (1,)),
        Tensor(STUDY_VIEWS_USED, "INT32", (1,)),
        Tensor(REGION_USED, "BYTES", (1,)),
        Tensor(VIEW_SCORES, "FP32", (-1,)),
        Tensor(VIEW_THRESHOLDS, "FP32", (-1,)),
        Tensor(VIEW_LEVELS, "BYTES", (-1,)),
        Tensor(VIEW_REGIONS, "BYTES", (-1,)),
        Tensor(VIEW_ERRORS, "BYTES", (-1,)),
        Tensor(VIEW_BOXES, "FP32", (-1, VIEW_BOX_COLUMNS)),
        Tensor(MODEL_IDENTITY, "BYTES", (1,)),
    )


STUDY_OUTPUT_NAMES: tuple[str, ...] = tuple(t.name for t in study_outputs())

# The names the SDK asks the ensemble for (any subset works: see passed_through()).
ENSEMBLE_OUTPUT_NAMES: tuple[str, ...] = tuple(t.name for t in ensemble_outputs(1))

RESERVED_NAMES: frozenset[str] = frozenset(
    {IMAGE, REGION, FRAME, PIXELS, GEOMETRY, REGION_USED, REGION_SOURCE, SCORE, MAP, MEMBER_SCORES, FRACTURE}
    | {THRESHOLD, FALLBACK, BOXES, LEVEL, DEFINITE_THRESHOLD, QC, DICOM_LABELS, MODEL_IDENTITY}
    | set(STUDY_OUTPUT_NAMES)
    | {STUDY_QC, VIEW_QC}
)
