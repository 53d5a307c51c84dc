"""Classification heads (Olczak et al. 2017) in the SDK, `fracscan predict` and `fracscan evaluate`.

The unit tests parse real tritonclient results (an HTTP response body, a gRPC ModelInferResponse)
shaped as the contract says; the end-to-end tests serve a random-init heads repository (the Olczak
demo spec) on the embedded server.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_png
from rich.console import Console

from fracscan import contract as c
from fracscan.cli import _predict_output as output
from fracscan.cli import predict as predict_module
from fracscan.cli.console import OutputFormat
from fracscan.client import AsyncFracScanClient, FracScanClient, HeadResult, Prediction, PredictionError
from fracscan.client._core import Request, parse_result
from fracscan.client.endpoints import Endpoint
from fracscan.client.heads import head_output_names, heads_from_config, heads_from_parameters
from fracscan.client.health import endpoint_info
from fracscan.client.sources import Payload
from fracscan.evaluation import (
    EvaluationError,
    cohen_kappa,
    evaluate_heads,
    head_report,
    kappa_from_confusion,
    read_labelled,
)

ROOT = Path(__file__).resolve().parent.parent
HEADS = {"laterality": ("left", "right"), "body_part": ("ankle", "wrist", "hand")}
QC_TEXT = "laterality: DICOM ImageLaterality is L, the laterality head says right (p = 0.97)"


def core_outputs(score: float = 0.8, region: str = "wrist", source: str = "dicom") -> dict[str, tuple[str, list]]:
    """The Jones contract's answer: name -> (datatype, values), batch of one."""
    return {
        c.SCORE: ("FP32", [score]),
        c.FRACTURE: ("BOOL", [score >= 0.5]),
        c.THRESHOLD: ("FP32", [0.5]),
        c.REGION_USED: ("BYTES", [region]),
        c.REGION_SOURCE: ("BYTES", [source]),
        c.FALLBACK: ("BOOL", [False]),
        c.MEMBER_SCORES: ("FP32", [score]),
        c.BOXES: ("FP32", [10.0, 20.0, 30.0, 40.0, 0.9]),
        c.LEVEL: ("BYTES", ["definite" if score >= 0.5 else "negative"]),
        c.DEFINITE_THRESHOLD: ("FP32", [0.7]),
    }


def head_outputs(qc: str = QC_TEXT) -> dict[str, tuple[str, list]]:
    lat, lat_probs = c.head_outputs("laterality")
    part, part_probs = c.head_outputs("body_part")
    return {
        lat: ("BYTES", ["right"]),
        lat_probs: ("FP32", [0.03, 0.97]),
        part: ("BYTES", ["wrist"]),
        part_probs: ("FP32", [0.1, 0.85, 0.05]),
        c.QC: ("BYTES", [qc]),
    }


def http_result(outputs: dict[str, tuple[str, list]]):
    """A tritonclient.http InferResult from the JSON body a KServe server answers."""
    import tritonclient.http

    shapes = {c.BOXES: [1, 1, c.BOX_COLUMNS]}
    body = {
        "model_name": c.ENSEMBLE_MODEL,
        "model_version": "1",
        "outputs": [
            {"name": n, "datatype": t, "shape": shapes.get(n, [1, len(v)]), "data": v} for n, (t, v) in outputs.items()
        ],
    }
    return tritonclient.http.InferResult.from_response_body(json.dumps(body).encode())


def grpc_result(outputs: dict[str, tuple[str, list]]):
    """A tritonclient.grpc InferResult from a ModelInferResponse with raw output contents."""
    import tritonclient.grpc
    from tritonclient.grpc import service_pb2
    from tritonclient.utils import serialize_byte_tensor

    response = service_pb2.ModelInferResponse(model_name=c.ENSEMBLE_MODEL, model_version="1")
    dtypes = {"FP32": np.float32, "BOOL": np.bool_}
    for name, (datatype, values) in outputs.items():
        shape = [1, 1, c.BOX_COLUMNS] if name == c.BOXES else [1, len(values)]
        response.outputs.add(name=name, datatype=datatype, shape=shape)
        if datatype == "BYTES":
            raw = serialize_byte_tensor(np.array([v.encode() for v in values], dtype=np.object_)).item()
        else:
            raw = np.asarray(values, dtype=dtypes[datatype]).tobytes()
        response.raw_output_contents.append(raw)
    return tritonclient.grpc.InferResult(response)


