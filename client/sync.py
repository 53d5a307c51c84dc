"""FracScanClient: the blocking client (HTTP or gRPC by URL scheme, one or several servers)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from fracscan.client._core import ClientBase, Request, log
from fracscan.client.endpoints import Endpoint
from fracscan.client.errors import FracScanConnectionError, FracScanError
from fracscan.client.heads import HeadClasses
from fracscan.client.health import down_info, merge_infos, served_provenance
from fracscan.client.models import Prediction, PredictionError
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

    def heads(self) -> HeadClasses:
        """The served ensemble's classification heads, {head: classes in the spec's order}; {} without heads.

        Read from the ensemble's config once per client (predict learns them on its first request too).
        """
        if self._heads is None:
            self.server_info()
        return dict(self._heads or {})

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
        return self._health_answer(
            ep, config, live=live, ready=ready, metadata=metadata, index=index, model_ready=model_ready
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
        requests in flight. The ensemble's heads are read from its config before the first request
        (see ClientBase._learn_heads).
        """
        concurrency = self._check_concurrency(concurrency)
        self.check_served()
        if self._heads is None:  # known before the pool starts: no request is sent twice to learn them
            self._read_heads()
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
        self.check_served()
        send_dicom = False
        if self.decode_on_client:  # an ensemble with heads gets DICOM as it is (ClientBase.__init__)
            send_dicom = bool(self._heads if self._heads is not None else self._read_heads())
        payload = read_source(source, self.decode_on_client, send_dicom)
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
        self.check_served()
        heads = self._heads if self._heads is not None else self._read_heads()
        request = StudyRequest.make(read_views(views, self.decode_on_client), region, heads)
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
                client = clients.get(ep)
                if isinstance(request, Request):
                    return self._infer_ensemble(client, ep, request)
                inputs, outputs = request.tensors(ep.protocol)
                return client.infer(model or self.model, inputs, outputs=outputs, **self._infer_options(ep))
            except Exception as exc:
                err = self._map(exc, ep, request.label, started)
                delay = attempts.after(ep, err)
                if delay is None:
                    if err is exc:
                        raise
                    raise err from exc
                log.warning("%s; trying again in %.2f s", err, delay)
                time.sleep(delay)

    def _infer_ensemble(self, client: Any, ep: Endpoint, request: Request) -> Any:
        """One ensemble inference, with the heads' outputs once they are known (see ClientBase._learn_heads)."""
        known = self._heads
        inputs, outputs = request.tensors(ep.protocol, known)
        result = client.infer(self.model, inputs, outputs=outputs, **self._infer_options(ep))
        if known is None and self._heads_from(client, ep):  # the ensemble has heads: ask for them too
            inputs, outputs = request.tensors(ep.protocol, self._heads)
            result = client.infer(self.model, inputs, outputs=outputs, **self._infer_options(ep))
        return result

    def check_served(self) -> None:
        """With `expect_model`, once (also done before the first request): read the model every URL serves
        from its config; WrongModel when they differ or are not the expected one (ClientBase._judge_served)."""
        if self._served_checked:
            return
        configs = []
        for ep in self.endpoints:
            try:
                configs.append((ep, self._clients.get(ep).get_model_config(self.model, **self._config_options(ep))))
            except Exception as exc:
                configs.append((ep, None))
                log.debug("no config of model '%s' from %s: %s", self.model, ep.url, exc)
        self._judge_served(configs)

    def _read_heads(self) -> HeadClasses | None:
        """The heads read ahead of a request (ClientBase._learn_heads): from the first endpoint not marked down
        whose config answers; None when none does (the first answered inference learns them then)."""
        for ep in self.endpoints:
            if self._heads is not None or ep.is_down():
                continue
            try:
                config = self._clients.get(ep).get_model_config(self.model, **self._config_options(ep))
            except Exception as exc:
                self._config_unread(exc, ep)
                continue
            with contextlib.suppress(FracScanError):  # a bad heads parameter fails each prediction instead
                self._learn_heads(config)
            break
        return self._heads

    def _heads_from(self, client: Any, ep: Endpoint) -> HeadClasses:
        """The ensemble's heads: known, or read from its config on `ep`, which has just answered."""
        if self._heads is not None:
            return self._heads
        try:
            config = client.get_model_config(self.model, **self._config_options(ep))
        except Exception as exc:
            return self._config_unread(exc, ep)
        return self._learn_heads(config)
