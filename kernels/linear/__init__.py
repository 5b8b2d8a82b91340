"""Chunked gated delta rule family and its sequence parallelism (LASP-2).

Layout per operator as in flash-linear-attention: ``naive.py`` holds the token-by-token
reference, ``chunk.py`` the chunked form. All variants share one recurrence
(:mod:`._recurrent`) and one chunked core (:mod:`._chunk`). See docs/kernels-linear.md.
"""

from .gated_delta_rule import chunk_gated_delta_rule, recurrent_gated_delta_rule
from .gdn2 import chunk_gdn2, recurrent_gdn2
from .kda import chunk_kda, recurrent_kda
from .kla import chunk_kla, kla_beta, recurrent_kla
from .lasp2 import lasp2_gated_delta_rule, lasp2_gdn2, lasp2_kda

__all__ = [
    "chunk_gated_delta_rule",
    "recurrent_gated_delta_rule",
    "chunk_kda",
    "recurrent_kda",
    "chunk_kla",
    "recurrent_kla",
    "kla_beta",
    "chunk_gdn2",
    "recurrent_gdn2",
    "lasp2_gated_delta_rule",
    "lasp2_kda",
    "lasp2_gdn2",
]
