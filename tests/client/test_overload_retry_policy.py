"""The client's overload retries: which failures are retried, how many times, and how long it waits."""

import grpc
import pytest

from seedstream.client import Client
from seedstream.client._retry import OverloadRetry, is_overload, is_proxy_failure


class _Error(grpc.RpcError):
    def __init__(self, code, details="server overloaded, retry later: the queue is full (max_queue=1)"):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


FULL = _Error(grpc.StatusCode.RESOURCE_EXHAUSTED)


def test_only_the_servers_resource_exhausted_is_retried():
    assert is_overload(FULL)
    for code in grpc.StatusCode:
        if code is not grpc.StatusCode.RESOURCE_EXHAUSTED:
            assert not is_overload(_Error(code)), code
    # gRPC's own size limit: the same request would fail the same way.
    assert not is_overload(_Error(grpc.StatusCode.RESOURCE_EXHAUSTED, "Sent message larger than max (9 vs. 4)"))
    assert not is_overload(_Error(grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max (9 vs. 4)"))


def test_a_proxys_bad_gateway_is_retried_but_not_other_unavailable():
    """nginx's 502/503/504 (its replica died): gRPC's retry policy counts it as answered, so the client retries."""
    for status in (502, 503, 504):
        bad_gateway = _Error(grpc.StatusCode.UNAVAILABLE, f"Received http2 header with status: {status}")
        assert is_proxy_failure(bad_gateway)
        assert OverloadRetry(max_retries=1, base_delay=0.0).attempts(None).wait(bad_gateway) == 0.0
    assert not is_proxy_failure(_Error(grpc.StatusCode.UNAVAILABLE, "Received http2 header with status: 500"))
    assert not is_proxy_failure(_Error(grpc.StatusCode.UNIMPLEMENTED, "Received http2 header with status: 404"))
    assert not is_proxy_failure(_Error(grpc.StatusCode.UNAVAILABLE, "server is draining"))


def test_retries_are_bounded_and_waits_are_full_jitter_under_an_exponential_cap():
    attempts = OverloadRetry(max_retries=4, base_delay=0.5, max_delay=1.5).attempts(None)
    waits = [attempts.wait(FULL) for _ in range(5)]
    assert waits[-1] is None and None not in waits[:4]
    for k, wait in enumerate(waits[:4]):
        assert 0.0 <= wait <= min(1.5, 0.5 * 2**k)
    assert OverloadRetry(max_retries=0).attempts(None).wait(FULL) is None
    assert OverloadRetry().attempts(None).wait(_Error(grpc.StatusCode.INVALID_ARGUMENT)) is None


def test_no_wait_outlasts_the_deadline():
    attempts = OverloadRetry(max_retries=3, base_delay=5.0).attempts(timeout=0.0)
    assert attempts.wait(FULL) is None and attempts.remaining() == 0.0
    # Without jitter room (base 0), a retry within the deadline is allowed.
    assert OverloadRetry(base_delay=0.0).attempts(timeout=60.0).wait(FULL) == 0.0


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="max_retries"):
        Client("127.0.0.1:1", max_retries=-1)
    with pytest.raises(ValueError, match="retry_base_delay"):
        OverloadRetry(base_delay=-0.1)


def test_cli_passes_max_retries_to_the_client():
    from seedstream.client import cli
    from seedstream.client._cli_args import client_from_args

    parser = cli.build_parser()
    default = client_from_args(parser.parse_args(["generate", "hi", "--target", "127.0.0.1:1"]))
    none = client_from_args(parser.parse_args(["info", "--target", "127.0.0.1:1", "--max-retries", "0"]))
    assert (default.overload_retry.max_retries, none.overload_retry.max_retries) == (2, 0)
    default.close()
    none.close()
    with pytest.raises(SystemExit, match="--max-retries -1"):
        client_from_args(parser.parse_args(["info", "--max-retries", "-1"]))
