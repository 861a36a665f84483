"""Reproducibility receipts: what determines a response's tokens, digested, and signed when the server
holds a key (--receipt-signing-key). Both fronts send these: gRPC as the message, HTTP as its JSON."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from seedstream.server.engine.types import GenerationRequest, ModelInfo
from seedstream.v1 import signing
from seedstream.v1 import textgen_pb2 as pb
from seedstream.v1.protocol import OPTIONAL_SAMPLING_FIELDS, RECEIPT_VERSION


def input_sha256(token_ids: Sequence[int]) -> str:
    return hashlib.sha256(struct.pack(f"<{len(token_ids)}I", *token_ids)).hexdigest()


def receipt(info: ModelInfo, request: GenerationRequest) -> pb.ReproducibilityReceipt:
    """What determines this request's tokens, with a digest over all of it but the model's name."""
    s = request.sampling
    effective = pb.EffectiveSampling(
        **{name: getattr(s, name) for name in OPTIONAL_SAMPLING_FIELDS},  # the values used, defaults included
        logit_bias={int(k): float(v) for k, v in _bias_items(s.logit_bias)},
        max_new_tokens=request.max_new_tokens,
        min_new_tokens=request.min_new_tokens,
        stop=list(request.stop),
        stop_token_ids=list(request.stop_token_ids),
        ignore_eos=request.ignore_eos,
    )
    out = pb.ReproducibilityReceipt(
        **_build(info),
        sampler_version=info.sampler_version,
        seed=s.seed,
        sample_index=request.sample_index,
        sampling=effective,
        input_sha256=input_sha256(request.prompt_token_ids),
    )
    return _digested(out, info)


def score_receipt(info: ModelInfo, scored: Sequence[Sequence[int]]) -> pb.ReproducibilityReceipt:
    """A scoring receipt: the model build and the scored token ids (each part length-prefixed); no sampling."""
    flat: list[int] = []
    for part in scored:
        flat.append(len(part))
        flat.extend(part)
    out = pb.ReproducibilityReceipt(**_build(info), input_sha256=input_sha256(flat))
    return _digested(out, info)


def _build(info: ModelInfo) -> dict[str, Any]:
    """The receipt fields that name the model build (every receipt has them; the digest covers them)."""
    return dict(
        receipt_version=RECEIPT_VERSION,
        model_sha256=info.model_sha256,
        model_identity=info.model_identity,
        dtype=info.dtype,
        device=info.device,
        engine_version=info.engine_version,
        weight_format=info.weight_format,
    )


def _digested(out: pb.ReproducibilityReceipt, info: ModelInfo) -> pb.ReproducibilityReceipt:
    """Fill in the digest over every determining field, then the model's name (which is not one)."""
    out.digest = hashlib.sha256(out.SerializeToString(deterministic=True)).hexdigest()
    out.model_id = info.model_id
    return out


def _bias_items(bias: Mapping[int, float] | Iterable[tuple[int, float]]) -> list[tuple[int, float]]:
    items = bias.items() if isinstance(bias, Mapping) else bias
    return sorted((int(k), float(v)) for k, v in items)


class ReceiptSigner:
    """Binds a receipt's digest to a hash of the output it came with (see ReceiptSignature in the proto)."""

    def __init__(self, private_key: Any) -> None:
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

    def sign_tokens(
        self, receipt: pb.ReproducibilityReceipt, held: Sequence[int], new: Sequence[int]
    ) -> pb.ReproducibilityReceipt:
        """A completion's receipt: the whole stream, the resumed-from tokens (`held`) first."""
        return self.sign(receipt, signing.output_sha256_tokens([*held, *new]))


def load_signer(path: str | None) -> ReceiptSigner | None:
    return ReceiptSigner.from_file(path) if path else None


def completion_receipt(
    info: ModelInfo, request: GenerationRequest, tokens: Sequence[int], signer: ReceiptSigner | None
) -> pb.ReproducibilityReceipt:
    """A completion's receipt, signed over the whole stream's tokens when the server signs."""
    out = receipt(info, request)
    if signer is not None:
        signer.sign_tokens(out, request.resume_token_ids, tokens)
    return out
