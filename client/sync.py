"""FracScanClient: the blocking client (HTTP or gRPC by URL scheme, one or several servers)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from fracscan.client._core import (
    ClientBase,
    Endpoint,
    Request,
    down_info,
    endpoint_info,
    log,
    merge_infos,
    served_provenance,
)
from fracscan.client.models import FracScanConnectionError, FracScanError, Prediction, PredictionError
from fracscan.client.sources import Source, read_source
from fracscan.client.study import StudyPrediction, StudyRequest, read_views
from fracscan.contract import STUDY_MODEL
from fracscan.provenance import Provenance


class _ThreadClients:
    """One tritonclient client per (thread, endpoint): tritonclient's HTTP client is not thread-safe."""

    def __init__(self, factory: Callable[[Endpoint], Any]):
        self._factory = factory
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()

    def get(self, ep: Endpoint) -> Any:
        cache = self._local.__dict__.setdefault("clients", {})
        if id(ep) not in cache:
            cache[id(ep)] = self._factory(ep)
            with self._lock:
                self._all.append(cache[id(ep)])
        return cache[id(ep)]

    def close(self) -> None:
        with self._lock:
            clients, self._all = self._all, []
        for client in clients:
            with contextlib.suppress(Exception):  # closing must not hide the result or the real error
                client.close()


