"""Receipt signatures (ReceiptSignature in textgen.proto): the signed message and the output hashes.

Hand-written, shared by the server (which signs) and the client (which verifies). Stdlib only at
import time: the `cryptography` package is imported only by the functions that sign or verify
(the server's `server` extra and the client's `verify` extra install it).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence
from typing import Any

ALGORITHM = "ed25519"
MESSAGE_PREFIX = b"seedstream-receipt-signature-v1\n"


class SigningUnavailable(RuntimeError):
    """The `cryptography` package is not installed."""


def signed_message(digest: str, output_sha256: str) -> bytes:
    """The bytes an Ed25519 signature covers: the receipt's digest and the output's hash."""
    return MESSAGE_PREFIX + digest.encode("ascii") + b"\n" + output_sha256.encode("ascii")


def _u32s(values: Sequence[int]) -> bytes:
    return struct.pack(f"<I{len(values)}I", len(values), *values)


def _f64s(values: Sequence[float]) -> bytes:
    return struct.pack(f"<{len(values)}d", *values)


def output_sha256_tokens(token_ids: Sequence[int]) -> str:
    """A completion's output: the whole stream's token ids (resume_token_ids included)."""
    return hashlib.sha256(_u32s(token_ids)).hexdigest()


def output_sha256_score(results: Iterable[Any]) -> str:
    """Score's output: per result (a ScoreResult message or alike), its ids, logprobs, is_greedy, greedy ids."""
    h = hashlib.sha256()
    for r in results:
        ids = list(r.continuation_token_ids)
        h.update(_u32s(ids) + _f64s(list(r.logprobs)) + bytes([1 if r.is_greedy else 0]))
        h.update(struct.pack(f"<{len(r.greedy_token_ids)}I", *r.greedy_token_ids))
    return h.hexdigest()


def output_sha256_rolling(
    token_ids: Sequence[int], logprobs: Sequence[float], greedy: Sequence[int], windows: int
) -> str:
    """ScoreRolling's output: token ids, logprobs, greedy ids and the number of windows."""
    body = _u32s(token_ids) + _f64s(logprobs) + struct.pack(f"<{len(greedy)}I", *greedy)
    return hashlib.sha256(body + struct.pack("<I", windows)).hexdigest()


def _ed25519() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise SigningUnavailable(
            "receipt signatures need the cryptography package: pip install 'seedstream[verify]'"
        ) from None
    return ed25519


def load_private_key(pem: bytes) -> Any:
    """An Ed25519 private key from PEM (PKCS#8, unencrypted); ValueError for anything else."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, _ed25519().Ed25519PrivateKey):
        raise ValueError(f"not an Ed25519 private key ({type(key).__name__})")
    return key


def public_key_hex(key: Any) -> str:
    """64 hex digits: the raw public key of a private or public Ed25519 key."""
    from cryptography.hazmat.primitives import serialization

    public = key.public_key() if hasattr(key, "public_key") else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return bytes(raw).hex()


def load_public_key_hex(data: bytes) -> str:
    """A public key file's raw key as hex: a PEM public (or private) key, or 64 hex digits."""
    text = data.strip()
    if len(text) == 64 and all(c in b"0123456789abcdefABCDEF" for c in text):
        return text.decode().lower()
    from cryptography.hazmat.primitives import serialization

    if b"PRIVATE KEY" in text:
        return public_key_hex(load_private_key(text))
    key = serialization.load_pem_public_key(text)
    if not isinstance(key, _ed25519().Ed25519PublicKey):
        raise ValueError(f"not an Ed25519 public key ({type(key).__name__})")
    return public_key_hex(key)


def verify(public_key: str, signature: bytes, digest: str, output_sha256: str) -> bool:
    """Whether `signature` is the key's Ed25519 signature over (digest, output_sha256)."""
    from cryptography.exceptions import InvalidSignature

    key = _ed25519().Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key))
    try:
        key.verify(signature, signed_message(digest, output_sha256))
    except InvalidSignature:
        return False
    return True
