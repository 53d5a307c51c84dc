"""Health answers -> the dict of `server_info()`: what each endpoint says, merged.

`endpoint_info` normalises the http (dict / list) and grpc (as_json dict) answers of one server,
including what `fracscan export` wrote into the ensemble config (spec, description, provenance and,
for an ensemble with classification heads, the heads and their classes).
"""

from __future__ import annotations

from typing import Any

from fracscan import contract as c
from fracscan import provenance
from fracscan.client.endpoints import Endpoint
from fracscan.client.errors import FracScanConnectionError, FracScanError
from fracscan.client.heads import heads_from_parameters


def endpoint_info(
    ep: Endpoint,
    model: str,
    *,
    live: bool,
    ready: bool,
    metadata: Any,
    index: Any,
    model_ready: bool,
    config: Any = None,
) -> dict[str, Any]:
    """Normalise the http (dict / list) and grpc (as_json dict) health answers."""
    models = index.get("models", []) if isinstance(index, dict) else list(index or [])
    config = (config or {}).get("config", config) or {}  # grpc wraps the config
    parameters = config.get("parameters") or {}
    record = provenance.from_parameters(parameters)
    text = {k: v.get("string_value", "") for k, v in parameters.items()}
    try:
        heads = heads_from_parameters(parameters)
    except ValueError:  # health reports what is served; the prediction path refuses a bad parameter
        heads = {}
    return {
        "url": ep.url,
        "protocol": ep.protocol,
        "live": bool(live),
        "ready": bool(ready),
        "server_name": metadata.get("name", ""),
        "server_version": metadata.get("version", ""),
        "extensions": list(metadata.get("extensions", [])),
        "model": model,
        "model_ready": bool(model_ready),
        # Written by `fracscan export` into the ensemble config: which spec is served, and its provenance.
        "ensemble": {
            "spec": text.get(c.PARAM_SPEC, ""),
            "description": text.get(c.PARAM_DESCRIPTION, ""),
            "provenance": None if record is None else record.to_json(),
            # Ensembles with classification heads only: {head: [class, ...]} in the spec's order.
            **({"heads": {name: list(classes) for name, classes in heads.items()}} if heads else {}),
        },
        "models": [
            {
                "name": m.get("name", ""),
                "version": str(m.get("version", "")),
                "state": m.get("state", ""),
                "reason": m.get("reason", ""),
            }
            for m in models
        ],
    }


def down_info(ep: Endpoint, model: str, error: FracScanError) -> dict[str, Any]:
    return {
        "url": ep.url,
        "protocol": ep.protocol,
        "live": False,
        "ready": False,
        "model": model,
        "model_ready": False,
        "error": error.reason,
    }


def merge_infos(infos: list[dict[str, Any]]) -> dict[str, Any]:
    """server_info(): the first reachable endpoint's details, plus a line per endpoint."""
    reachable = [i for i in infos if "error" not in i]
    if not reachable:
        raise FracScanConnectionError("no server reachable: " + "; ".join(f"{i['url']}: {i['error']}" for i in infos))
    summary = [{k: i.get(k) for k in ("url", "live", "ready", "model_ready", "error")} for i in infos]
    return {**reachable[0], "endpoints": summary}


def served_identity(config: Any) -> provenance.ModelIdentity | None:
    """The model identity an ensemble config names (http: a dict; grpc as_json: {"config": dict}), or None."""
    config = (config or {}).get("config", config) or {}
    record = provenance.from_parameters(config.get("parameters") or {})
    return None if record is None else record.identity


def served_provenance(info: dict[str, Any]) -> provenance.Provenance | None:
    """The provenance record of the ensemble that `server_info()` describes (None if it has none)."""
    raw = (info.get("ensemble") or {}).get("provenance")
    return provenance.Provenance.from_json(raw) if raw else None
