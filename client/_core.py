"""What the sync and async clients share, with no I/O of its own.

- `Tls`: TLS settings (URL syntax: `fracscan.contract.parse_server_url`; state per URL: `endpoints`);
- `Router`, `RetryPolicy`, `Attempts`: round robin over the endpoints, fail-over, and retries
  with jittered exponential backoff (only for connection failures, 503 / UNAVAILABLE and
  queue-full / RESOURCE_EXHAUSTED: never for rejected input, never for timeouts);
- `Request`: the KServe v2 inputs and outputs of the `fracscan` ensemble;
- `parse_result`: the response -> `Prediction`;
- `map_error` (from `transport_errors`): the transports' exceptions -> the SDK's, by type;
- `ClientBase._learn_heads`: the served ensemble's classification heads, learned once from its config
  (`client.heads`); health answers -> `server_info()` live in `client.health`;
- `ClientBase._judge_served`, `_check_identity`: `expect_model` (every answer's MODEL_IDENTITY, and the
  models the URLs serve, checked once before the first request);
- `ClientBase`: the constructor arguments and helpers of both clients.

`sync.py` and `aio.py` only add the calls (blocking or awaited) around these.

The fail-over rule. A connection failure (refused, reset, unreachable, connect timeout, or a
connection closed before the answer came, e.g. the server died mid-request) is retried on
another endpoint at once, and with backoff once every endpoint has been tried: the server never
answered, and scoring an image twice does no harm. A request timeout (connected, but no answer
within `timeout`) is not retried, not even on another endpoint: the server may still be working
on it, and the caller asked for an answer within that time. Either failure marks the endpoint
down for DOWN_SECONDS, so later requests go to the others: a server that accepts connections but
never answers costs one timeout per DOWN_SECONDS, not every other request.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import random
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from fracscan import contract as c
from fracscan.client.endpoints import Endpoint, parse_urls
from fracscan.client.errors import (
    FracScanConnectionError,
    FracScanError,
    FracScanServerError,
    FracScanTimeout,
    WrongModel,
)
from fracscan.client.heads import HeadClasses, head_output_names, heads_from_config, parse_heads
from fracscan.client.health import endpoint_info, served_identity
from fracscan.client.models import Box, Prediction, PredictionError, identity_from_result
from fracscan.client.sources import Payload, source_label
from fracscan.client.study import StudyPrediction, StudyRequest, parse_study_result
from fracscan.client.transport_errors import map_error
from fracscan.provenance import ExpectedModel, ModelIdentity

log = logging.getLogger("fracscan.client")

OUTPUTS = c.ENSEMBLE_OUTPUT_NAMES
DOWN_SECONDS = 5.0  # an endpoint that failed a connection or timed out is skipped this long


@dataclass(frozen=True)
class Tls:
    """TLS settings for https:// and grpcs:// URLs."""

    ca_file: str | None = None  # PEM file of the CAs to trust (default: the system's)
    cert_file: str | None = None  # client certificate (PEM), for mutual TLS
    key_file: str | None = None  # its private key (PEM)
    insecure: bool = False  # https only: do not verify the server's certificate

    def context(self, ssl_module: Any = ssl) -> ssl.SSLContext:
        """An SSLContext from `ssl_module` (the standard library's, or gevent.ssl for tritonclient.http)."""
        ctx: ssl.SSLContext = ssl_module.create_default_context(cafile=self.ca_file)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl_module.CERT_NONE
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    def check(self, endpoints: list[Endpoint]) -> None:
        if self.key_file and not self.cert_file:
            raise ValueError("key_file needs cert_file")
        if self.insecure and any(e.tls and e.protocol == "grpc" for e in endpoints):
            raise ValueError("insecure=True is not supported for grpcs:// (gRPC always verifies): pass ca_file")


# --- routing and retries ------------------------------------------------------------------


