"""An exact, bounded prefix cache: KV blocks keyed by a chain hash of the token prefix, LRU-evicted.

Exact because prefill equals decode bit for bit (model.py): a position's keys and values depend
only on the tokens up to it, so KV copied from the cache is exactly what the sequence would have
computed. A hit changes no token, only how fast the prompt gets through.

It knows only token ids and SequenceKVCache (it copies blocks in and out), so it works with any
model class that uses that cache. The engine thread is its only user; stats are plain ints that
other threads may read.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import struct
from collections.abc import Sequence

import torch

from .kv_cache import SequenceKVCache

BLOCK_TOKENS = 16  # positions per cached block: a prefix is reused in whole blocks
_ROOT = b"seedstream-prefix-v1"


@dataclasses.dataclass
class _Block:
    tokens: tuple[int, ...]  # this block's own tokens, compared on a hit: a hash collision cannot leak
    keys: torch.Tensor  # [layers, Hkv, BLOCK_TOKENS, D]
    values: torch.Tensor

    @property
    def nbytes(self) -> int:
        return 2 * self.keys.numel() * self.keys.element_size()


@dataclasses.dataclass
class PrefixCacheStats:
    blocks: int = 0
    bytes: int = 0
    hit_tokens: int = 0  # prompt positions copied from the cache instead of computed
    miss_tokens: int = 0  # prompt positions computed (could not be taken from the cache)
    evicted_blocks: int = 0

    @property
    def hit_rate(self) -> float:
        total = self.hit_tokens + self.miss_tokens
        return self.hit_tokens / total if total else 0.0


def chain_hashes(token_ids: Sequence[int], blocks: int) -> list[bytes]:
    """Hash of each whole block's prefix: h[i] = H(h[i-1] || tokens of block i)."""
    out, parent = [], _ROOT
    for i in range(blocks):
        part = token_ids[i * BLOCK_TOKENS : (i + 1) * BLOCK_TOKENS]
        parent = hashlib.blake2b(parent + struct.pack(f"<{len(part)}I", *part), digest_size=16).digest()
        out.append(parent)
    return out


class PrefixCache:
    """Whole blocks of prompt KV, LRU under `budget_bytes` (0 turns the cache off)."""

    block_tokens = BLOCK_TOKENS

    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self._blocks: collections.OrderedDict[bytes, _Block] = collections.OrderedDict()  # LRU first
        self.stats = PrefixCacheStats()

    @property
    def enabled(self) -> bool:
        return self.budget_bytes > 0

    def lookup(self, token_ids: Sequence[int], hashes: Sequence[bytes], start: int, limit: int) -> int:
        """How many positions from `start` (a block boundary) on are cached, reading at most up to
        `limit`. Read-only: planning calls it, and copy_into marks the blocks used."""
        if not self.enabled or start % BLOCK_TOKENS:
            return start
        found: list[bytes] = []
        for i in range(start // BLOCK_TOKENS, min(limit // BLOCK_TOKENS, len(hashes))):
            block = self._blocks.get(hashes[i])
            if block is None or block.tokens != tuple(token_ids[i * BLOCK_TOKENS : (i + 1) * BLOCK_TOKENS]):
                break
            found.append(hashes[i])
        return start + len(found) * BLOCK_TOKENS

    def copy_into(self, cache: SequenceKVCache, hashes: Sequence[bytes], start: int, end: int) -> None:
        """Write cached blocks for positions [start, end) (found by lookup) into `cache`, and mark them used.
        A step runs its copies before its stores, so no block found while planning is evicted before this."""
        if end <= start:
            return
        cache.reserve(end)
        used = range(start // BLOCK_TOKENS, end // BLOCK_TOKENS)
        for i in used:
            block = self._blocks[hashes[i]]
            lo = i * BLOCK_TOKENS
            cache.keys[:, :, lo : lo + BLOCK_TOKENS] = block.keys
            cache.values[:, :, lo : lo + BLOCK_TOKENS] = block.values
        cache.length = max(cache.length, end)
        # Deepest first, so a prefix's first blocks are the most recent: eviction takes leaves first.
        for i in reversed(used):
            self._blocks.move_to_end(hashes[i])

    def store(self, token_ids: Sequence[int], hashes: Sequence[bytes], cache: SequenceKVCache, end: int) -> None:
        """Keep the whole blocks of positions [0, end) that `cache` holds and the cache lacks."""
        if not self.enabled:
            return
        blocks = min(end // BLOCK_TOKENS, len(hashes))
        for i in range(blocks):
            if hashes[i] in self._blocks:
                continue
            lo = i * BLOCK_TOKENS
            block = _Block(
                tuple(token_ids[lo : lo + BLOCK_TOKENS]),
                cache.keys[:, :, lo : lo + BLOCK_TOKENS].clone(),
                cache.values[:, :, lo : lo + BLOCK_TOKENS].clone(),
            )
            self._blocks[hashes[i]] = block
            self.stats.bytes += block.nbytes
        for h in reversed(hashes[:blocks]):  # deepest first, as in lookup
            self._blocks.move_to_end(h)
        self._evict()

    def count(self, hit: int, miss: int) -> None:
        self.stats.hit_tokens += hit
        self.stats.miss_tokens += miss

    def _evict(self) -> None:
        while self.stats.bytes > self.budget_bytes and self._blocks:
            _, block = self._blocks.popitem(last=False)
            self.stats.bytes -= block.nbytes
            self.stats.evicted_blocks += 1
        self.stats.blocks = len(self._blocks)

    def clear(self) -> None:
        self._blocks.clear()
        self.stats.bytes = 0
        self.stats.blocks = 0
