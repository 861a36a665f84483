"""gRPC connection limits: the HTTP/2 server options.

The request limits both fronts check (characters, tokens, counts, the maximum deadline) are the service
layer's: server/service/inputs.py.
"""

from __future__ import annotations

import dataclasses

from seedstream.server.settings import CONNECTION_AGE_GRACE_S
from seedstream.server.settings import ServeOptions as _Flags  # the defaults of the `seedstream serve` flags


@dataclasses.dataclass(frozen=True)
class ConnectionLimits:
    """HTTP/2 connection settings (seconds; 0 or None = grpc's default, i.e. off)."""

    keepalive_time: float = _Flags.keepalive_time  # server pings an idle connection this often
    keepalive_timeout: float = _Flags.keepalive_timeout  # and closes it if the ping is not answered within this
    min_client_ping_interval: float = 10.0  # clients pinging more often than this get GOAWAY
    max_connection_idle: float = _Flags.max_connection_idle  # close connections without calls for this long
    max_connection_age: float | None = _Flags.max_connection_age  # close (gracefully) connections older than this
    max_connection_age_grace: float = CONNECTION_AGE_GRACE_S  # time calls get to finish after max_connection_age
    max_streams_per_connection: int = _Flags.max_streams_per_connection  # concurrent calls on one connection

    def grpc_options(self) -> list[tuple[str, int]]:
        def ms(seconds: float) -> int:
            return int(seconds * 1000)

        options = [
            ("grpc.keepalive_time_ms", ms(self.keepalive_time)),
            ("grpc.keepalive_timeout_ms", ms(self.keepalive_timeout)),
            # grpc-core (1.85) arms its keepalive-timeout timer only where one is already armed, so an
            # unanswered keepalive ping waits out the generic ping timeout instead (default 60 s): a frozen
            # client held its slot for keepalive_time + 60 s. The same timeout for every ping fixes it.
            ("grpc.http2.ping_timeout_ms", ms(self.keepalive_timeout)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", ms(self.min_client_ping_interval)),
            ("grpc.max_concurrent_streams", int(self.max_streams_per_connection)),
        ]
        if self.max_connection_idle:
            options.append(("grpc.max_connection_idle_ms", ms(self.max_connection_idle)))
        if self.max_connection_age:
            options.append(("grpc.max_connection_age_ms", ms(self.max_connection_age)))
            options.append(("grpc.max_connection_age_grace_ms", ms(self.max_connection_age_grace)))
        return [(k, v) for k, v in options if v > 0]
