"""Signing receipts with the server's Ed25519 key (--receipt-signing-key), opt-in."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from seedstream.v1 import signing
from seedstream.v1 import textgen_pb2 as pb


class ReceiptSigner:
    """Binds a receipt's digest to a hash of the output it came with (see ReceiptSignature in the proto)."""

    def __init__(self, private_key) -> None:
        self._key = private_key
        self.public_key = signing.public_key_hex(private_key)

    @classmethod
    def from_file(cls, path: str | Path) -> ReceiptSigner:
        """The key of a PEM file (PKCS#8 Ed25519, unencrypted); ValueError naming the file otherwise."""
        try:
            return cls(signing.load_private_key(Path(path).read_bytes()))
        except signing.SigningUnavailable:
            raise
        except (ValueError, TypeError) as exc:
            raise ValueError(f"--receipt-signing-key {path}: {exc}") from None

    def sign(self, receipt: pb.ReproducibilityReceipt, output_sha256: str) -> pb.ReproducibilityReceipt:
        """Set receipt.signature (the digest must be final: it is what gets signed)."""
        message = signing.signed_message(receipt.digest, output_sha256)
        receipt.signature.CopyFrom(
            pb.ReceiptSignature(
                algorithm=signing.ALGORITHM,
                public_key=self.public_key,
                output_sha256=output_sha256,
                signature=self._key.sign(message),
            )
        )
        return receipt

    def sign_tokens(self, receipt: pb.ReproducibilityReceipt, held: Sequence[int], new: Sequence[int]):
        """A completion's receipt: the whole stream, the resumed-from tokens (`held`) first."""
        return self.sign(receipt, signing.output_sha256_tokens([*held, *new]))


def load_signer(path: str | None) -> ReceiptSigner | None:
    return ReceiptSigner.from_file(path) if path else None