def request(label: str = "scan_07.dcm") -> Request:
    return Request(Payload(label, b"\x00" * 8, "dicom"), None, False)


def prediction(label: str, laterality: str, p_right: float, qc: tuple[str, ...] = (), heads: bool = True) -> Prediction:
    """A Prediction as the SDK builds it (the fields the CLI writes)."""
    answers = {}
    if heads:
        answers = {
            "laterality": HeadResult(laterality, {"left": 1.0 - p_right, "right": p_right}),
            "body_part": HeadResult("wrist", {"ankle": 0.1, "wrist": 0.8, "hand": 0.1}),
        }
    return Prediction(
        source=label,
        score=0.8,
        fracture=True,
        threshold=0.5,
        region="wrist",
        region_source="model",
        fallback=False,
        boxes=(),
        member_scores=(0.8,),
        member_spread=0.0,
        model_name=c.ENSEMBLE_MODEL,
        model_version="1",
        latency_s=0.01,
        heads=answers,
        qc=qc,
    )


@pytest.mark.parametrize("make", [http_result, grpc_result], ids=["http", "grpc"])
def test_the_head_outputs_become_head_results_and_qc(make):
    result = make({**core_outputs(source="model"), **head_outputs()})
    p = parse_result(result, request(), c.ENSEMBLE_MODEL, 0.01, HEADS)
    assert list(p.heads) == ["laterality", "body_part"]
    assert p.heads["laterality"].label == "right" and list(p.heads["laterality"].probs) == ["left", "right"]
    assert p.heads["laterality"].probs["right"] == pytest.approx(0.97) and p.heads["laterality"].confidence > 0.9
    assert list(p.heads["body_part"].probs) == ["ankle", "wrist", "hand"]
    assert p.region_source == "model" and p.qc == (QC_TEXT,)
    d = json.loads(json.dumps(p.to_dict()))
    assert d["heads"]["body_part"]["label"] == "wrist" and d["qc"] == [QC_TEXT]

    two = make({**core_outputs(), **head_outputs(qc=f"{QC_TEXT}; body_part: DICOM BodyPartExamined is ANKLE, ...")})
    assert len(parse_result(two, request(), c.ENSEMBLE_MODEL, 0.01, HEADS).qc) == 2
    clean = make({**core_outputs(), **head_outputs(qc="")})
    assert parse_result(clean, request(), c.ENSEMBLE_MODEL, 0.01, HEADS).qc == ()


@pytest.mark.parametrize("make", [http_result, grpc_result], ids=["http", "grpc"])
def test_an_ensemble_without_heads_answers_as_before(make):
    p = parse_result(make(core_outputs()), request(), c.ENSEMBLE_MODEL, 0.01, {})
    assert p.heads == {} and p.qc == ()
    assert "heads" not in p.to_dict() and "qc" not in p.to_dict()
    # Heads known but not in the answer (asked before the client knew them): left out, not an error.
    assert parse_result(make(core_outputs()), request(), c.ENSEMBLE_MODEL, 0.01, HEADS).heads == {}


def test_probabilities_that_do_not_fit_the_classes_are_a_server_error():
    outputs = {**core_outputs(), **head_outputs()}
    outputs[c.head_outputs("body_part")[1]] = ("FP32", [0.5, 0.5])
    with pytest.raises(ValueError, match="2 values for the 3 classes"):
        parse_result(http_result(outputs), request(), c.ENSEMBLE_MODEL, 0.01, HEADS)


