"""Registering servicers with request decoding that cannot raise inside gRPC.

The generated `add_*_to_server` functions decode with `FromString`: bytes that are not the
expected message raise inside gRPC, which answers `UNKNOWN: Unexpected DecodeError` and logs a
traceback per request - a log flood anyone can cause without a token. Here an undecodable
message becomes an `Undecodable` that the servicer answers INVALID_ARGUMENT (and logs at a
rate limit); on a stream it is one bad message like any other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass

from lstm_serving.errors import InvalidArgument

Request = TypeVar("Request")

_HANDLER_KINDS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


class Undecodable:
    """Stands in for a request message whose bytes did not parse."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def decoded(request: Request) -> Request:
    """The request itself, or InvalidArgument when its bytes did not parse."""
    if isinstance(request, Undecodable):
        raise InvalidArgument(request.reason)
    return request


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
    traced: Callable[[str, Any], Any] | None = None,
) -> None:
    """Serves every method of `service` from the servicer's method of the same name, each
    wrapped by `traced(rpc, handler)` when tracing is on."""
    handlers = {}
    for method in service.methods:
        handler = getattr(servicer, method.name)
        if traced is not None:
            handler = traced(f"{service.full_name}/{method.name}", handler)
        handlers[method.name] = _HANDLER_KINDS[method.client_streaming, method.server_streaming](
            handler,
            request_deserializer=_decoder(GetMessageClass(method.input_type)),
            response_serializer=GetMessageClass(method.output_type).SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)