class Router:
    """Round robin over the endpoints, skipping those marked down. Thread-safe."""

    def __init__(self, endpoints: list[Endpoint]):
        self.endpoints = endpoints
        self._next = 0
        self._lock = threading.Lock()

    def pick(self, tried: set[int]) -> Endpoint | None:
        """The next endpoint not tried yet by this request: an up one if any, else a down one (it may be back)."""
        with self._lock:
            now = time.monotonic()
            n = len(self.endpoints)
            order = [(self._next + i) % n for i in range(n)]
            for want_up in (True, False):
                for i in order:
                    ep = self.endpoints[i]
                    if id(ep) not in tried and ep.is_down(now) != want_up:
                        self._next = (i + 1) % n
                        return ep
            return None

    def has_untried_up(self, tried: set[int]) -> bool:
        now = time.monotonic()
        return any(id(ep) not in tried and not ep.is_down(now) for ep in self.endpoints)

    @staticmethod
    def mark_down(ep: Endpoint) -> None:
        """Skip `ep` for DOWN_SECONDS (`pick` still tries it once every endpoint that is up has been tried)."""
        ep.down_until = time.monotonic() + DOWN_SECONDS


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 3  # further tries after the first, per request (fail-over to another endpoint is free)
    base_delay: float = 0.1  # seconds before the first retry, doubled each time, jittered
    max_delay: float = 2.0

    def delay(self, retry: int) -> float:
        backoff: float = self.base_delay * 2 ** (retry - 1)  # int ** int is Any to mypy (it may be a float)
        return min(self.max_delay, backoff) * random.uniform(0.5, 1.0)


class Attempts:
    """The attempts of one request: which endpoint next, and whether (and after how long) to go on.

    attempts = Attempts(router, policy)
    while True:
        ep = attempts.endpoint()
        try: return call(ep)
        except Exception as exc:
            err = map_error(exc, ...)
            delay = attempts.after(ep, err)
            if delay is None: raise err
            sleep(delay)
    """

    def __init__(self, router: Router, policy: RetryPolicy):
        self.router, self.policy = router, policy
        self.tried: set[int] = set()
        self.retry = 0

    def endpoint(self) -> Endpoint:
        ep = self.router.pick(self.tried)
        if ep is None:  # every endpoint tried in this round: start a new round
            self.tried.clear()
            ep = self.router.pick(self.tried)
        assert ep is not None  # with nothing tried, pick always finds one: parse_urls refuses an empty list
        self.tried.add(id(ep))
        return ep

    def after(self, ep: Endpoint, err: FracScanError) -> float | None:
        """Seconds to wait before the next attempt, or None: give up and raise err."""
        if isinstance(err, (FracScanConnectionError, FracScanTimeout)):
            self.router.mark_down(ep)  # a timeout is not retried (not retryable), but other requests avoid ep
        if not err.retryable:
            return None
        if self.router.has_untried_up(self.tried):
            return 0.0  # fail over to another endpoint now; that is not a retry
        self.retry += 1
        if self.retry > self.policy.retries:
            return None
        self.tried.clear()
        return self.policy.delay(self.retry)


# --- request and response -----------------------------------------------------------------


def _bytes_tensor(value: bytes) -> NDArray[np.object_]:
    # np.object_, not np.bytes_: numpy's fixed-width bytes drop trailing NUL bytes (DICOM, .npy end with them)
    tensor = np.empty((1, 1), dtype=np.object_)
    tensor[0, 0] = value
    return tensor


