"""The KV cache manager: block counts, reference counts, prefix hits and LRU eviction."""

from __future__ import annotations

from shardwright.workers.serve.kv_cache import KVCacheManager, hash_blocks
from shardwright.workers.serve.request import Request


def _request(rid: str, tokens: list[int]) -> Request:
    return Request(rid, tokens)


def _admit(kv: KVCacheManager, request: Request) -> list[int]:
    """What the scheduler does for a waiting request whose prompt fits in one chunk."""
    hits, num_hit = kv.get_computed_blocks(request)
    assert kv.allocate_slots(request, request.num_tokens - num_hit, hits) is not None
    request.num_computed_tokens = request.num_tokens
    return kv.block_ids(request.request_id)


def test_hashes_chain_each_block_to_its_prefix():
    a = hash_blocks(list(range(12)), 4)
    assert len(a) == 3 and len(set(a)) == 3
    assert hash_blocks(list(range(9)), 4) == a[:2]  # a partial block has no hash
    assert hash_blocks(list(range(12)), 4, known=a[:1]) == a
    b = hash_blocks([99, *range(1, 12)], 4)
    assert all(x != y for x, y in zip(a, b, strict=True))  # a changed first block renames all


def test_allocation_covers_the_tokens_and_free_returns_every_block():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    r = _request("a", list(range(10)))
    assert len(_admit(kv, r)) == 3
    assert kv.usage == 3 / 8
    r.output_token_ids += [5, 6, 7]
    assert kv.allocate_slots(r, 2) == []  # positions 10, 11 fit the third block
    r.num_computed_tokens = 12
    assert kv.allocate_slots(r, 1) is not None and len(kv.block_ids("a")) == 4
    kv.free(r)
    assert kv.usage == 0 and kv.pool.num_free == 8


def test_a_request_that_does_not_fit_changes_nothing():
    kv = KVCacheManager(num_blocks=4, block_size=4)
    _admit(kv, _request("a", list(range(12))))
    before = (kv.pool.num_free, dict(kv.pool.cached))
    big = _request("b", list(range(50, 58)))
    assert kv.allocate_slots(big, 8) is None
    assert (kv.pool.num_free, dict(kv.pool.cached)) == before
    assert kv.block_ids("b") == []


def test_prefix_hit_reuses_full_blocks_of_a_finished_request():
    kv = KVCacheManager(num_blocks=16, block_size=4)
    a = _request("a", list(range(12)))
    blocks_a = _admit(kv, a)
    kv.free(a)
    b = _request("b", [*range(8), 40, 41, 42])
    hits, num_hit = kv.get_computed_blocks(b)
    assert num_hit == 8 and [h.block_id for h in hits] == blocks_a[:2]
    assert kv.allocate_slots(b, b.num_tokens - num_hit, hits) is not None
    assert kv.block_ids("b")[:2] == blocks_a[:2]


def test_the_last_token_is_always_left_to_compute():
    kv = KVCacheManager(num_blocks=16, block_size=4)
    a = _request("a", list(range(12)))
    _admit(kv, a)
    kv.free(a)
    _, num_hit = kv.get_computed_blocks(_request("b", list(range(12))))
    assert num_hit == 8  # block 3 holds the last token: its logits are needed


def test_shared_blocks_are_counted_and_survive_one_holder_leaving():
    kv = KVCacheManager(num_blocks=16, block_size=4)
    a, b = _request("a", list(range(9))), _request("b", list(range(9)))
    _admit(kv, a)
    _admit(kv, b)
    shared = kv.block_ids("a")[:2]
    assert kv.block_ids("b")[:2] == shared
    assert [kv.pool.blocks[i].ref_cnt for i in shared] == [2, 2]
    kv.free(a)
    assert [kv.pool.blocks[i].ref_cnt for i in shared] == [1, 1]
    assert all(i not in kv.pool.free for i in shared)


def test_eviction_takes_the_least_recently_freed_blocks_and_forgets_their_hashes():
    kv = KVCacheManager(num_blocks=4, block_size=4)
    a = _request("a", list(range(8)))
    _admit(kv, a)
    kv.free(a)  # both blocks free but cached; the tail block goes first
    c = _request("c", list(range(100, 110)))
    _admit(kv, c)  # needs 3 blocks: the 2 never used, then a's second block
    hits, num_hit = kv.get_computed_blocks(_request("d", list(range(9))))
    assert num_hit == 4  # a's first block is still cached, its second was evicted
    assert len(kv.pool.cached) == 1 + 2  # a's first, c's two full blocks
