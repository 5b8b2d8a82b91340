"""Gated DeltaNet: the delta rule with a scalar decay per token and head."""

from .chunk import chunk_gated_delta_rule
from .naive import recurrent_gated_delta_rule

__all__ = ["chunk_gated_delta_rule", "recurrent_gated_delta_rule"]
