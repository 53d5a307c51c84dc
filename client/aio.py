"""AsyncFracScanClient: the asyncio client; same arguments, results and errors as FracScanClient."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
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


class AsyncFracScanClient(ClientBase):
    """Score radiographs from asyncio code; use it from one event loop; `async with` closes it.

    See ClientBase.__init__ for the arguments (several URLs: round robin and fail-over).
    """

    def _setup(self) -> None:
        self._clients: dict[int, Any] = {}  # one tritonclient aio client per endpoint, made in the running loop

    async def __aenter__(self) -> AsyncFracScanClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self.closed = True
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            with contextlib.suppress(Exception):  # closing must not hide the result or the real error
                await client.close()

    def _client(self, ep: Endpoint) -> Any:
        if self.closed:
            raise FracScanError("the client is closed")
        if id(ep) not in self._clients:
            self._clients[id(ep)] = self._new_client(ep)
        return self._clients[id(ep)]

    def _new_client(self, ep: Endpoint) -> Any:
        if ep.protocol == "http":
            import aiohttp
            import tritonclient.http.aio

            client = tritonclient.http.aio.InferenceServerClient(
                ep.address, conn_timeout=self.timeout, ssl=ep.tls, ssl_context=self.tls.context() if ep.tls else None
            )
            session = getattr(client, "_stub", None)
            if isinstance(session, aiohttp.ClientSession):
                # tritonclient only sets a total timeout; add the connect timeout, so a server that
                # cannot be reached is a connection error after connect_timeout, not a timeout later
                session._timeout = aiohttp.ClientTimeout(total=self.timeout, sock_connect=self.connect_timeout)
            return client
        import tritonclient.grpc.aio

        return tritonclient.grpc.aio.InferenceServerClient(ep.address, **self._grpc_options(ep))

    # -- health --

    async def wait_until_ready(self, timeout: float = 60.0) -> None:
        """Wait until a server is live and ready and serves the model; FracScanConnectionError after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            problems = []
            for ep in self.endpoints:
                started = time.monotonic()
                try:
                    client, options = self._client(ep), self._health_options(ep)
                    if not await client.is_server_live(**options):
                        problems.append(f"{ep.url}: server not live")
                    elif not await client.is_server_ready(**options):
                        problems.append(f"{ep.url}: server not ready")
                    elif not await client.is_model_ready(self.model, **options):
                        problems.append(f"{ep.url}: model '{self.model}' not ready")
                    else:
                        return
                except Exception as exc:
                    problems.append(str(self._map(exc, ep, None, started)))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FracScanConnectionError(f"not ready after {timeout:g} s: " + "; ".join(problems))
            await asyncio.sleep(min(0.25, remaining))

    async def is_demo(self) -> bool:
        """True when the server runs the synthetic-data DEMO ensemble (not for clinical use)."""
        record = await self.provenance()
        return record is not None and record.demo

    async def provenance(self) -> Provenance | None:
        """Where the served ensemble comes from: demo, random weights, calibration, members' hash."""
        return served_provenance(await self.server_info())

    async def heads(self) -> HeadClasses:
        """See FracScanClient.heads."""
        if self._heads is None:
            await self.server_info()
        return dict(self._heads or {})

    async def server_info(self) -> dict[str, Any]:
        """See FracScanClient.server_info."""
        infos = []
        for ep in self.endpoints:
            started = time.monotonic()
            try:
                infos.append(await self._endpoint_info(ep))
            except Exception as exc:
                infos.append(down_info(ep, self.model, self._map(exc, ep, None, started)))
        return merge_infos(infos)

    async def _endpoint_info(self, ep: Endpoint) -> dict[str, Any]:
        client, options, as_json = self._client(ep), self._health_options(ep), self._health_options(ep, True)
        live = await client.is_server_live(**options)
        ready = await client.is_server_ready(**options)
        metadata = await client.get_server_metadata(**as_json)
        index = await client.get_model_repository_index(**as_json)
        try:
            model_ready = await client.is_model_ready(self.model, **options)
            config = await client.get_model_config(self.model, **as_json) if model_ready else None
        except Exception:  # grpc raises for a model the server does not know
            model_ready, config = False, None
        return self._health_answer(
            ep, config, live=live, ready=ready, metadata=metadata, index=index, model_ready=model_ready
        )

    # -- prediction --

    async def predict(self, source: Source, region: str | None = None) -> Prediction:
        """Score one radiograph; raises like FracScanClient.predict."""
        if self.closed:
            raise FracScanError("the client is closed")
        await self.check_served()
        send_dicom = False
        if self.decode_on_client:  # an ensemble with heads gets DICOM as it is (ClientBase.__init__)
            send_dicom = bool(self._heads if self._heads is not None else await self._read_heads())
        # file I/O, DICOM parsing
        payload = await asyncio.to_thread(read_source, source, self.decode_on_client, send_dicom)
        request = Request.make(payload, region)
        started = time.perf_counter()
        result = await self._call(request)
        return self._parse(result, request, time.perf_counter() - started)

    async def predict_many(
        self, sources: Iterable[Source] | AsyncIterable[Source], region: str | None = None, concurrency: int = 8
    ) -> AsyncIterator[Prediction | PredictionError]:
        """Async iterator: one result per input, in input order, `concurrency` requests in flight.

        `sources` (an iterable or async iterable) is consumed lazily; a failed input yields a
        PredictionError and the rest go on. The heads are read before the first request, as
        FracScanClient.predict_many does.
        """
        concurrency = self._check_concurrency(concurrency)
        await self.check_served()
        if self._heads is None:  # known before the first request: none is sent twice to learn them
            await self._read_heads()
        slots = asyncio.Semaphore(concurrency)  # a source is read only when its request may start
        pending: deque[asyncio.Task[Prediction | PredictionError]] = deque()  # at most 2 x concurrency

        async def one(source: Source) -> Prediction | PredictionError:
            async with slots:
                try:
                    return await self.predict(source, region)
                except Exception as exc:
                    return self._failure(source, exc)

        try:
            async for source in _aiter(sources):
                pending.append(asyncio.ensure_future(one(source)))
                if len(pending) >= 2 * concurrency:
                    yield await pending.popleft()
            while pending:
                yield await pending.popleft()
        finally:
            for task in pending:  # the caller stopped early
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def predict_study(self, views: Sequence[Source], region: str | None = None) -> StudyPrediction:
        """Score every view of one study in one request; see FracScanClient.predict_study."""
        if self.closed:
            raise FracScanError("the client is closed")
        await self.check_served()
        read = await asyncio.to_thread(read_views, views, self.decode_on_client)  # file I/O, DICOM parsing
        heads = self._heads if self._heads is not None else await self._read_heads()
        request = StudyRequest.make(read, region, heads)
        started = time.perf_counter()
        result = await self._call(request, STUDY_MODEL)
        return self._parse_study(result, request, time.perf_counter() - started)

    async def _call(self, request: Request | StudyRequest, model: str | None = None) -> Any:
        """One inference with fail-over and retries (policy: `_core.Attempts`)."""
        attempts = self._attempts()
        while True:
            ep = attempts.endpoint()
            started = time.monotonic()
            try:
                client = self._client(ep)
                if isinstance(request, Request):
                    return await self._infer_ensemble(client, ep, request)
                inputs, outputs = request.tensors(ep.protocol)
                return await client.infer(model or self.model, inputs, outputs=outputs, **self._infer_options(ep))
            except Exception as exc:
                err = self._map(exc, ep, request.label, started)
                delay = attempts.after(ep, err)
                if delay is None:
                    if err is exc:
                        raise
                    raise err from exc
                log.warning("%s; trying again in %.2f s", err, delay)
                await asyncio.sleep(delay)

    async def _infer_ensemble(self, client: Any, ep: Endpoint, request: Request) -> Any:
        """See FracScanClient._infer_ensemble."""
        known = self._heads
        inputs, outputs = request.tensors(ep.protocol, known)
        result = await client.infer(self.model, inputs, outputs=outputs, **self._infer_options(ep))
        if known is None and await self._heads_from(client, ep):  # the ensemble has heads: ask for them too
            inputs, outputs = request.tensors(ep.protocol, self._heads)
            result = await client.infer(self.model, inputs, outputs=outputs, **self._infer_options(ep))
        return result

    async def check_served(self) -> None:
        """See FracScanClient.check_served."""
        if self._served_checked:
            return
        configs = []
        for ep in self.endpoints:
            try:
                configs.append((ep, await self._client(ep).get_model_config(self.model, **self._config_options(ep))))
            except Exception as exc:
                configs.append((ep, None))
                log.debug("no config of model '%s' from %s: %s", self.model, ep.url, exc)
        self._judge_served(configs)

    async def _read_heads(self) -> HeadClasses | None:
        """See FracScanClient._read_heads."""
        for ep in self.endpoints:
            if self._heads is not None or ep.is_down():
                continue
            try:
                config = await self._client(ep).get_model_config(self.model, **self._config_options(ep))
            except Exception as exc:
                self._config_unread(exc, ep)
                continue
            with contextlib.suppress(FracScanError):  # a bad heads parameter fails each prediction instead
                self._learn_heads(config)
            break
        return self._heads

    async def _heads_from(self, client: Any, ep: Endpoint) -> HeadClasses:
        """See FracScanClient._heads_from."""
        if self._heads is not None:
            return self._heads
        try:
            config = await client.get_model_config(self.model, **self._config_options(ep))
        except Exception as exc:
            return self._config_unread(exc, ep)
        return self._learn_heads(config)


async def _aiter(sources: Iterable[Source] | AsyncIterable[Source]) -> AsyncIterator[Source]:
    if isinstance(sources, AsyncIterable):
        async for source in sources:
            yield source
    else:
        for source in sources:
            yield source