@dataclass(frozen=True)
class Request:
    payload: Payload
    region: str | None  # what goes into REGION: the user's region, or the DICOM term when decoded on the client
    user_region: bool

    @classmethod
    def make(cls, payload: Payload, region: str | None) -> Request:
        region = (region or "").strip() or None
        return cls(payload, region, True) if region else cls(payload, payload.dicom_region, False)

    @property
    def label(self) -> str:
        """What errors name: the input (a study request names its views)."""
        return self.payload.label

    def tensors(self, protocol: str, heads: HeadClasses | None = None) -> tuple[list[Any], list[Any]]:
        """(inputs, requested outputs) for tritonclient.http or tritonclient.grpc (the aio variants share them).

        `heads`: the ensemble's classification heads, whose outputs and QC are asked for too.
        """
        module = importlib.import_module(f"tritonclient.{protocol}")
        inputs = [module.InferInput(c.IMAGE, [1, 1], "BYTES")]
        inputs[0].set_data_from_numpy(_bytes_tensor(self.payload.data))
        if self.region:
            inputs.append(module.InferInput(c.REGION, [1, 1], "BYTES"))
            inputs[1].set_data_from_numpy(_bytes_tensor(self.region.encode()))
        names = OUTPUTS + head_output_names(heads or {})
        return inputs, [module.InferRequestedOutput(name) for name in names]


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def parse_result(
    result: Any, request: Request, model: str, latency_s: float, heads: HeadClasses | None = None
) -> Prediction:
    """A tritonclient InferResult (http or grpc) -> Prediction; `heads`: the ensemble's heads, if it has any."""

    def first(name: str) -> Any:
        return result.as_numpy(name).reshape(-1)[0]

    region = _text(first(c.REGION_USED))
    region_source = _text(first(c.REGION_SOURCE))
    if request.region and not request.user_region and region_source != "model":  # we sent the DICOM term
        region_source = "dicom" if region != c.UNKNOWN_REGION else "unknown"
    members = tuple(float(s) for s in result.as_numpy(c.MEMBER_SCORES).reshape(-1))
    rows = result.as_numpy(c.BOXES).reshape(-1, c.BOX_COLUMNS)
    response = result.get_response()
    if isinstance(response, dict):  # http: the JSON header of the response
        name, version = response.get("model_name", model), response.get("model_version", "")
    else:  # grpc: a ModelInferResponse protobuf
        name, version = response.model_name or model, response.model_version
    uids = request.payload.uids
    definite = float(first(c.DEFINITE_THRESHOLD))  # contract.NO_DEFINITE_THRESHOLD (-1) when the region has none
    answers, qc = parse_heads(result, heads or {})
    return Prediction(
        source=request.payload.label,
        score=float(first(c.SCORE)),
        fracture=bool(first(c.FRACTURE)),
        threshold=float(first(c.THRESHOLD)),
        region=region,
        region_source=cast(c.RegionSource, region_source),  # the server answers one of contract's values
        fallback=bool(first(c.FALLBACK)),
        boxes=tuple(Box(*(float(v) for v in row)) for row in rows if row[4] >= 0),
        member_scores=members,
        member_spread=float(np.std(members)) if members else 0.0,
        model_name=name,
        model_version=str(version),
        latency_s=latency_s,
        sop_instance_uid=uids.get("sop"),
        series_instance_uid=uids.get("series"),
        study_instance_uid=uids.get("study"),
        level=cast(c.Level, _text(first(c.LEVEL))),
        definite_threshold=None if definite < 0 else definite,
        heads=answers,
        qc=qc,
        acquisition=request.payload.acquisition,
        model_identity=identity_from_result(result),
    )


# --- settings shared by both clients ------------------------------------------------------------


