"""The SDK's exceptions, one tree; `kind` names the branch in results and `retryable` drives retries.

    FracScanError                 base; str(exc) is "<source>: <reason>" when it concerns one input
    ├── FracScanConnectionError   no connection (refused, reset, unreachable, connect timeout, not ready)
    ├── FracScanTimeout           connected, no answer within `timeout` (never retried)
    ├── InputRejected             the server refused the input (HTTP 400 / gRPC INVALID_ARGUMENT)
    │   └── InvalidInput          the client's own checks refused it before sending
    ├── WrongModel                another model answered than the one expected (`expect_model`); `served`
    └── FracScanServerError       the server failed (5xx / INTERNAL ...); `status`, `retryable`

The CLI turns them into exit codes (`fracscan.cli.console`: 2 for connection and usage, 1 for failed
inputs). Messages name the input and the problem, never a patient identifier.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    from fracscan.provenance import ModelIdentity

# model: another model answered than the one expected; output: scored, but its results were not written or stored
ErrorKind = Literal["input", "rejected", "server", "connection", "timeout", "model", "output"]


class FracScanError(Exception):
    """Base of every SDK error. `str(exc)` is "<source>: <reason>" when the error concerns one input."""

    kind: ClassVar[ErrorKind] = "server"
    retryable: bool = False

    def __init__(self, reason: str, *, source: str | None = None, url: str | None = None):
        self.reason = reason
        self.source = source
        self.url = url
        super().__init__(f"{source}: {reason}" if source else reason)


class FracScanConnectionError(FracScanError, ConnectionError):
    """No connection to the server (refused, reset, unreachable, connect timeout, not ready)."""

    kind = "connection"
    retryable = True


class FracScanTimeout(FracScanError, TimeoutError):
    """Connected, but no answer within the client's `timeout` (not retried: the server may still be busy with it)."""

    kind = "timeout"


class InputRejected(FracScanError, ValueError):
    """The server refused the input (HTTP 400 / gRPC INVALID_ARGUMENT); the reason is the server's message."""

    kind: ClassVar[ErrorKind] = "rejected"  # ErrorKind, not Literal["rejected"]: InvalidInput says "input"


class InvalidInput(InputRejected):
    """The client-side checks refused the input before sending it (missing file, unknown format, DICOM without pixels...)."""

    kind = "input"


class WrongModel(FracScanError):
    """The server answers with another model than the one asked for (`expect_model`, or fail-over URLs that
    serve different models). `served`: the identity that answered (None when it names none)."""

    kind = "model"

    def __init__(self, reason: str, *, served: ModelIdentity | None = None, **kw: Any):
        super().__init__(reason, **kw)
        self.served = served


class FracScanServerError(FracScanError):
    """The server failed (HTTP 5xx / gRPC INTERNAL, ...). `status` is the HTTP code or gRPC status name."""

    kind = "server"

    def __init__(self, reason: str, *, status: str | None = None, retryable: bool = False, **kw: Any):
        super().__init__(reason, **kw)
        self.status = status
        self.retryable = retryable  # 503 / UNAVAILABLE / queue full: worth another try
