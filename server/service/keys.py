"""API keys: which client a bearer token names, checked the same way by both fronts (gRPC's
`authorization` metadata, HTTP's Authorization header)."""

from __future__ import annotations

import hmac
from collections.abc import Mapping


class ApiKeys:
    """The known keys ({key: client name}) and the constant-time lookup of a bearer token."""

    def __init__(self, keys: Mapping[str, str]):
        if not keys:
            raise ValueError("API key checks need at least one key")
        self._keys = [(key.encode(), name) for key, name in keys.items()]

    def client_of(self, authorization: str | bytes) -> str | None:
        """The client's name if `authorization` is `Bearer <a known key>`. Every key is compared, in
        constant time, whatever matched, so timing reveals neither a key nor which one matched."""
        value = authorization if isinstance(authorization, bytes) else authorization.encode("utf-8", "replace")
        scheme, _, rest = value.partition(b" ")
        token = rest.strip() if scheme.lower() == b"bearer" else b""
        found = None
        for key, name in self._keys:
            if hmac.compare_digest(key, token) and found is None:
                found = name
        return found if token else None
