"""The failures of the server, one class each: those a caller is told, those an operator is.

A ServingError's message goes to the caller verbatim, so it says what was wrong and what to
do; the mapping to gRPC status codes lives in one place, `lstm_serving.server.servicer`.
A ConfigurationError stops a start or refuses a model file, for the operator's log.
Anything else is an internal fault: logged, never shown to a caller.
"""

from collections.abc import Awaitable, Callable


class ServingError(Exception):
    """Base class; the message is safe and useful to send to the caller."""


class InvalidArgument(ServingError):
    """The request itself is wrong (shape, length, value); resending it will not help."""


class NotFound(ServingError):
    """No such model or version is loaded."""


class AlreadyExists(ServingError):
    """A sequence started with an id that is already open."""


class FailedPrecondition(ServingError):
    """The model cannot do what was asked (e.g. carry a bidirectional model's state)."""


class ResourceExhausted(ServingError):
    """The server is full right now; retry with backoff."""


class QueueFull(ResourceExhausted):
    """A model's queue is full; `room()` waits until its next batch leaves the queue. A stream
    waits for that, instead of being refused, for a message it read ahead of its own answers."""

    def __init__(self, message: str, room: Callable[[], Awaitable[None]]) -> None:
        super().__init__(message)
        self.room = room


class DeadlineExceeded(ServingError):
    """The caller's deadline passed before the request could run."""


class Aborted(ServingError):
    """A step of a sequence lost a race with another step of it: retry."""


class Unavailable(ServingError):
    """The server is starting or shutting down; retry elsewhere or later."""


class ConfigurationError(Exception):
    """The operator's to fix; the message names the file or flag and what to do."""


class ModelLoadError(ConfigurationError):
    """A model file that cannot be served."""


class ProviderError(ConfigurationError):
    """The requested device cannot be used."""


class StartupError(ConfigurationError):
    """The server cannot start (a port in use, a bad certificate, ...)."""
