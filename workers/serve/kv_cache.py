"""The KV cache manager: fixed-size blocks, their allocation and freeing, and prefix caching.

The cache is ``num_blocks`` blocks of ``block_size`` token slots; a request holds a list of
blocks (its block table) covering its computed tokens. A *full* block is named by a hash of
its tokens chained with its parent block's hash, so equal hashes mean equal prefixes up to
and including that block. Freed blocks keep their hash and sit in an LRU free queue: a later
request with the same prefix takes them back instead of recomputing them, and a block is
only forgotten when the pool hands it out again (least recently freed first).

This is vLLM v1's ``KVCacheManager`` + ``BlockPool`` reduced to one attention type; the
manager owns block bookkeeping and nothing else: it never sees tensors (the model runner
holds the K/V tensors, indexed by the block ids handed out here).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import struct
from collections.abc import Sequence

from .request import Request

#: Parent hash of a sequence's first block; a model revision can be mixed in via ``root``.
ROOT_HASH = hashlib.sha256(b"shardwright-prefix-root").digest()


def hash_block(parent: bytes, tokens: Sequence[int]) -> bytes:
    """The hash of one full block: sha256 over its parent's hash and its token ids."""
    h = hashlib.sha256(parent)
    h.update(struct.pack(f"<{len(tokens)}q", *tokens))
    return h.digest()


