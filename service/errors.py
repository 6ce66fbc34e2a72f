"""The failures a caller can be told about, one class each.

Their messages go to the caller verbatim, so they say what was wrong and what to do.
The mapping to gRPC status codes lives in one place: `service.servicers`.
Anything that is not a ServingError is an internal fault: logged, never shown.
"""


class ServingError(Exception):
    """Base class; the message is safe and useful to send to the caller."""


class InvalidArgument(ServingError):
    """The request itself is wrong (shape, length, value); resending it will not help."""


class NotFound(ServingError):
    """No such model or version is loaded."""


class ResourceExhausted(ServingError):
    """The server is full right now; retry with backoff."""


class DeadlineExceeded(ServingError):
    """The caller's deadline passed before the request could run."""


class Unavailable(ServingError):
    """The server is starting or shutting down; retry elsewhere or later."""
