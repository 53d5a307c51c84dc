"""Is a fracscan server answering? Its readiness, then one tiny inference through the whole ensemble.

A process that exists is not a server that answers: a SIGSTOPped or deadlocked `tritonserver` keeps
its PID, its stubs and its listening ports (the kernel still accepts connections), and answers nothing.
The probe asks over HTTP with a deadline; the supervisor counts the misses.
"""

from __future__ import annotations

import base64
import io
import math
import time
from functools import cache

import httpx
import numpy as np
from PIL import Image

from fracscan import contract as c


@cache
def probe_png(size: int = 64) -> bytes:
    """A small 8-bit gradient PNG: decodable, not blank, cheap to score; the same bytes every time."""
    ramp = np.linspace(16, 240, size, dtype=np.float32)
    pixels = (ramp[None, :] * 0.6 + ramp[:, None] * 0.4).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _request() -> dict[str, object]:
    """The KServe v2 JSON request scoring probe_png() (BYTES in JSON are text: the server takes base64)."""
    image = {"name": c.IMAGE, "shape": [1, 1], "datatype": "BYTES", "data": [base64.b64encode(probe_png()).decode()]}
    return {"inputs": [image], "outputs": [{"name": c.SCORE}]}


def probe(http_url: str, deadline_s: float) -> str | None:
    """None when the server at `http_url` is ready and scores the probe image within `deadline_s` in all;
    else what went wrong (no answer in time, not ready, an error, a score outside [0, 1])."""
    started = time.monotonic()

    def left() -> float:
        return max(deadline_s - (time.monotonic() - started), 0.001)

    try:
        with httpx.Client(base_url=http_url, timeout=deadline_s) as client:
            ready = client.get("/v2/health/ready", timeout=left())
            if ready.status_code != 200:
                return f"not ready (HTTP {ready.status_code})"
            answer = client.post(f"/v2/models/{c.ENSEMBLE_MODEL}/infer", json=_request(), timeout=left())
    except httpx.TimeoutException:
        return f"no answer within {deadline_s:g} s"
    except httpx.HTTPError as exc:
        return f"no answer: {exc}"
    if answer.status_code != 200:
        return f"the probe inference failed (HTTP {answer.status_code}): {answer.text[:200]}"
    try:
        score = float(answer.json()["outputs"][0]["data"][0])
    except (ValueError, KeyError, IndexError, TypeError):
        return f"the probe inference answered without a score: {answer.text[:200]}"
    if not (math.isfinite(score) and 0.0 <= score <= 1.0):
        return f"the probe image scored {score!r}, outside [0, 1]"
    return None
