"""Classification heads on the client: which the served ensemble has, what to ask for, what came back.

An ensemble with heads (Olczak et al. 2017) names them and their classes in its config parameter
`contract.PARAM_HEADS` (JSON {head: [class, ...]}, the spec's order). The client reads it once and
then asks for each head's top class and probabilities and the QC warnings besides the usual outputs; an ensemble without
heads is asked exactly what it always was.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from fracscan import contract as c
from fracscan.client.models import HeadResult

HeadClasses = dict[str, tuple[str, ...]]  # head -> its classes, in the spec's order ({}: no heads)


def _parameter(parameters: Mapping[str, Any], key: str) -> str:
    raw = parameters.get(key)
    return str(raw.get("string_value", "")) if isinstance(raw, Mapping) else str(raw or "")


def heads_from_parameters(parameters: Mapping[str, Any]) -> HeadClasses:
    """The heads named by an ensemble config's `parameters` ({name: {"string_value": ...}}); {} when none.

    Raises ValueError for a parameter that is not the JSON object of class lists the contract defines.
    """
    text = _parameter(parameters, c.PARAM_HEADS)
    if not text:
        return {}
    raw = json.loads(text)
    if not isinstance(raw, dict) or not all(isinstance(v, list) and v for v in raw.values()):
        raise ValueError(f"config parameter {c.PARAM_HEADS!r} is not {{head: [class, ...]}}: {text[:200]}")
    return {str(name): tuple(str(k) for k in classes) for name, classes in raw.items()}


def heads_from_config(config: Any) -> HeadClasses:
    """The heads of a model config as tritonclient returns it (http: a dict; grpc as_json: {"config": dict})."""
    config = (config or {}).get("config", config) or {}
    return heads_from_parameters(config.get("parameters") or {})


def head_output_names(heads: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
    """The outputs to request besides contract.ENSEMBLE_OUTPUT_NAMES: each head's two, then QC (none without heads)."""
    return tuple(t.name for t in c.head_answer_outputs(tuple((h, len(k)) for h, k in heads.items())))


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def parse_heads(result: Any, heads: Mapping[str, tuple[str, ...]]) -> tuple[dict[str, HeadResult], tuple[str, ...]]:
    """({head: HeadResult}, QC warnings) from a tritonclient InferResult.

    A head whose outputs the answer lacks is left out (a request sent before the client knew the
    heads); probabilities that do not fit the head's classes are a ValueError (a server that does
    not speak the contract).
    """
    answers: dict[str, HeadResult] = {}
    for name, classes in heads.items():
        top, probs_name = c.head_outputs(name)
        probs = result.as_numpy(probs_name)
        label = result.as_numpy(top)
        if probs is None or label is None:
            continue
        values = np.asarray(probs, dtype=np.float64).reshape(-1)
        if values.size != len(classes):
            raise ValueError(f"{probs_name} has {values.size} values for the {len(classes)} classes of head {name!r}")
        text = _text(label.reshape(-1)[0])
        if text not in classes:
            raise ValueError(f"{top} = {text!r} is not a class of head {name!r} ({', '.join(classes)})")
        answers[name] = HeadResult(text, {k: float(v) for k, v in zip(classes, values, strict=True)})
    qc = result.as_numpy(c.QC) if heads else None
    warnings = _text(qc.reshape(-1)[0]) if qc is not None and qc.size else ""
    return answers, tuple(w for w in warnings.split(c.QC_SEPARATOR) if w.strip())
