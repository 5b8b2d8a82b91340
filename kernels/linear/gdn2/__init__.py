"""Gated DeltaNet-2: channel-wise decay with separate erase (key) and write (value) gates."""

from .chunk import chunk_gdn2
from .naive import recurrent_gdn2

__all__ = ["chunk_gdn2", "recurrent_gdn2"]