def test_the_request_asks_for_the_heads_only_when_the_ensemble_has_them():
    import tritonclient.http

    _, plain = request().tensors("http")
    assert [o.name() for o in plain] == list(c.ENSEMBLE_OUTPUT_NAMES)  # the Jones request, unchanged
    _, with_heads = request().tensors("http", HEADS)
    lat, lat_probs = c.head_outputs("laterality")
    part, part_probs = c.head_outputs("body_part")
    assert [o.name() for o in with_heads] == [*c.ENSEMBLE_OUTPUT_NAMES, lat, lat_probs, part, part_probs, c.QC]
    assert head_output_names({}) == ()
    assert all(isinstance(o, tritonclient.http.InferRequestedOutput) for o in with_heads)


def test_the_heads_come_from_the_ensemble_config_parameter():
    parameters = {c.PARAM_HEADS: {"string_value": json.dumps({k: list(v) for k, v in HEADS.items()})}}
    assert heads_from_parameters(parameters) == HEADS
    assert heads_from_config({"parameters": parameters}) == HEADS  # http
    assert heads_from_config({"config": {"parameters": parameters}}) == HEADS  # grpc as_json
    assert heads_from_config({"parameters": {c.PARAM_SPEC: {"string_value": "demo"}}}) == {}
    with pytest.raises(ValueError, match=c.PARAM_HEADS):
        heads_from_parameters({c.PARAM_HEADS: {"string_value": '["left", "right"]'}})

    ep = Endpoint("http://x:8000", "http", False, "x:8000")
    info = endpoint_info(
        ep,
        c.ENSEMBLE_MODEL,
        live=True,
        ready=True,
        metadata={},
        index=[],
        model_ready=True,
        config={"parameters": parameters},
    )
    assert info["ensemble"]["heads"] == {"laterality": ["left", "right"], "body_part": ["ankle", "wrist", "hand"]}
    plain = endpoint_info(ep, c.ENSEMBLE_MODEL, live=True, ready=True, metadata={}, index=[], model_ready=True)
    assert "heads" not in plain["ensemble"]


def test_predict_rows_gain_a_column_per_head_and_qc():
    heads = tuple(HEADS)
    ok = prediction("a/left_wrist.dcm", "right", 0.97, qc=(QC_TEXT,))
    failed = PredictionError("a/broken.png", "not an image", "input")
    row = output.result_row(ok, heads)
    assert (row["laterality"], row["laterality_p"], row["body_part"], row["body_part_p"]) == (
        "right",
        0.97,
        "wrist",
        0.8,
    )
    assert row["qc"] == [QC_TEXT] and row["laterality_probs"] == {"left": pytest.approx(0.03), "right": 0.97}
    assert list(row)[-1] == "error"
    bad = output.result_row(failed, heads)
    assert set(bad) == set(row) and bad["laterality"] is None and bad["qc"] == []
    # Without heads the rows are what they always were.
    assert output.result_row(prediction("b.png", "", 0, heads=False)) == output.result_row(
        prediction("b.png", "", 0, heads=False), ()
    )
    assert not {"qc", "laterality"} & set(output.result_row(prediction("b.png", "", 0, heads=False)))

    stream = io.StringIO()
    writer = output.Writer(OutputFormat.csv, stream, append=False, heads=heads)
    writer.write(row)
    writer.write(bad)
    rows = list(csv.DictReader(io.StringIO(stream.getvalue())))
    assert list(rows[0]) == [
        *output.CSV_FIELDS[:-1],
        "laterality",
        "laterality_p",
        "body_part",
        "body_part_p",
        "qc",
        "error",
    ]
    assert rows[0]["laterality"] == "right" and float(rows[0]["laterality_p"]) == 0.97 and rows[0]["qc"] == QC_TEXT
    assert rows[1]["laterality"] == "" and rows[1]["status"] == "error"
    plain = io.StringIO()
    output.Writer(OutputFormat.csv, plain, append=False).write(
        output.result_row(prediction("b.png", "", 0, heads=False))
    )
    assert plain.getvalue().splitlines()[0] == ",".join(output.CSV_FIELDS)

    console = Console(file=io.StringIO(), width=200)
    console.print(output.results_table([row, bad], heads))
    text = console.file.getvalue()
    assert "laterality" in text and "body part" in text and "right 0.97" in text and "wrist 0.80" in text

    with pytest.raises(ValueError, match="model"):
        output.check_head_names(("laterality", "model"))
    output.check_head_names(heads)


