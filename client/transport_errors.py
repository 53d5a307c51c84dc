"""Transport exceptions -> the SDK's exceptions (`errors`), decided by type, in one place.

The three transports under the SDK raise their own types: tritonclient's `InferenceServerException`
(an HTTP status or a gRPC `StatusCode` name), aiohttp's `ClientError` tree (tritonclient.http.aio),
geventhttpclient's and http.client's (tritonclient.http) and the standard library's `OSError` tree.
Each maps to one SDK exception, and that decides whether another try is worth it (`retryable`) and
whether the endpoint is skipped for a while (connection errors and timeouts). Two cases carry one type
for two meanings, and each has one documented rule here:

- gRPC `UNAVAILABLE` is both the channel's own "could not connect" and a server's "not now". grpc core
  words its own failures in the details (`_GRPC_CHANNEL_FAILURE`); those are connection errors, the rest
  are server errors (retryable either way).
- geventhttpclient raises the same socket timeout for connect and read. It is a connection error when it
  fired before half-way between the connect timeout and the read timeout (the connect timeout is far
  shorter), else an answer timeout.

Tested against the tritonclient releases pinned in pyproject.toml.
"""

from __future__ import annotations

import errno
import re
import ssl
from functools import cache
from http.client import HTTPException
from typing import Any

from fracscan.client.errors import (
    FracScanConnectionError,
    FracScanError,
    FracScanServerError,
    FracScanTimeout,
    InputRejected,
)

RETRYABLE_STATUS = {"503", "429", "UNAVAILABLE", "RESOURCE_EXHAUSTED"}  # busy or not ready: try again (later)
_GRPC_CHANNEL_FAILURE = re.compile(
    r"failed to connect|connection refused|socket closed|connection reset|broken pipe|dns", re.I
)
_LOST_ERRNOS = {errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE}  # aiohttp's ClientOSError carries only the errno


@cache
def _transport_types() -> dict[str, tuple[type[BaseException], ...]]:
    """The transports' exception types, imported on the first error (they are tritonclient's dependencies)."""
    import aiohttp
    from geventhttpclient.response import HTTPConnectionClosed
    from tritonclient.utils import InferenceServerException

    return {
        "server": (InferenceServerException,),
        "connect_timeout": (aiohttp.ConnectionTimeoutError,),  # aiohttp's timeouts are OSErrors too: first
        "read_timeout": (aiohttp.SocketTimeoutError,),
        # the connection closed before the answer came (the server died or dropped it mid-request)
        "lost": (HTTPConnectionClosed, HTTPException, aiohttp.ServerDisconnectedError, ConnectionError),
        "no_connection": (aiohttp.ClientConnectionError, OSError),
    }


def map_error(
    exc: BaseException, *, source: str | None, url: str, elapsed: float, connect_timeout: float, timeout: float
) -> FracScanError:
    """Any exception from one attempt -> the SDK exception that says what happened."""
    if isinstance(exc, FracScanError):
        return exc
    where: dict[str, Any] = {"source": source, "url": url}
    types = _transport_types()
    if isinstance(exc, types["server"]):
        return _server_answer(exc, url, timeout, where)
    if isinstance(exc, ssl.SSLCertVerificationError):  # aiohttp's certificate error is one too
        err = FracScanConnectionError(f"TLS: cannot verify the certificate of {url}: {exc}", **where)
        err.retryable = False  # trying again will not make it trusted
        return err
    if isinstance(exc, types["connect_timeout"]):
        return FracScanConnectionError(f"cannot connect to {url}: no connection within {connect_timeout:g} s", **where)
    if isinstance(exc, types["read_timeout"]):
        return FracScanTimeout(f"no answer from {url} within {timeout:g} s", **where)
    if isinstance(exc, TimeoutError):  # geventhttpclient: one socket timeout for both (see the docstring)
        if connect_timeout < timeout and elapsed < (connect_timeout + timeout) / 2:
            return FracScanConnectionError(
                f"cannot connect to {url}: no connection within {connect_timeout:g} s", **where
            )
        return FracScanTimeout(f"no answer from {url} within {timeout:g} s", **where)
    if (isinstance(exc, types["lost"]) and not isinstance(exc, ConnectionRefusedError)) or _lost_errno(exc):
        return FracScanConnectionError(
            f"connection to {url} lost before the answer: {type(exc).__name__}: {exc}", **where
        )
    if isinstance(exc, types["no_connection"]):
        return FracScanConnectionError(f"cannot connect to {url}: {type(exc).__name__}: {exc}", **where)
    return FracScanError(f"unexpected {type(exc).__name__} talking to {url}: {exc}", **where)


def _lost_errno(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _LOST_ERRNOS


def _server_answer(exc: Any, url: str, timeout: float, where: dict[str, Any]) -> FracScanError:
    """tritonclient's InferenceServerException: an HTTP status code or a gRPC StatusCode name."""
    status = str(exc.status() or "").removeprefix("StatusCode.")
    message = exc.message() or str(exc)
    if status in ("400", "INVALID_ARGUMENT"):
        return InputRejected(f"server rejected the input: {message}", **where)
    if status == "DEADLINE_EXCEEDED":
        return FracScanTimeout(f"no answer from {url} within {timeout:g} s", **where)
    if status == "UNAVAILABLE" and _GRPC_CHANNEL_FAILURE.search(message):
        return FracScanConnectionError(f"cannot connect to {url}: {message}", **where)
    return FracScanServerError(
        f"server error {status or '(no status)'} from {url}: {message}",
        status=status or None,
        retryable=status in RETRYABLE_STATUS,
        **where,
    )
