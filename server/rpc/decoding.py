"""Registering the TextGeneration service with request deserializers that never raise.

grpc turns an exception raised by a request deserializer into UNKNOWN
"Unexpected DecodeError" and logs a traceback. Here a message that cannot be
parsed (garbage bytes, invalid UTF-8 in a string field) becomes a
`MalformedRequest` instead; the servicer's guard answers it with
INVALID_ARGUMENT and one WARNING line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import grpc
from google.protobuf.message import DecodeError, Message

from seedstream.v1 import textgen_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["TextGeneration"]


@dataclasses.dataclass(frozen=True)
class MalformedRequest:
    """Stands in for a request whose bytes did not parse; `reason` is the parser's message."""

    message_type: str
    reason: str


def _safe_parser(message_class: type[Message]) -> Callable[[bytes], Message | MalformedRequest]:
    def parse(data: bytes) -> Message | MalformedRequest:
        try:
            return message_class.FromString(data)
        except (DecodeError, UnicodeDecodeError, ValueError) as exc:
            return MalformedRequest(message_class.DESCRIPTOR.full_name, str(exc) or type(exc).__name__)

    return parse


def add_text_generation_service(servicer: object, server: grpc.aio.Server) -> None:
    """What the generated add_TextGenerationServicer_to_server does, with the safe deserializers."""
    handlers: dict[str, grpc.RpcMethodHandler[Message | MalformedRequest, Message]] = {}
    for method in SERVICE.methods:
        request_class = getattr(pb, method.input_type.name)
        response_class = getattr(pb, method.output_type.name)
        make = grpc.unary_stream_rpc_method_handler if method.server_streaming else grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=_safe_parser(request_class),
            response_serializer=response_class.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
    if hasattr(server, "add_registered_method_handlers"):  # grpcio >= 1.63, as the generated code does
        server.add_registered_method_handlers(SERVICE.full_name, handlers)