class FracScanClient(ClientBase):
    """Score radiographs on a fracscan (Triton) server; thread-safe; a context manager.

    The URL scheme picks the protocol (http, https, grpc, grpcs); see ClientBase.__init__ for
    the arguments (several URLs: round robin and fail-over).
    """

    def _setup(self) -> None:
        self._clients = _ThreadClients(self._new_client)

    # -- lifecycle --

    def __enter__(self) -> FracScanClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.closed = True
        self._clients.close()

    def _new_client(self, ep: Endpoint) -> Any:
        if self.closed:
            raise FracScanError("the client is closed")
        if ep.protocol == "http":
            import gevent.ssl
            import tritonclient.http

            tls = {
                "ssl": True,
                "ssl_context_factory": lambda **_: self.tls.context(gevent.ssl),
                "insecure": self.tls.insecure,
            }
            return tritonclient.http.InferenceServerClient(
                ep.address,
                connection_timeout=self.connect_timeout,
                network_timeout=self.timeout,
                **(tls if ep.tls else {}),
            )
        import tritonclient.grpc

        return tritonclient.grpc.InferenceServerClient(ep.address, **self._grpc_options(ep))

    # -- health --

    def wait_until_ready(self, timeout: float = 60.0) -> None:
        """Wait until a server is live and ready and serves the model; FracScanConnectionError after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            problems = []
            for ep in self.endpoints:
                started = time.monotonic()
                try:
                    client, options = self._clients.get(ep), self._health_options(ep)
                    if not client.is_server_live(**options):
                        problems.append(f"{ep.url}: server not live")
                    elif not client.is_server_ready(**options):
                        problems.append(f"{ep.url}: server not ready")
                    elif not client.is_model_ready(self.model, **options):
                        problems.append(f"{ep.url}: model '{self.model}' not ready")
                    else:
                        return
                except Exception as exc:
                    problems.append(str(self._map(exc, ep, None, started)))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FracScanConnectionError(f"not ready after {timeout:g} s: " + "; ".join(problems))
            time.sleep(min(0.25, remaining))

    def is_demo(self) -> bool:
        """True when the server runs the synthetic-data DEMO ensemble (not for clinical use)."""
        record = self.provenance()
        return record is not None and record.demo

    def provenance(self) -> Provenance | None:
        """Where the served ensemble comes from: demo, random weights, calibration, members' hash."""
        return served_provenance(self.server_info())

    def server_info(self) -> dict[str, Any]:
        """Live, ready, server version and the repository's models (name, version, state) of the
        first reachable server, plus `endpoints`: a line per URL. FracScanConnectionError if none answers."""
        infos = []
        for ep in self.endpoints:
            started = time.monotonic()
            try:
                infos.append(self._endpoint_info(ep))
            except Exception as exc:
                infos.append(down_info(ep, self.model, self._map(exc, ep, None, started)))
        return merge_infos(infos)

    def _endpoint_info(self, ep: Endpoint) -> dict[str, Any]:
        client, options, as_json = self._clients.get(ep), self._health_options(ep), self._health_options(ep, True)
        live = client.is_server_live(**options)
        ready = client.is_server_ready(**options)
        metadata = client.get_server_metadata(**as_json)
        index = client.get_model_repository_index(**as_json)
        try:
            model_ready = client.is_model_ready(self.model, **options)
            config = client.get_model_config(self.model, **as_json) if model_ready else None
        except Exception:  # grpc raises for a model the server does not know
            model_ready, config = False, None
        return endpoint_info(
            ep,
            self.model,
            live=live,
            ready=ready,
            metadata=metadata,
            index=index,
            model_ready=model_ready,
            config=config,
        )

    # -- prediction --

    def predict(self, source: Source, region: str | None = None) -> Prediction:
        """Score one radiograph; raises InvalidInput, InputRejected, FracScanConnectionError, FracScanTimeout or FracScanServerError."""
        return self._predict(source, region, self._clients)

    def predict_many(
        self, sources: Iterable[Source], region: str | None = None, concurrency: int = 8
    ) -> Iterator[Prediction | PredictionError]:
        """Score many radiographs, `concurrency` requests in flight; one result per input, in input order.

        `sources` is consumed lazily and each file is read just before its request is sent, so
        memory stays flat however many inputs there are. A failed input yields a PredictionError
        and the rest go on. One image per request: the server batches requests dynamically, and
        a bad image cannot fail its neighbours. Closing the iterator early waits for the
        requests in flight.
        """
        concurrency = self._check_concurrency(concurrency)
        clients = _ThreadClients(self._new_client)  # this call's worker threads get their own clients
        pool = ThreadPoolExecutor(concurrency, thread_name_prefix="fracscan")
        pending: deque[Future[Prediction | PredictionError]] = (
            deque()
        )  # at most 2 x concurrency: in flight + finished, waiting for their turn

        def one(source: Source) -> Prediction | PredictionError:
            try:
                return self._predict(source, region, clients)
            except Exception as exc:
                return self._failure(source, exc)

        try:
            for source in sources:
                pending.append(pool.submit(one, source))
                if len(pending) >= 2 * concurrency:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:  # the caller stopped early: drop what has not started
                future.cancel()
            pool.shutdown(wait=True)
            clients.close()

    def _predict(self, source: Source, region: str | None, clients: _ThreadClients) -> Prediction:
        if self.closed:
            raise FracScanError("the client is closed")
        payload = read_source(source, self.decode_on_client)
        request = Request.make(payload, region)
        started = time.perf_counter()
        result = self._call(clients, request)
        return self._parse(result, request, time.perf_counter() - started)

    def predict_study(self, views: Sequence[Source], region: str | None = None) -> StudyPrediction:
        """Score every view of one study in one request (model `fracscan_study`): the study answer and each view's.

        A view that cannot be read or scored is a PredictionError among `views` and the study is decided on
        the others; raises (like `predict`) only when no view can be scored or the request fails.
        """
        if self.closed:
            raise FracScanError("the client is closed")
        request = StudyRequest.make(read_views(views, self.decode_on_client), region)
        started = time.perf_counter()
        result = self._call(self._clients, request, STUDY_MODEL)
        return self._parse_study(result, request, time.perf_counter() - started)

    def _call(self, clients: _ThreadClients, request: Request | StudyRequest, model: str | None = None) -> Any:
        """One inference with fail-over and retries (policy: `_core.Attempts`)."""
        attempts = self._attempts()
        while True:
            ep = attempts.endpoint()
            started = time.monotonic()
            try:
                inputs, outputs = request.tensors(ep.protocol)
                return clients.get(ep).infer(model or self.model, inputs, outputs=outputs, **self._infer_options(ep))
            except Exception as exc:
                err = self._map(exc, ep, request.label, started)
                delay = attempts.after(ep, err)
                if delay is None:
                    if err is exc:
                        raise
                    raise err from exc
                log.warning("%s; trying again in %.2f s", err, delay)
                time.sleep(delay)
