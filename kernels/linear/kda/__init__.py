"""Kimi Delta Attention: the gated delta rule with a decay per key channel."""

from .chunk import chunk_kda
from .naive import recurrent_kda

__all__ = ["chunk_kda", "recurrent_kda"]
