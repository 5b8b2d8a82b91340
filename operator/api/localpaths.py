"""Whether a spec's file paths (``spec.model.from``, ``spec.data.path``) are read where the
object is validated.

On one machine (``shardwright validate``, ``shardwright run``) the ranks read the same files,
so a missing or broken one is refused at once, naming the field. In a cluster the files live
in the rank pods' volumes, which the operator does not mount: its chart sets
``SHARDWRIGHT_CHECK_LOCAL_PATHS=0``, admission then checks only their form, and each rank reads
them when it starts (a bad one fails the generation with the same message), as for URIs.
"""

from __future__ import annotations

import os

ENV = "SHARDWRIGHT_CHECK_LOCAL_PATHS"


def checked_here() -> bool:
    """True unless this process validates for ranks that read their files elsewhere."""
    return os.environ.get(ENV, "1") != "0"
