"""Triton python-backend adapters over `fracscan.pipeline`.

Each `model.py` in a generated repository is one line that imports one of these classes as
`TritonPythonModel`. They translate tensors and errors; the algorithm lives in the library.
A bad input becomes an INVALID_ARG error response for that request: no exception escapes
`execute`, so the stub never crashes on input.
"""

from __future__ import annotations

import asyncio
import itertools
import traceback
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils  # only importable inside the Triton python stub

from fracscan import contract as c
from fracscan import provenance
from fracscan.heads import average_head_probs, resolve_heads
from fracscan.onnxrt import ort_session
from fracscan.pipeline import InputError, MemberOutputs, combine, normalize, prepare_frame, run_member_with_heads
from fracscan.postprocess import decide
from fracscan.preprocess import Geometry
from fracscan.spec import load_spec
from fracscan.study import StudyError, decide_study, study_heads
from fracscan.thresholds import Thresholds, read_thresholds_json


def _error(step: str, exc: BaseException, invalid_input: bool) -> pb_utils.InferenceResponse:
    code = pb_utils.TritonError.INVALID_ARG if invalid_input else pb_utils.TritonError.INTERNAL
    message = str(exc) if isinstance(exc, InputError) else f"{step}: {type(exc).__name__}: {exc}"
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))


