"""Sequence-parallel softmax attention with exact, hand-written gradients.

All tensors are ``[batch, heads, local_seq, head_dim]`` shards as in
``scaled_dot_product_attention``; ``q`` may have more heads than ``k``/``v`` (GQA).

- :func:`ring_attention`: K/V travel a ring; ``"zigzag"`` (default) or ``"contiguous"``.
- :func:`ulysses_attention`: all-to-all to head shards of the full sequence; contiguous.
- :func:`tokenring_attention`: queries travel, partial results return to their owner;
  contiguous.
- :func:`shard_sequence` / :func:`gather_sequence`: full sequence <-> this rank's shard.

Every kernel takes ``segments`` (int64 ``[batch, local_seq]``, document ids in q's layout)
for packed sequences: a query then attends only keys of its own document.
"""

from .layout import gather_sequence, shard_sequence
from .ring import ring_attention
from .tokenring import tokenring_attention
from .ulysses import ulysses_attention

__all__ = [
    "ring_attention",
    "ulysses_attention",
    "tokenring_attention",
    "shard_sequence",
    "gather_sequence",
]
