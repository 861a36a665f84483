"""Standard gRPC plumbing: grpc.health.v1 and server reflection, as generic tools use them."""

from __future__ import annotations

from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from seedstream.client import HealthStatus


def test_health_serving(channel, client):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "seedstream.v1.TextGeneration"):
        response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    assert client.health() is HealthStatus.SERVING
    assert client.health("no.such.Service") is HealthStatus.SERVICE_UNKNOWN


def test_reflection_lists_and_describes_the_service(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="seedstream.v1.TextGeneration"),
    ]
    listed, described = list(stub.ServerReflectionInfo(iter(requests), timeout=10))
    names = {s.name for s in listed.list_services_response.service}
    assert {"seedstream.v1.TextGeneration", "grpc.health.v1.Health"} <= names

    files = [
        descriptor_pb2.FileDescriptorProto.FromString(b)
        for b in described.file_descriptor_response.file_descriptor_proto
    ]
    service = next(s for f in files for s in f.service if s.name == "TextGeneration")
    assert {m.name for m in service.method} >= {"Generate", "GenerateStream", "Tokenize", "GetModelInfo"}