def _input(request, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class _Base:
    step = "model"

    def initialize(self, args):
        self.model_dir = Path(args["model_repository"])
        self.repository = self.model_dir.parent
        self.spec = load_spec(self.repository / c.SPEC_FILE)

    def execute(self, requests):
        return [self._answer(request, self.handle) for request in requests]

    def _answer(self, request, handle):
        try:
            return handle(request)
        except Exception as exc:
            return self._failed(exc)

    def _failed(self, exc: Exception) -> pb_utils.InferenceResponse:
        if isinstance(exc, InputError):
            return _error(self.step, exc, invalid_input=True)
        pb_utils.Logger.log_error(f"{self.step}: {traceback.format_exc()}")  # never let one request take the stub down
        return _error(self.step, exc, invalid_input=False)


def _texts(rows: list[list[str]]) -> np.ndarray:
    return np.array([[v.encode() for v in row] for row in rows], dtype=np.object_)


def _load_identity(repository: Path) -> tuple[Thresholds, provenance.ModelIdentity]:
    """The thresholds to apply and the identity that names them, from one reading of thresholds.json."""
    path = repository / c.THRESHOLDS_FILE
    raw = read_thresholds_json(path)
    return Thresholds.from_json(raw, str(path)), provenance.read(repository, thresholds=raw).identity


class PreprocessModel(_Base):
    """IMAGE (bytes) [+ REGION] -> FRAME [1, S, S], GEOMETRY [9], REGION_USED, REGION_SOURCE [, DICOM_LABELS [2]].

    DICOM_LABELS (what DICOM states, for the heads' quality control) only when the spec has heads.
    """

    step = "preprocess"

    def handle(self, request):
        images = _input(request, c.IMAGE)
        regions = _input(request, c.REGION)
        frames, geometry, used, source, stated = [], [], [], [], []
        for i, item in enumerate(images.reshape(len(images), -1)[:, 0]):
            requested = _text(regions.reshape(len(regions), -1)[i, 0]).strip() if regions is not None else ""
            try:
                prepared = prepare_frame(bytes(item), requested or None, self.spec)
            except InputError as exc:
                prefix = f"image {i}: " if len(images) > 1 else ""
                raise InputError(f"{prefix}{exc}") from None
            frames.append(prepared.frame)
            geometry.append(prepared.geometry.to_array())
            used.append([prepared.region])
            source.append([prepared.region_source])
            stated.append(list(prepared.stated))
        outputs = [
            pb_utils.Tensor(c.FRAME, np.stack(frames)),
            pb_utils.Tensor(c.GEOMETRY, np.stack(geometry)),
            pb_utils.Tensor(c.REGION_USED, _texts(used)),
            pb_utils.Tensor(c.REGION_SOURCE, _texts(source)),
        ]
        if self.spec.heads:
            outputs.append(pb_utils.Tensor(c.DICOM_LABELS, _texts(stated)))
        return pb_utils.InferenceResponse(outputs)


class NormalizeModel(_Base):
    """FRAME [1, S, S] -> PIXELS [channels, S, S] (plain, LCN; plain only when lcn = false) with the CPU path.

    The GPU targets serve the ONNX graph of `fracscan.export.normalize` in this model's place.
    """

    step = "normalize"

    def handle(self, request):
        return pb_utils.InferenceResponse([pb_utils.Tensor(c.PIXELS, normalize(_input(request, c.FRAME), self.spec))])


class MemberModel(_Base):
    """image [channels, S, S] -> score [1] (+ map [1, S/8, S/8]) (+ head_<name> [K] per head) with ONNX Runtime.

    Tensor names are the ONNX graph's, so the ensemble wiring is the same for every target.

    Dynamic batching hands several requests to one `execute`: they run as one ONNX batch.
    """

    step = "member"

    def initialize(self, args):
        super().initialize(args)
        self.step = self.model_dir.name
        self.session = ort_session(self.model_dir / args["model_version"] / c.ONNX_FILE)
        self.heads = [h.name for h in self.spec.heads]

    def execute(self, requests):
        try:
            batches = [_input(r, c.MEMBER_INPUT) for r in requests]
            out = run_member_with_heads(self.session, np.concatenate(batches), self.heads)
        except Exception:
            return super().execute(requests)  # fall back to one request at a time, with errors
        bounds = np.cumsum([0] + [len(b) for b in batches])
        return [_member_response(out, slice(a, b)) for a, b in itertools.pairwise(bounds)]

    def handle(self, request):
        out = run_member_with_heads(self.session, _input(request, c.MEMBER_INPUT), self.heads)
        return _member_response(out, slice(None))


def _member_response(out: MemberOutputs, rows: slice):
    outputs = [pb_utils.Tensor(c.MEMBER_SCORE, out.scores[rows, None].astype(np.float32))]
    if out.maps is not None:
        outputs.append(pb_utils.Tensor(c.MEMBER_MAP, out.maps[rows, None].astype(np.float32)))
    for head, probs in out.heads.items():
        outputs.append(pb_utils.Tensor(c.member_head(head), np.ascontiguousarray(probs[rows], dtype=np.float32)))
    return pb_utils.InferenceResponse(outputs)


class AverageModel(_Base):
    """SCORE_xx [1], MAP_xx [1, h, w] -> SCORE [1], MEMBER_SCORES [M], MAP [h, w]; heads: the members' mean."""

    step = "average"

    def handle(self, request):
        members = range(len(self.spec.members))
        scores = np.stack([_input(request, c.member_score(i)).reshape(-1) for i in members], axis=1)
        maps = [_input(request, c.member_map(i)) for i in self.spec.map_members]
        out_scores, out_maps = [], []
        for b in range(scores.shape[0]):
            score, prob_map = combine(list(scores[b]), [m[b] for m in maps])
            out_scores.append([score])
            if prob_map is not None:
                out_maps.append(prob_map)
        outputs = [
            pb_utils.Tensor(c.SCORE, np.asarray(out_scores, dtype=np.float32)),
            pb_utils.Tensor(c.MEMBER_SCORES, scores.astype(np.float32)),
        ]
        if out_maps:
            outputs.append(pb_utils.Tensor(c.MAP, np.stack(out_maps).astype(np.float32)))
        for head in self.spec.heads:
            probs = [_input(request, c.member_head_probs(i, head.name)) for i in members]
            averaged = np.stack([average_head_probs([p[b] for p in probs]) for b in range(scores.shape[0])])
            outputs.append(pb_utils.Tensor(c.head_outputs(head.name)[1], averaged))
        return pb_utils.InferenceResponse(outputs)


class ThresholdModel(_Base):
    """The last step: decides (FRACTURE, THRESHOLD, FALLBACK, BOXES [-1, 5], LEVEL, DEFINITE_THRESHOLD) and
    passes the earlier steps' answers on (SCORE, MEMBER_SCORES, REGION_USED, REGION_SOURCE), so that
    every ensemble output comes from this step (see `contract.passed_through`).

    With heads it first resolves them (`fracscan.heads.resolve_heads`: top classes, QC against
    DICOM_LABELS, the region from the body-part head when nobody named one), decides with the
    resolved region and answers REGION_USED / REGION_SOURCE as resolved, each head's top class and
    probabilities (`contract.head_outputs`) and QC.

    Thresholds are read from thresholds.json at load; the file is swapped without touching
    the members (see `fracscan calibrate`). Every answer carries MODEL_IDENTITY, the identity of
    the provenance and the thresholds read then (`_load_identity`).
    """

    step = "threshold"

    def initialize(self, args):
        super().initialize(args)
        self.thresholds, self.identity = _load_identity(self.repository)
        pb_utils.Logger.log_info(f"threshold: serving {self.identity.compact()}")

    def handle(self, request):
        passed = {name: _input(request, c.passed_through(name)) for name in c.passed_on(self.spec.head_dims)}
        scores = passed[c.SCORE].reshape(-1)
        regions = [_text(v) for v in passed[c.REGION_USED].reshape(-1)]
        sources = [_text(v) for v in passed[c.REGION_SOURCE].reshape(-1)]
        heads = self._resolve_heads(request, passed, regions, sources) if self.spec.heads else []
        maps = _input(request, c.MAP)
        geometry = _input(request, c.GEOMETRY)
        fracture, threshold, fallback, boxes, level, definite = [], [], [], [], [], []
        for b, score in enumerate(scores):
            decision = decide(
                float(score),
                None if maps is None else maps[b],
                regions[b],
                Geometry.from_array(geometry[b]),
                self.thresholds,
            )
            fracture.append([decision.fracture])
            threshold.append([decision.threshold])
            fallback.append([decision.fallback])
            boxes.append(decision.boxes)
            level.append([decision.level.encode()])
            definite.append(
                [c.NO_DEFINITE_THRESHOLD if decision.definite_threshold is None else decision.definite_threshold]
            )
        # One [N, K, 5] tensor: images with fewer boxes are padded with rows of confidence -1.
        k = max(1, max(len(b) for b in boxes))
        padded = np.full((len(boxes), k, c.BOX_COLUMNS), c.BOX_PADDING, dtype=np.float32)
        for b, rows in enumerate(boxes):
            padded[b, : len(rows)] = rows
        passed[c.REGION_USED] = _texts([[r] for r in regions])
        passed[c.REGION_SOURCE] = _texts([[r] for r in sources])
        return pb_utils.InferenceResponse(
            [pb_utils.Tensor(name, value) for name, value in passed.items()]
            + [
                pb_utils.Tensor(c.FRACTURE, np.asarray(fracture, dtype=bool)),
                pb_utils.Tensor(c.THRESHOLD, np.asarray(threshold, dtype=np.float32)),
                pb_utils.Tensor(c.FALLBACK, np.asarray(fallback, dtype=bool)),
                pb_utils.Tensor(c.BOXES, padded),
                pb_utils.Tensor(c.LEVEL, np.array(level, dtype=np.object_)),
                pb_utils.Tensor(c.DEFINITE_THRESHOLD, np.asarray(definite, dtype=np.float32)),
                pb_utils.Tensor(c.MODEL_IDENTITY, _texts([[self.identity.to_text()]] * len(scores))),
            ]
            + heads
        )

    def _resolve_heads(self, request, passed: dict, regions: list[str], sources: list[str]) -> list:
        """Resolve every image's heads; update `regions` / `sources` in place; return the top-class and QC tensors.

        (The probabilities are passed on as they came: the members' mean, which is what the answer reports.)
        """
        stated = _input(request, c.DICOM_LABELS).reshape(len(regions), -1)
        names = {h.name: c.head_outputs(h.name) for h in self.spec.heads}
        labels: dict[str, list[list[str]]] = {h: [] for h in names}
        qc = []
        for b in range(len(regions)):
            probs = {h: passed[probs_name][b] for h, (_, probs_name) in names.items()}
            outcome = resolve_heads(self.spec, probs, regions[b], sources[b], tuple(_text(v) for v in stated[b]))
            regions[b], sources[b] = outcome.region, outcome.region_source
            for h in names:
                labels[h].append([outcome.answers[h].label])
            qc.append([c.QC_SEPARATOR.join(outcome.qc)])
        tensors = [pb_utils.Tensor(names[h][0], _texts(rows)) for h, rows in labels.items()]
        return [*tensors, pb_utils.Tensor(c.QC, _texts(qc))]


class StudyModel(_Base):
    """IMAGE [N] (every view of one study) [+ REGION] -> the study answer and each view's (see the contract).

    A BLS model: one request to the `fracscan` ensemble per view, so that one bad view does not sink its
    study: it is reported in VIEW_ERRORS and the study is decided on the others (STUDY_VIEWS_USED). The
    decision is `fracscan.study.decide_study`. Only a study without any scored view is an error.

    The views' requests are in flight together (`async_exec` from an `async def execute`): the ensemble's
    instances and dynamic batching see a study's views at once, not one after another.
    """

    step = "study"
    wanted: tuple[str, ...] = (c.SCORE, c.THRESHOLD, c.REGION_USED, c.LEVEL, c.BOXES)

    def initialize(self, args):
        super().initialize(args)
        self.thresholds, self.identity = _load_identity(self.repository)
        heads = tuple(t.name for t in c.head_answer_outputs(self.spec.head_dims))
        self.wanted = (*StudyModel.wanted, *heads)

    async def execute(self, requests):
        return await asyncio.gather(*(self._answer_async(request) for request in requests))

    async def _answer_async(self, request):
        try:
            return await self.handle_async(request)
        except Exception as exc:
            return self._failed(exc)

    def handle(self, request):
        return asyncio.run(self.handle_async(request))

    async def handle_async(self, request):
        images = _input(request, c.IMAGE)
        regions = _input(request, c.REGION)
        requested = _text(regions.reshape(-1)[0]).strip() if regions is not None and regions.size else ""
        if images is None or images.size == 0:
            raise InputError("study: IMAGE holds no view")
        views = await asyncio.gather(*(self._view(bytes(item), requested) for item in images.reshape(-1)))
        used = [v for v in views if not v["error"]]
        if not used:
            errors = "; ".join(f"view {i}: {v['error']}" for i, v in enumerate(views))
            raise InputError(f"study: no view could be scored ({errors})")
        try:
            scores, regions = [v["score"] for v in used], [v["region"] for v in used]
            d = decide_study(scores, regions, self.thresholds, requested or None)
        except StudyError as exc:
            raise InputError(f"study: {exc}") from None
        boxes = [np.c_[np.full(len(v["boxes"]), i), v["boxes"]] for i, v in enumerate(views) if len(v["boxes"])]
        definite = c.NO_DEFINITE_THRESHOLD if d.definite_threshold is None else d.definite_threshold

        def text(values):
            return np.array([v.encode() for v in values], dtype=np.object_)

        return pb_utils.InferenceResponse(
            [
                pb_utils.Tensor(c.STUDY_SCORE, np.array([d.score], dtype=np.float32)),
                pb_utils.Tensor(c.STUDY_FRACTURE, np.array([d.fracture], dtype=bool)),
                pb_utils.Tensor(c.STUDY_THRESHOLD, np.array([d.threshold], dtype=np.float32)),
                pb_utils.Tensor(c.STUDY_LEVEL, text([d.level])),
                pb_utils.Tensor(c.STUDY_DEFINITE_THRESHOLD, np.array([definite], dtype=np.float32)),
                pb_utils.Tensor(c.STUDY_FALLBACK, np.array([d.fallback], dtype=bool)),
                pb_utils.Tensor(c.STUDY_RULE, text([d.rule])),
                pb_utils.Tensor(c.STUDY_CALIBRATED, np.array([d.calibrated], dtype=bool)),
                pb_utils.Tensor(c.STUDY_VIEWS_USED, np.array([d.views_used], dtype=np.int32)),
                pb_utils.Tensor(c.REGION_USED, text([d.region])),
                pb_utils.Tensor(c.VIEW_SCORES, np.array([v["score"] for v in views], dtype=np.float32)),
                pb_utils.Tensor(c.VIEW_THRESHOLDS, np.array([v["threshold"] for v in views], dtype=np.float32)),
                pb_utils.Tensor(c.VIEW_LEVELS, text(v["level"] for v in views)),
                pb_utils.Tensor(c.VIEW_REGIONS, text(v["region"] for v in views)),
                pb_utils.Tensor(c.VIEW_ERRORS, text(v["error"] for v in views)),
                pb_utils.Tensor(
                    c.VIEW_BOXES,
                    np.concatenate(boxes).astype(np.float32)
                    if boxes
                    else np.zeros((0, c.VIEW_BOX_COLUMNS), dtype=np.float32),
                ),
                *study_head_tensors(self.spec, views),
                pb_utils.Tensor(c.MODEL_IDENTITY, text([self.identity.to_text()])),
            ]
        )

    async def _view(self, data: bytes, region: str) -> dict:
        """One view through the ensemble: its score, region, level and boxes, or its error."""
        inputs = [pb_utils.Tensor(c.IMAGE, np.array([[data]], dtype=np.object_))]
        if region:
            inputs.append(pb_utils.Tensor(c.REGION, np.array([[region.encode()]], dtype=np.object_)))
        failed = {
            "score": c.NO_VIEW_SCORE,
            "threshold": c.NO_VIEW_SCORE,
            "region": "",
            "level": "",
            "boxes": np.zeros((0, c.BOX_COLUMNS)),
        }
        try:
            response = await pb_utils.InferenceRequest(
                model_name=c.ENSEMBLE_MODEL, requested_output_names=list(self.wanted), inputs=inputs
            ).async_exec()
        except Exception as exc:  # the call itself failed (the ensemble is not loaded, ...)
            return {**failed, "error": f"{type(exc).__name__}: {exc}"}
        if response.has_error():
            return {**failed, "error": response.error().message() or "the ensemble failed"}
        out = {name: pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in self.wanted}
        rows = out[c.BOXES].reshape(-1, c.BOX_COLUMNS)
        heads = {h.name: out[c.head_outputs(h.name)[1]].reshape(-1) for h in self.spec.heads}
        return {
            "score": float(out[c.SCORE].reshape(-1)[0]),
            "threshold": float(out[c.THRESHOLD].reshape(-1)[0]),
            "region": _text(out[c.REGION_USED].reshape(-1)[0]),
            "level": _text(out[c.LEVEL].reshape(-1)[0]),
            "boxes": rows[rows[:, 4] >= 0],  # the padding rows have confidence BOX_PADDING
            "error": "",
            **({"heads": heads, "qc": _text(out[c.QC].reshape(-1)[0])} if heads else {}),
        }


def study_head_tensors(spec, views: list[dict]) -> list:
    """The study's and each view's head answers (contract.study_head_answer_outputs); [] without heads.

    `views` are StudyModel._view's answers in request order: a scored one carries "heads" ({head:
    probabilities}) and "qc"; a failed one has an "error". The study's answer is `fracscan.study.study_heads`.
    """
    if not spec.heads:
        return []
    scored = {i: v["heads"] for i, v in enumerate(views) if not v["error"]}
    found = study_heads(spec.heads, scored)
    study, per_view = [], []
    for head in spec.heads:
        top, probs = c.study_head_outputs(head.name)
        answer = found.answers[head.name]
        study += [pb_utils.Tensor(top, _texts([[answer.label]]).reshape(1)), pb_utils.Tensor(probs, answer.probs)]
        rows = np.zeros((len(views), len(head.classes)), dtype=np.float32)  # a failed view's stay zero
        labels = [""] * len(views)
        for i, probs in scored.items():
            rows[i] = probs[head.name]
            labels[i] = head.classes[int(np.argmax(rows[i]))]
        top, probs = c.view_head_outputs(head.name)
        per_view += [pb_utils.Tensor(top, _texts([labels]).reshape(-1)), pb_utils.Tensor(probs, rows)]
    qc = _texts([[c.QC_SEPARATOR.join(found.qc)]]).reshape(1)
    view_qc = _texts([[v.get("qc", "") for v in views]]).reshape(-1)
    return [*study, pb_utils.Tensor(c.STUDY_QC, qc), *per_view, pb_utils.Tensor(c.VIEW_QC, view_qc)]
