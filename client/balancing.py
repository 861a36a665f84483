"""Client-side load balancing and retries through gRPC's own resolver, `round_robin` policy and retry policy.

A client reaches several replicas in one of two ways:

- a list of addresses, `["10.0.0.5:50051", "10.0.0.6:50051"]`: IP literals (all IPv4 or all IPv6),
  turned into gRPC's `ipv4:a:p,b:p` / `ipv6:[a]:p,[b]:p` target, balanced `round_robin`;
- one target gRPC resolves itself, e.g. `dns:///seedstream-headless.ns.svc:50051` (every address the
  name has, re-resolved as replicas come and go; a Kubernetes headless Service) or `ipv4:a:p,b:p`,
  with `load_balancing="round_robin"`.

gRPC's default for a single target is `pick_first`: one connection, to the first address that
answers. `round_robin` keeps a connection to every address that is up and sends each call to the
next ready one; a replica that goes away is skipped until it answers again.

`max_attempts` > 1 turns on gRPC's retry policy for UNAVAILABLE (a replica died or is shutting
down, the model is still loading): the call is sent again, with backoff, to another replica. gRPC
retries only calls whose response has not started, so a stream is never retried half way. A seeded
request returns the same tokens wherever it runs, so retrying it is safe.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from typing import Any

from seedstream.v1.protocol import SERVICE_NAME

POLICIES = ("pick_first", "round_robin")
MAX_ATTEMPTS_LIMIT = 5  # gRPC caps maxAttempts at 5
Target = str | Sequence[str] | None


def channel_target(target: Target) -> tuple[str | None, bool]:
    """(gRPC target string, whether it came from a list of addresses). None stays None."""
    if target is None or isinstance(target, str):
        return target, False
    addresses = list(target)
    if not addresses:
        raise ValueError("target: the list of addresses is empty")
    parsed = [_split(a) for a in addresses]
    families = {ip.version for ip, _ in parsed}
    if len(families) > 1:
        raise ValueError(f"target: mix of IPv4 and IPv6 addresses {addresses}; gRPC takes one family per target")
    if families == {4}:
        return "ipv4:" + ",".join(f"{ip}:{port}" for ip, port in parsed), True
    return "ipv6:" + ",".join(f"[{ip}]:{port}" for ip, port in parsed), True


def _split(address: str) -> tuple[Any, int]:
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        ip = ipaddress.ip_address(host)
        if not sep or not 0 < int(port) < 65536:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"target: {address!r} is not IP:PORT; a list takes IP literals (e.g. 127.0.0.1:50051, [::1]:50051). "
            "For a host name use one target 'dns:///NAME:PORT' with load_balancing='round_robin'"
        ) from None
    return ip, int(port)


def channel_options(load_balancing: str | None, max_attempts: int, from_list: bool) -> list[tuple[str, Any]]:
    """gRPC channel options carrying the service config for the policy and the retries."""
    if load_balancing is None and from_list:
        load_balancing = "round_robin"
    if load_balancing is not None and load_balancing not in POLICIES:
        raise ValueError(f"load_balancing={load_balancing!r}: allowed {', '.join(POLICIES)}")
    if not 1 <= max_attempts <= MAX_ATTEMPTS_LIMIT:
        raise ValueError(f"max_attempts={max_attempts}: allowed [1, {MAX_ATTEMPTS_LIMIT}] (1 = no retries)")
    config: dict[str, Any] = {}
    if load_balancing is not None:
        config["loadBalancingConfig"] = [{load_balancing: {}}]
    if max_attempts > 1:
        config["methodConfig"] = [
            {
                "name": [{"service": SERVICE_NAME}],
                "retryPolicy": {
                    "maxAttempts": max_attempts,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    if not config:
        return []
    # The resolver (DNS TXT records) must not replace the policy chosen here.
    return [
        ("grpc.service_config", json.dumps(config)),
        ("grpc.service_config_disable_resolution", 1),
        ("grpc.enable_retries", 1),
    ]
