"""Registering servicers with request decoding that cannot raise inside gRPC, and a bound on
how long a call's request may take to arrive.

The generated `add_*_to_server` functions decode with `FromString`: bytes that are not the
expected message raise inside gRPC, which answers `UNKNOWN: Unexpected DecodeError` and logs a
traceback per request - a log flood anyone can cause without a token. Here an undecodable
message becomes an `Undecodable` that the servicer answers INVALID_ARGUMENT (and logs at a
rate limit); on a stream it is one bad message like any other.

gRPC waits for a unary call's request for ever: a client that sends its headers and never
its message holds the call (and its connection, which is then never idle). So a method with
one request is served as a client-streaming one (the same on the wire) that reads its message
within --request-read-timeout; a request that has not arrived by then is `Unread`, answered
DEADLINE_EXCEEDED.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass

from lstm_serving.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted, ServingError
from lstm_serving.server.overdue import Overdue
from lstm_serving.server.status import status_of

Request = TypeVar("Request")

# Every method is served as a client-streaming one (see above); by whether it streams answers:
_HANDLER_KINDS = {
    False: grpc.stream_unary_rpc_method_handler,
    True: grpc.stream_stream_rpc_method_handler,
}


class Undecodable:
    """Stands in for a request message whose bytes did not parse."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class Unread:
    """Stands in for a request message that was not read: why, as the error to answer."""

    __slots__ = ("error",)

    def __init__(self, error: ServingError) -> None:
        self.error = error


def decoded(request: Request) -> Request:
    """The request itself, or the error that it did not parse (InvalidArgument) or was not
    read."""
    if isinstance(request, Undecodable):
        raise InvalidArgument(request.reason)
    if isinstance(request, Unread):
        raise request.error
    return request


async def _request_of(
    context: grpc.aio.ServicerContext[Any, Any], reading: Overdue, answers_errors: bool
) -> Any:
    """A unary call's request, read within `reading`'s limit. Unless the handler
    `answers_errors`, a request that was not read or did not parse ends the call here."""
    request = await _read(context, reading)
    if not answers_errors and isinstance(request, Undecodable | Unread):
        try:
            decoded(request)
        except ServingError as exc:
            await context.abort(*status_of(exc))
    return request


async def _read(context: grpc.aio.ServicerContext[Any, Any], reading: Overdue) -> Any:
    """The request, or why it was not read (`Unread`)."""
    try:
        request = await reading.wait(context.read())
    except TimeoutError:
        return Unread(
            DeadlineExceeded(
                f"the request did not arrive in full within {reading.limit:g} s "
                "(--request-read-timeout): send the message with the call's headers"
            )
        )
    if request is grpc.aio.EOF:  # the client has already heard gRPC's own refusal
        return Unread(
            ResourceExhausted(
                "no request message was read: gRPC refused it (over --max-message-bytes, "
                "or over it once decompressed), or the call carried none"
            )
        )
    return request


def _read_in_time(
    handler: Callable[[Any, Any], Any], reading: Overdue, answers_errors: bool
) -> Callable[[Any, Any], Any]:
    """`handler` of one request, served as a client-streaming method that reads its message
    within `reading`'s limit (see `_request_of`)."""

    async def read_then_handle(_requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        # No local holds the request: a refusal's traceback keeps this frame (see
        # servicer.answers_errors).
        return await handler(await _request_of(context, reading, answers_errors), context)

    return read_then_handle


def _decoder(message_class: type[Message]) -> Callable[[bytes], Message | Undecodable]:
    parse = message_class.FromString
    name = message_class.DESCRIPTOR.full_name

    def decode(data: bytes) -> Message | Undecodable:
        try:
            return parse(data)
        except DecodeError:
            return Undecodable(
                f"the request body ({len(data)} bytes) is not a valid {name}: "
                "is the client built from this server's .proto files?"
            )

    return decode


def add_servicer(
    server: grpc.aio.Server,
    servicer: Any,
    service: ServiceDescriptor,
    reading: Overdue,
    traced: Callable[[str, Any], Any] | None = None,
    answers_errors: bool = True,
) -> None:
    """Serves every method of `service` from the servicer's method of the same name (each a
    coroutine), wrapped by `traced(rpc, handler)` when tracing is on; a method of one request
    reads it within `reading`'s limit (--request-read-timeout). `answers_errors`: the servicer
    answers requests that did not parse or were not read (`decoded`); otherwise they end the
    call here."""
    handlers = {}
    for method in service.methods:
        handler = getattr(servicer, method.name)
        if traced is not None:
            handler = traced(f"{service.full_name}/{method.name}", handler)
        if not method.client_streaming:
            handler = _read_in_time(handler, reading, answers_errors)
        handlers[method.name] = _HANDLER_KINDS[method.server_streaming](
            handler,
            request_deserializer=_decoder(GetMessageClass(method.input_type)),
            response_serializer=GetMessageClass(method.output_type).SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)
