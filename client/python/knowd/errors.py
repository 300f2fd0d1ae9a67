"""Typed errors: every failed call raises a KnowdError subclass carrying the gRPC status code."""
import grpc


class KnowdError(Exception):
    """A call failed. `code` is the grpc.StatusCode, `message` the daemon's explanation."""

    def __init__(self, code, message):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class InvalidArgument(KnowdError):
    """Empty, oversized or invalid text; a bad id, mode or top_k."""


class NotFound(KnowdError):
    """An unknown document id; memory asked in a namespace that holds no documents."""


class Unauthenticated(KnowdError):
    """No token, or one the daemon does not know."""


class PermissionDenied(KnowdError):
    """The token lacks the role or the namespace."""


class ResourceExhausted(KnowdError):
    """A queue of the daemon is full (retry with backoff), or a message is too large."""


class Unavailable(KnowdError):
    """The daemon is unreachable or shutting down."""


class DeadlineExceeded(KnowdError):
    """The call's timeout passed; the daemon abandoned the work."""


_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}

_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def error_of(code, message):
    """The KnowdError subclass for a grpc.StatusCode (or its number, as an IngestAck gives it)."""
    if isinstance(code, int):
        code = _BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN)
    return _BY_CODE.get(code, KnowdError)(code, message)


def from_rpc_error(error):
    """The KnowdError of a grpc.RpcError (grpc.aio's AioRpcError too)."""
    return error_of(error.code(), error.details() or "")