class ClientBase:
    """Arguments, routing and error mapping common to FracScanClient and AsyncFracScanClient."""

    def __init__(
        self,
        url: str | Sequence[str] = c.DEFAULT_URL,
        *,
        model: str = "fracscan",
        connect_timeout: float = 5.0,
        timeout: float = 60.0,
        headers: Mapping[str, str] | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        insecure: bool = False,
        retries: int = 3,
        decode_on_client: bool = False,
        expect_model: str | ExpectedModel | None = None,
    ):
        """
        url: "http://host:8000", "https://...", "grpc://host:8001", "grpcs://...", or several (a
            list, or one comma-separated string): requests go round robin; a server that refuses
            connections, drops them, or times out is skipped for a few seconds while the others take over.
        model: the ensemble's model name on the server.
        connect_timeout: seconds to establish a connection; timeout: seconds to wait for an answer.
        headers: extra HTTP headers / gRPC metadata sent with every call (e.g. an auth token).
        ca_file, cert_file, key_file: TLS trust and client certificate (PEM files);
            insecure: https only, do not verify the server certificate.
        retries: further tries after connection failures (including a connection closed mid-request),
            503 / UNAVAILABLE and queue full, with jittered exponential backoff; rejected input and
            timeouts are never retried (see the module docstring).
        decode_on_client: decode images here and send pixels (.npy); DICOM UIDs and
            BodyPartExamined are read here too (the region term is sent as REGION). An ensemble with
            classification heads gets DICOM as it is even so: its QC reads ImageLaterality and
            BodyPartExamined on the server, and a region the DICOM names stays region_source "dicom"
            (to know, the client reads the heads from the config before its first request; PNG, JPEG and
            TIFF are still decoded here).
        expect_model: "SPEC" or "SPEC:MEMBERS_HASH" (or an ExpectedModel): every answer must come from that
            model (its MODEL_IDENTITY), else WrongModel; before the first request the model each URL serves is
            read from its config, and URLs that serve different models, or another model, are refused (WrongModel).
        """
        if connect_timeout <= 0 or timeout <= 0:
            raise ValueError("connect_timeout and timeout must be > 0 seconds")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.endpoints = parse_urls(url)
        self.tls = Tls(ca_file, cert_file, key_file, insecure)
        self.tls.check(self.endpoints)
        self.model = model
        self.connect_timeout = float(connect_timeout)
        self.timeout = float(timeout)
        self.headers = dict(headers or {})
        self.decode_on_client = decode_on_client
        self.retry_policy = RetryPolicy(retries)
        self.closed = False
        self._router = Router(self.endpoints)
        self._heads: HeadClasses | None = None  # the ensemble's heads once its config was read ({}: none)
        self.expect = ExpectedModel.parse(expect_model) if isinstance(expect_model, str) else expect_model
        self._served_checked = self.expect is None  # with an expectation: the URLs' models, once (_judge_served)
        self._setup()

    def _setup(self) -> None:
        """Subclasses create their connection state here."""

    @property
    def urls(self) -> list[str]:
        return [ep.url for ep in self.endpoints]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.urls!r}, model={self.model!r})"

    def _attempts(self) -> Attempts:
        return Attempts(self._router, self.retry_policy)

    def _map(self, exc: BaseException, ep: Endpoint, source: str | None, started: float) -> FracScanError:
        return map_error(
            exc,
            source=source,
            url=ep.url,
            elapsed=time.monotonic() - started,
            connect_timeout=self.connect_timeout,
            timeout=self.timeout,
        )

    def _grpc_options(self, ep: Endpoint) -> dict[str, Any]:
        """Constructor arguments of tritonclient.grpc(.aio).InferenceServerClient."""
        from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE

        connect_ms = int(self.connect_timeout * 1000)
        return {
            "ssl": ep.tls,
            "root_certificates": self.tls.ca_file,
            "private_key": self.tls.key_file,
            "certificate_chain": self.tls.cert_file,
            "channel_args": [
                ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
                ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
                # gRPC's connect deadline is the minimum reconnect backoff: the connect timeout
                ("grpc.min_reconnect_backoff_ms", connect_ms),
                ("grpc.initial_reconnect_backoff_ms", min(connect_ms, 1000)),
                ("grpc.max_reconnect_backoff_ms", max(connect_ms, 5000)),
            ],
        }

    def _infer_options(self, ep: Endpoint) -> dict[str, Any]:
        # http: the client deadline is the network timeout set on the client (infer's `timeout=`
        # would be a server-side queue timeout); grpc: a per-call deadline
        return {"headers": self.headers, **({"client_timeout": self.timeout} if ep.protocol == "grpc" else {})}

    def _config_options(self, ep: Endpoint) -> dict[str, Any]:
        """get_model_config on the prediction path (after an inference the endpoint answered)."""
        return {**self._infer_options(ep), **({"as_json": True} if ep.protocol == "grpc" else {})}

    def _health_options(self, ep: Endpoint, as_json: bool = False) -> dict[str, Any]:
        if ep.protocol == "http":
            return {"headers": self.headers}
        return {
            "headers": self.headers,
            "client_timeout": self.connect_timeout,
            **({"as_json": True} if as_json else {}),
        }

    def _health_answer(self, ep: Endpoint, config: Any, **answers: Any) -> dict[str, Any]:
        """One endpoint's health (`client.health.endpoint_info`); its config teaches the client the heads."""
        if config is not None and self._heads is None:
            with contextlib.suppress(FracScanError):  # a bad heads parameter fails predictions, not health
                self._learn_heads(config)
        return endpoint_info(ep, self.model, config=config, **answers)

    def _learn_heads(self, config: Any) -> HeadClasses:
        """Remember the heads named by the ensemble's config (read once per client: every URL serves one ensemble).

        `predict` reads the config only after an endpoint has answered an inference, so a request to a server
        that is down or hung is the inference alone (no config call ahead of it); the first request of an
        ensemble with heads is therefore sent again, once per client, asking for the heads' outputs.
        `predict_many` (and decode_on_client, which must know before reading a DICOM) read it ahead instead,
        from the first endpoint whose config answers (`_read_heads`): a timeout there marks nothing down, so
        the stream's requests meet a hung server as `predict`'s do.
        """
        try:
            self._heads = heads_from_config(config)
        except ValueError as exc:
            raise FracScanServerError(f"model '{self.model}': {exc}") from exc
        return self._heads

    def _config_unread(self, exc: BaseException, ep: Endpoint) -> HeadClasses:
        """The ensemble answered but its config could not be read (a proxy without the route, a blip):
        no heads this once, and the next request asks again. The inference's answer stands."""
        log.debug("no config of model '%s' from %s: %s: %s", self.model, ep.url, type(exc).__name__, exc)
        return {}

    def _parse(self, result: Any, request: Request, latency_s: float) -> Prediction:
        try:
            prediction = parse_result(result, request, self.model, latency_s, self._heads)
        except Exception as exc:  # a server that does not speak the fracscan contract
            raise FracScanServerError(
                f"unexpected response from model '{self.model}': {type(exc).__name__}: {exc}",
                source=request.payload.label,
            ) from exc
        self._check_identity(prediction.model_identity, request.label)
        return prediction

    def _parse_study(self, result: Any, request: StudyRequest, latency_s: float) -> StudyPrediction:
        try:
            study = parse_study_result(result, request, c.STUDY_MODEL, latency_s)
        except Exception as exc:  # a server without the study model's contract
            raise FracScanServerError(
                f"unexpected response from model '{c.STUDY_MODEL}': {type(exc).__name__}: {exc}", source=request.label
            ) from exc
        self._check_identity(study.model_identity, request.label)
        return study

    def _check_identity(self, identity: ModelIdentity | None, source: str) -> None:
        """An answer from another model than `expect_model` is refused (WrongModel), whatever it says."""
        if self.expect is not None and not self.expect.matches(identity):
            served = identity.compact() if identity else "a model that does not name itself"
            raise WrongModel(
                f"answered by {served}, not by the expected model {self.expect}", source=source, served=identity
            )

    def _judge_served(self, configs: list[tuple[Endpoint, Any]]) -> None:
        """Before the first request with `expect_model`: every URL whose config answered must serve the one
        expected model. `configs`: (endpoint, its ensemble config or None when it did not answer)."""
        served = {ep.url: served_identity(config) for ep, config in configs if config is not None}
        if not served:
            return  # nobody answered: the answers are checked one by one, and this is tried again
        names = {
            url: identity.compact() if identity else "a model that does not name itself"
            for url, identity in served.items()
        }
        if len(set(names.values())) > 1:
            listed = "; ".join(f"{url} serves {name}" for url, name in names.items())
            raise WrongModel(f"the servers serve different models ({listed}): give URLs that serve one model")
        url, identity = next(iter(served.items()))
        if self.expect is not None and not self.expect.matches(identity):
            raise WrongModel(
                f"{url} serves {names[url]}, not the expected model {self.expect}", url=url, served=identity
            )
        self._served_checked = True

    def _check_concurrency(self, concurrency: int) -> int:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        return int(concurrency)

    @staticmethod
    def _failure(source: object, exc: BaseException) -> PredictionError:
        """predict_many: one input's failure becomes its result; the batch goes on."""
        label = source_label(source)
        if isinstance(exc, FracScanError):
            return PredictionError.from_exception(label, exc)
        log.error("unexpected error on %s", label, exc_info=exc)
        return PredictionError(label, f"unexpected {type(exc).__name__}: {exc}", "input")