def test_qc_warnings_name_the_file_once_each(capsys):
    scored = predict_module.Scored(started=0.0)
    scored.qc.append(("scans/left_wrist.dcm", (QC_TEXT, "body_part: DICOM BodyPartExamined is ANKLE")))
    predict_module.summarize(scored, written=1, skipped=0)
    lines = [line for line in capsys.readouterr().err.splitlines() if "QC" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: QC scans/left_wrist.dcm: laterality: DICOM")
    assert "; body_part: DICOM BodyPartExamined is ANKLE" in lines[0]


def write_predictions(path: Path, predicted: list[tuple[str, str]]) -> None:
    """JSONL as `fracscan predict` writes it, for (file name, laterality) pairs."""
    rows = [
        output.result_row(prediction(name, lat, 0.9 if lat == "right" else 0.1), tuple(HEADS))
        for name, lat in predicted
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def kappa_by_hand(truth: list[str], predicted: list[str]) -> float:
    classes = sorted(set(truth) | set(predicted))
    n = len(truth)
    observed = sum(t == p for t, p in zip(truth, predicted, strict=True)) / n
    expected = sum((truth.count(k) / n) * (predicted.count(k) / n) for k in classes)
    return (observed - expected) / (1 - expected)


def test_evaluate_reports_accuracy_and_kappa_per_head(tmp_path):
    predicted = [("a.dcm", "left"), ("b.dcm", "left"), ("c.dcm", "right"), ("d.dcm", "right"), ("e.dcm", "left")]
    predicted += [("f.dcm", "right")]
    write_predictions(tmp_path / "p.jsonl", predicted)
    labels = "source,fracture,laterality\na.dcm,1,left\nb.dcm,0,right\nc.dcm,1,Right\nd.dcm,0,right\ne.dcm,1,left\nf.dcm,0,\n"
    (tmp_path / "labels.csv").write_text(labels)
    labelled = read_labelled(tmp_path / "p.jsonl", tmp_path / "labels.csv")
    assert labelled.heads == {"laterality": ("left", "right")}  # body_part has no column: not evaluated
    report = evaluate_heads(labelled.matched.cases, labelled.heads)
    truth, pred = ["left", "right", "right", "right", "left"], ["left", "left", "right", "right", "left"]  # f: no label
    m = report["laterality"]
    assert m["n"] == 5 and m["correct"] == 4 and m["accuracy"] == pytest.approx(4 / 5)
    # p_o = 4/5; p_e = (2/5)(3/5) + (3/5)(2/5) = 12/25; kappa = (4/5 - 12/25) / (1 - 12/25) = 8/13
    assert m["kappa"] == pytest.approx(8 / 13) == pytest.approx(kappa_by_hand(truth, pred))
    assert m["confusion"] == [[2, 0], [1, 2]] and set(report) == {"laterality"}

    (tmp_path / "bad.csv").write_text("source,fracture,laterality\na.dcm,1,left\nb.dcm,0,up\n")
    with pytest.raises(EvaluationError, match=r"bad\.csv line 3: laterality = 'up' is not a class") as info:
        read_labelled(tmp_path / "p.jsonl", tmp_path / "bad.csv")
    assert "left, right" in str(info.value)


def test_evaluate_command_prints_and_writes_the_heads(tmp_path):
    write_predictions(tmp_path / "p.jsonl", [("a.dcm", "left"), ("b.dcm", "right"), ("c.dcm", "right")])
    (tmp_path / "labels.csv").write_text("source,fracture,laterality\na.dcm,1,left\nb.dcm,0,right\nc.dcm,1,left\n")
    as_json = run_cli(
        "evaluate", str(tmp_path / "p.jsonl"), str(tmp_path / "labels.csv"), "--format", "json", "--bootstrap", "0"
    )
    assert as_json.returncode == 0, as_json.stderr
    m = json.loads(as_json.stdout)["heads"]["laterality"]
    assert (m["n"], m["accuracy"]) == (3, pytest.approx(2 / 3))
    assert m["kappa"] == pytest.approx(kappa_by_hand(["left", "right", "left"], ["left", "right", "right"]))
    table = run_cli("evaluate", str(tmp_path / "p.jsonl"), str(tmp_path / "labels.csv"), "--bootstrap", "0")
    assert table.returncode == 0 and "classification heads" in table.stdout and "laterality" in table.stdout
    (tmp_path / "plain.csv").write_text("source,fracture\na.dcm,1\nb.dcm,0\n")
    plain = run_cli(
        "evaluate", str(tmp_path / "p.jsonl"), str(tmp_path / "plain.csv"), "--format", "json", "--bootstrap", "0"
    )
    assert plain.returncode == 0 and "heads" not in json.loads(plain.stdout)


@pytest.mark.parametrize("seed", range(6))
def test_the_one_kappa_matches_scikit_learn_for_any_number_of_classes(seed):
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(seed)
    classes = ("ankle", "wrist", "hand", "scaphoid", "thumb", "finger")[: 2 + seed % 5]
    truth = rng.choice(classes, 40).tolist()
    predicted = [t if rng.random() < 0.6 else str(rng.choice(classes)) for t in truth]
    expected = cohen_kappa_score(truth, predicted, labels=list(classes))
    assert cohen_kappa(truth, predicted, classes) == pytest.approx(expected, abs=1e-12)
    assert cohen_kappa(truth, predicted, classes) == pytest.approx(kappa_by_hand(truth, predicted), abs=1e-12)
    y, d = rng.random(30) < 0.4, rng.random(30) < 0.5  # the binary fracture decisions use the same one
    assert cohen_kappa(y, d) == pytest.approx(cohen_kappa_score(y, d), abs=1e-12)


def test_kappa_by_hand_and_where_it_is_undefined():
    # p_o = 3/4, p_e = (2/4)(1/4) + (2/4)(3/4) = 1/2: kappa = (3/4 - 1/2) / (1 - 1/2) = 1/2
    assert cohen_kappa(["a", "a", "b", "b"], ["a", "b", "b", "b"], ("a", "b")) == pytest.approx(0.5)
    assert kappa_from_confusion([[1, 1], [0, 2]]) == pytest.approx(0.5)
    assert cohen_kappa(["a", "b", "c"], ["a", "b", "c"], ("a", "b", "c")) == 1.0
    assert cohen_kappa(["a", "a"], ["a", "a"], ("a", "b")) is None  # one class in both: chance agreement 1
    assert cohen_kappa([], [], ("a", "b")) is None and cohen_kappa([True, True], [True, True]) is None
    with pytest.raises(ValueError, match="'up' is not one of the classes"):
        cohen_kappa(["left"], ["up"], ("left", "right"))

    report = head_report(["left", "right", "right"], ["left", "left", "right"], ("left", "right"))
    assert (report["n"], report["correct"], report["confusion"]) == (3, 2, [[1, 0], [1, 1]])
    assert report["accuracy"] == pytest.approx(2 / 3) and len(report["accuracy_ci"]) == 2
    assert report["kappa"] == pytest.approx(kappa_by_hand(["left", "right", "right"], ["left", "left", "right"]))
    assert head_report([], [], ("left", "right"))["accuracy"] is None


def test_a_free_text_column_may_differ_between_the_box_rows_of_a_source(tmp_path):
    write_predictions(tmp_path / "p.jsonl", [("a.dcm", "left"), ("b.dcm", "right")])
    header = "source,fracture,x0,y0,x1,y1,note,laterality\n"
    rows = "a.dcm,1,1,2,3,4,radius,left\na.dcm,1,5,6,7,8,ulna styloid,left\nb.dcm,0,,,,,,right\n"
    (tmp_path / "labels.csv").write_text(header + rows)
    labelled = read_labelled(tmp_path / "p.jsonl", tmp_path / "labels.csv")
    a = next(r for r in labelled.matched.cases if r.source == "a.dcm")
    assert a.label_boxes.shape == (2, 4) and a.heads == {"laterality": ("left", "left")}
    assert evaluate_heads(labelled.matched.cases, labelled.heads)["laterality"]["accuracy"] == 1.0
    assert (
        run_cli("evaluate", str(tmp_path / "p.jsonl"), str(tmp_path / "labels.csv"), "--bootstrap", "0").returncode == 0
    )

    # A head's label is not free text: box rows that disagree on it are an error naming both lines.
    (tmp_path / "bad.csv").write_text(header + rows.replace("ulna styloid,left", "ulna styloid,right"))
    with pytest.raises(
        EvaluationError, match=r"bad\.csv line 3: 'a\.dcm' has laterality = 'right' here but 'left' on line 2"
    ):
        read_labelled(tmp_path / "p.jsonl", tmp_path / "bad.csv")


def test_evaluate_by_study_says_the_heads_are_evaluated_per_image_only(tmp_path):
    rows = [
        {"kind": "study", "study": f"s{i}", "source": f"s{i}", "status": "ok", "score": 0.2 + 0.2 * i}
        | {"fracture": i >= 2, "rule": "max", "region": "wrist"}
        for i in range(4)
    ]
    (tmp_path / "studies.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    labels = "study,fracture,region,laterality\n" + "".join(f"s{i},{int(i % 2)},wrist,left\n" for i in range(4))
    (tmp_path / "labels.csv").write_text(labels)
    args = ("evaluate", str(tmp_path / "studies.jsonl"), "--by-study", "--format", "json", "--bootstrap", "0")
    result = run_cli(*args[:2], str(tmp_path / "labels.csv"), *args[2:])
    assert result.returncode == 0, result.stderr
    warning = " ".join(line for line in result.stderr.split("\n") if line.strip())
    assert "labels column(s) laterality are not evaluated" in warning and "per image only" in warning, warning
    assert "heads" not in json.loads(result.stdout)
    (tmp_path / "plain.csv").write_text(labels.replace(",laterality", "").replace(",left", ""))
    plain = run_cli(*args[:2], str(tmp_path / "plain.csv"), *args[2:])
    assert plain.returncode == 0 and "per image only" not in plain.stderr


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "fracscan.cli", *args], capture_output=True, text=True, timeout=300, env=env
    )


# --- end to end: a heads repository served on the embedded server ------------------------------------------


@pytest.fixture(scope="module")
def heads_server(tmp_path_factory):
    """A random-init repository of the Olczak demo spec, served, its QC at confidence 0.5: the two-class
    laterality head is always that sure, so a DICOM ImageLaterality that contradicts it gets the warning."""
    pytest.importorskip("torch")  # the export extra
    from fracscan.server import EmbeddedServer

    repo = tmp_path_factory.mktemp("olczak") / "repository"
    spec = repo.parent / "olczak.toml"
    spec.write_text(
        (ROOT / "demo" / "olczak.toml").read_text().replace("check_confidence = 0.9", "check_confidence = 0.5")
    )
    built = run_cli("export", "--spec", str(spec), "--random-init", "-o", str(repo))
    assert built.returncode == 0, f"cannot export a heads repository:\n{built.stderr[-2000:]}"
    config = (repo / c.ENSEMBLE_MODEL / c.CONFIG_FILE).read_text()
    assert f'"{c.PARAM_HEADS}"' in config, f"the exported ensemble config has no {c.PARAM_HEADS!r} parameter"
    with EmbeddedServer(repo, log_path=repo.parent / "server.log") as server:
        yield server


def test_served_heads_reach_the_sdk_the_cli_and_evaluate(heads_server, tmp_path):
    spec_heads = {
        "laterality": ("left", "right"),
        "body_part": ("ankle", "wrist", "hand"),
        "view": ("frontal", "lateral", "oblique"),
    }
    images = []
    for i in range(3):
        images.append(tmp_path / f"case_{i}.png")
        images[-1].write_bytes(synthetic_png(200 + i))

    async def predict_async(url: str) -> Prediction:
        async with AsyncFracScanClient(url) as client:
            return await client.predict(images[0])  # the first request learns the heads

    answers = []
    for url in (heads_server.http_url, heads_server.grpc_url):
        with FracScanClient(url) as client:
            assert client.heads() == spec_heads
            answers.append(client.predict(images[0]))
        with FracScanClient(url) as client:
            answers.append(client.predict(images[0]))  # no heads() first: the first request learns them
            assert client.heads() == spec_heads
        answers.append(asyncio.run(predict_async(url)))
    for p in answers:
        assert {h: tuple(r.probs) for h, r in p.heads.items()} == spec_heads
        assert {h: r.label for h, r in p.heads.items()} == {h: r.label for h, r in answers[0].heads.items()}
        for result in p.heads.values():
            assert math.isclose(sum(result.probs.values()), 1.0, abs_tol=1e-4) and result.label == max(
                result.probs, key=result.probs.get
            )
        assert p.region_source in c.REGION_SOURCES and isinstance(p.qc, tuple)

    health = run_cli("health", "--url", heads_server.http_url, "--json")
    assert json.loads(health.stdout)["ensemble"]["heads"] == {h: list(k) for h, k in spec_heads.items()}

    jsonl = run_cli("predict", *map(str, images), "--url", heads_server.http_url, "--format", "jsonl")
    assert jsonl.returncode == 0, jsonl.stderr
    rows = [json.loads(line) for line in jsonl.stdout.splitlines()]
    for row in rows:
        for head, classes in spec_heads.items():
            assert row[head] in classes and row[f"{head}_p"] == max(row[f"{head}_probs"].values())
        assert isinstance(row["qc"], list)
    out_csv = tmp_path / "out.csv"
    assert (
        run_cli(
            "predict", *map(str, images), "--url", heads_server.http_url, "--format", "csv", "-o", str(out_csv)
        ).returncode
        == 0
    )
    table = list(csv.DictReader(out_csv.open()))
    assert [r["laterality"] for r in table] == [r["laterality"] for r in rows] and "qc" in table[0]

    (tmp_path / "p.jsonl").write_text(jsonl.stdout)
    truth = ["left", "right", "left"]
    labels = "source,fracture,laterality\n" + "".join(f"{img},0,{t}\n" for img, t in zip(images, truth, strict=True))
    (tmp_path / "labels.csv").write_text(labels)
    report = run_cli(
        "evaluate", str(tmp_path / "p.jsonl"), str(tmp_path / "labels.csv"), "--format", "json", "--bootstrap", "0"
    )
    assert report.returncode == 0, report.stderr
    m = json.loads(report.stdout)["heads"]["laterality"]
    predicted = [r["laterality"] for r in rows]
    correct = sum(t == p for t, p in zip(truth, predicted, strict=True))
    assert m["n"] == 3 and m["accuracy"] == pytest.approx(correct / 3)
    if len(set(truth) | set(predicted)) > 1:
        assert m["kappa"] == pytest.approx(kappa_by_hand(truth, predicted))


def ensemble_inferences(server, at_least: int = 0) -> int:
    """The ensemble's successful inferences (Triton's statistics), once at least `at_least` and settled:
    Triton counts a request just after its answer went out."""
    import time

    import tritonclient.http

    client = tritonclient.http.InferenceServerClient(server.http_url.removeprefix("http://"))

    def count() -> int:
        stats = client.get_inference_statistics(c.ENSEMBLE_MODEL)["model_stats"][0]
        return int(stats["inference_stats"]["success"]["count"])

    try:
        deadline = time.monotonic() + 5
        while count() < at_least and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # any request sent twice has been counted by now
        return count()
    finally:
        client.close()


def test_predict_many_reads_the_heads_first_and_sends_each_image_once(heads_server, tmp_path):
    images = []
    for i in range(5):
        images.append(tmp_path / f"many_{i}.png")
        images[-1].write_bytes(synthetic_png(300 + i))

    def predict_many(url: str) -> list:
        with FracScanClient(url) as client:
            return list(client.predict_many(images, concurrency=3))

    async def predict_many_async(url: str) -> list:
        async with AsyncFracScanClient(url) as client:
            return [r async for r in client.predict_many(images, concurrency=3)]

    for run in (
        lambda: predict_many(heads_server.http_url),
        lambda: asyncio.run(predict_many_async(heads_server.grpc_url)),
    ):
        before = ensemble_inferences(heads_server)
        results = run()
        assert all(r.ok and set(r.heads) == {"laterality", "body_part", "view"} for r in results)
        assert ensemble_inferences(heads_server, before + len(images)) == before + len(images)


def test_decode_on_client_sends_dicom_as_it_is_to_an_ensemble_with_heads(heads_server, tmp_path):
    """The server's QC reads ImageLaterality (so the warning comes either way), and BodyPartExamined."""
    import pydicom

    from fracscan.client.sources import read_source
    from fracscan.demo.synthetic import make_case, write_dicom

    dicom = write_dicom(make_case(3, region="wrist", shape=(420, 300)), tmp_path / "wrist.dcm", body_part="WRIST")
    with FracScanClient(heads_server.http_url) as client:
        said = client.predict(dicom).heads["laterality"].label
    ds = pydicom.dcmread(dicom)
    ds.ImageLaterality = "R" if said == "left" else "L"  # contradicts the head
    ds.save_as(dicom, enforce_file_format=True)
    png = tmp_path / "plain.png"
    png.write_bytes(synthetic_png(310))
    assert read_source(dicom, True).kind == "npy" and read_source(dicom, True, send_dicom=True).kind == "dicom"
    assert read_source(png, True, send_dicom=True).kind == "npy"  # no DICOM attributes: decoded here as before

    for url in (heads_server.http_url, heads_server.grpc_url):
        with FracScanClient(url) as server_side, FracScanClient(url, decode_on_client=True) as client_side:
            for path in (dicom, png):
                a, b = server_side.predict(path), client_side.predict(path)  # client_side: no heads() first
                assert abs(a.score - b.score) <= 1e-5
                assert (a.region, a.region_source, a.qc, a.sop_instance_uid) == (
                    b.region,
                    b.region_source,
                    b.qc,
                    b.sop_instance_uid,
                )
                assert {h: r.label for h, r in a.heads.items()} == {h: r.label for h, r in b.heads.items()}
                for head, result in a.heads.items():
                    assert b.heads[head].probs == pytest.approx(result.probs, abs=1e-5)
            decoded = client_side.predict(dicom)
            assert decoded.region_source == "dicom" and f"says {said}" in decoded.qc[0], decoded.qc
            assert client_side.predict(dicom, region="hand").region_source == "user"

    async def decoded_async() -> Prediction:
        async with AsyncFracScanClient(heads_server.http_url, decode_on_client=True) as client:
            return await client.predict(dicom)

    assert asyncio.run(decoded_async()).qc == decoded.qc
