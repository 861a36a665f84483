"""The prefix cache's LRU, without a model: planning's lookup only reads; the runner's copy marks blocks used."""

import torch

from seedstream.server.engine.kv_cache import SequenceKVCache
from seedstream.server.engine.prefix_cache import BLOCK_TOKENS, PrefixCache, chain_hashes

BLOCK_BYTES = 2 * BLOCK_TOKENS * 2 * 4  # keys and values of one layer, one head, head_dim 2, float32


def _filled(tokens: list[int]) -> SequenceKVCache:
    """A one-layer cache whose every position holds its own token id: a copied block shows where it came from."""
    cache = SequenceKVCache(1, 1, 2, torch.device("cpu"), torch.float32)
    cache.reserve(len(tokens))
    ids = torch.tensor(tokens, dtype=torch.float32)
    cache.keys[0, 0, : len(tokens)] = ids[:, None]
    cache.values[0, 0, : len(tokens)] = -ids[:, None]
    cache.length = len(tokens)
    return cache


def _stored(cache: PrefixCache, tokens: list[int]) -> list[bytes]:
    hashes = chain_hashes(tokens, len(tokens) // BLOCK_TOKENS)
    cache.store(tokens, hashes, _filled(tokens), len(tokens))
    return hashes


def test_lookup_reads_only_and_copy_marks_the_blocks_used():
    cache = PrefixCache(4 * BLOCK_BYTES)
    a, b = list(range(100, 132)), list(range(200, 232))  # two blocks each
    a_hashes, b_hashes = _stored(cache, a), _stored(cache, b)
    order = list(cache._blocks)
    assert cache.lookup(a, a_hashes, 0, len(a)) == len(a)
    assert list(cache._blocks) == order  # planning changed nothing

    target = SequenceKVCache(1, 1, 2, torch.device("cpu"), torch.float32)
    cache.copy_into(target, a_hashes, 0, len(a))
    assert torch.equal(target.keys[0, 0, : len(a), 0], torch.tensor(a, dtype=torch.float32))
    assert list(cache._blocks)[-2:] == [a_hashes[1], a_hashes[0]]  # deepest first: the prefix's root is newest

    _stored(cache, list(range(300, 316)))  # one more block: the least recently used one goes, B's leaf
    assert cache.stats.evicted_blocks == 1
    assert cache.lookup(a, a_hashes, 0, len(a)) == len(a)
    assert cache.lookup(b, b_hashes, 0, len(b)) == BLOCK_TOKENS


def test_without_the_copy_the_looked_up_prefix_is_the_one_evicted():
    """The control: lookup alone does not protect a prefix (so the test above can fail)."""
    cache = PrefixCache(4 * BLOCK_BYTES)
    a, b = list(range(100, 132)), list(range(200, 232))
    a_hashes, _ = _stored(cache, a), _stored(cache, b)
    cache.lookup(a, a_hashes, 0, len(a))
    _stored(cache, list(range(300, 316)))
    assert cache.lookup(a, a_hashes, 0, len(a)) == BLOCK_TOKENS