def hash_blocks(token_ids: Sequence[int], block_size: int, *, root: bytes = ROOT_HASH, known: Sequence[bytes] = ()) -> list[bytes]:
    """Chained hashes of every full block of ``token_ids``; ``known`` leading ones are reused.

    Stable across processes (a router can compute the same names from a prompt).
    """
    hashes = list(known)
    parent = hashes[-1] if hashes else root
    for i in range(len(hashes), len(token_ids) // block_size):
        parent = hash_block(parent, token_ids[i * block_size : (i + 1) * block_size])
        hashes.append(parent)
    return hashes


@dataclasses.dataclass(eq=False)
class KVCacheBlock:
    block_id: int
    #: Requests holding this block; 0 means it is in the free queue (maybe still cached).
    ref_cnt: int = 0
    block_hash: bytes | None = None


class BlockPool:
    """All blocks, the LRU queue of free ones, and the map from block hash to cached block."""

    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be at least 1, got {num_blocks}")
        self.blocks = [KVCacheBlock(i) for i in range(num_blocks)]
        # Insertion order is eviction order: the front was freed longest ago.
        self.free: collections.OrderedDict[int, KVCacheBlock] = collections.OrderedDict((b.block_id, b) for b in self.blocks)
        self.cached: dict[bytes, KVCacheBlock] = {}

    @property
    def num_free(self) -> int:
        return len(self.free)

    def take(self, n: int) -> list[KVCacheBlock]:
        """``n`` fresh blocks from the front of the free queue, evicting their cached hashes."""
        if n > len(self.free):
            raise RuntimeError(f"asked for {n} blocks with {len(self.free)} free")
        out = []
        for _ in range(n):
            _, block = self.free.popitem(last=False)
            self._forget(block)
            block.ref_cnt = 1
            out.append(block)
        return out

    def touch(self, blocks: Sequence[KVCacheBlock]) -> None:
        """One more holder for each of ``blocks`` (cache hits), taking free ones off the queue."""
        for block in blocks:
            if block.ref_cnt == 0:
                del self.free[block.block_id]
            block.ref_cnt += 1

    def release(self, blocks: Sequence[KVCacheBlock]) -> None:
        """One holder fewer; blocks nobody holds join the back of the free queue in this order."""
        for block in blocks:
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                self.free[block.block_id] = block

    def cache(self, block: KVCacheBlock, block_hash: bytes) -> None:
        block.block_hash = block_hash
        # Two requests may compute the same prefix at once: the first one stays the named copy.
        self.cached.setdefault(block_hash, block)

    def lookup(self, block_hash: bytes) -> KVCacheBlock | None:
        return self.cached.get(block_hash)

    def _forget(self, block: KVCacheBlock) -> None:
        if block.block_hash is not None and self.cached.get(block.block_hash) is block:
            del self.cached[block.block_hash]
        block.block_hash = None


class KVCacheManager:
    """Block tables per request: prefix lookup, slot allocation for scheduled tokens, freeing."""

    def __init__(self, *, num_blocks: int, block_size: int, enable_prefix_caching: bool = True, root: bytes = ROOT_HASH) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be at least 1, got {block_size}")
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self.root = root
        self.pool = BlockPool(num_blocks)
        self.req_to_blocks: dict[str, list[KVCacheBlock]] = {}
        #: How many leading blocks of each request are already named in the prefix cache.
        self._num_named: dict[str, int] = {}
        #: Prompt tokens looked up and found in the prefix cache (vLLM's queries and hits).
        self.prefix_queries = 0
        self.prefix_hits = 0

    @property
    def usage(self) -> float:
        """Fraction of blocks held by requests (cached but free blocks count as free)."""
        return 1.0 - self.pool.num_free / self.num_blocks

    def block_ids(self, request_id: str) -> list[int]:
        return [b.block_id for b in self.req_to_blocks.get(request_id, ())]

    def get_computed_blocks(self, request: Request) -> tuple[list[KVCacheBlock], int]:
        """The cached blocks of the longest prefix of ``request`` and how many tokens they hold.

        At least the last token is always left to compute: its logits pick the next token.
        """
        if not self.enable_prefix_caching:
            return [], 0
        tokens = request.all_token_ids
        request.block_hashes = hash_blocks(tokens, self.block_size, root=self.root, known=request.block_hashes)
        hits: list[KVCacheBlock] = []
        for block_hash in request.block_hashes[: (len(tokens) - 1) // self.block_size]:
            block = self.pool.lookup(block_hash)
            if block is None:
                break
            hits.append(block)
        return hits, len(hits) * self.block_size

    def record_lookup(self, num_tokens: int, num_hit: int) -> None:
        """Count one admitted request's lookup (a request that waits is looked up again)."""
        if self.enable_prefix_caching:
            self.prefix_queries += num_tokens
            self.prefix_hits += num_hit

    def reset_stats(self) -> None:
        self.prefix_queries = self.prefix_hits = 0

    def allocate_slots(self, request: Request, num_new_tokens: int, new_computed_blocks: Sequence[KVCacheBlock] = ()) -> list[int] | None:
        """Blocks for ``num_new_tokens`` more tokens after the computed ones; None if they do not fit.

        ``new_computed_blocks`` are prefix-cache hits from ``get_computed_blocks``, taken
        into the request's table here. Returns the ids of the newly allocated blocks.
        Nothing changes when the answer is None, so the scheduler can preempt and retry.
        """
        held = self.req_to_blocks.setdefault(request.request_id, [])
        total = request.num_computed_tokens + len(new_computed_blocks) * self.block_size + num_new_tokens
        needed = -(-total // self.block_size) - len(held) - len(new_computed_blocks)
        # A hit on a free (cached) block takes it off the free queue too.
        reclaimed = sum(1 for b in new_computed_blocks if b.ref_cnt == 0)
        if needed > self.pool.num_free - reclaimed:
            return None
        self.pool.touch(new_computed_blocks)
        held.extend(new_computed_blocks)
        fresh = self.pool.take(max(needed, 0))
        held.extend(fresh)
        if self.enable_prefix_caching:
            self._name_full_blocks(request, held, total)
        return [b.block_id for b in fresh]

    def free(self, request: Request) -> None:
        """Give back every block of ``request``; its tail blocks become the first to evict."""
        blocks = self.req_to_blocks.pop(request.request_id, [])
        self._num_named.pop(request.request_id, None)
        self.pool.release(list(reversed(blocks)))

    def _name_full_blocks(self, request: Request, held: list[KVCacheBlock], num_tokens: int) -> None:
        """Enter the blocks completed by ``num_tokens`` computed tokens into the prefix cache.

        The tokens are computed in the same step that allocated them; a request that hits
        these blocks in that step reads them after this step's writes (layer by layer).
        """
        full = min(num_tokens, request.num_tokens) // self.block_size
        start = self._num_named.get(request.request_id, 0)
        if full <= start:
            return
        tokens = request.all_token_ids[: full * self.block_size]
        request.block_hashes = hash_blocks(tokens, self.block_size, root=self.root, known=request.block_hashes[:full])
        for i in range(start, full):
            if held[i].block_hash is None:
                self.pool.cache(held[i], request.block_hashes[i])
        self._num_named[request.request_id] = full
