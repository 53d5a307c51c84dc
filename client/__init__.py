"""fracscan.client: the typed Python SDK for a fracscan server (KServe v2 over HTTP or gRPC).

    from fracscan.client import FracScanClient

    with FracScanClient("http://localhost:8000") as client:
        client.wait_until_ready(timeout=30)
        prediction = client.predict("scan.dcm")             # or region="wrist"
        prediction.heads                                      # {"laterality": HeadResult("left", {...})} (Olczak)
        for result in client.predict_many(paths, concurrency=8):
            print(result.to_dict())                           # Prediction or PredictionError

`AsyncFracScanClient` is the same for asyncio (`await client.predict(...)`,
`async for result in client.predict_many(...)`).
"""

from fracscan.client.aio import AsyncFracScanClient
from fracscan.client.errors import (
    ErrorKind,
    FracScanConnectionError,
    FracScanError,
    FracScanServerError,
    FracScanTimeout,
    InputRejected,
    InvalidInput,
    WrongModel,
)
from fracscan.client.models import Box, HeadResult, Prediction, PredictionError, RegionSource
from fracscan.client.sources import Source
from fracscan.client.study import StudyPrediction, ViewPrediction
from fracscan.client.sync import FracScanClient
from fracscan.provenance import ExpectedModel, ModelIdentity

__all__ = [
    "AsyncFracScanClient",
    "Box",
    "ErrorKind",
    "ExpectedModel",
    "FracScanClient",
    "FracScanConnectionError",
    "FracScanError",
    "FracScanServerError",
    "FracScanTimeout",
    "HeadResult",
    "InputRejected",
    "InvalidInput",
    "ModelIdentity",
    "Prediction",
    "PredictionError",
    "RegionSource",
    "Source",
    "StudyPrediction",
    "ViewPrediction",
    "WrongModel",
]
