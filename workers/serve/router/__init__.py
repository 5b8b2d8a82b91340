"""The pool's router: one OpenAI front door over many replicas (no torch).

- ``config``      ``RouterConfig`` (pydantic only, rendered by the operator)
- ``plugins``     filter -> score -> pick: routable / not-tried filters, prefix and load
                  scorers, max-score and round-robin pickers, ``pipeline_for(policy)``
- ``endpoints``   the registry: registered + probed serving + not routed away = routable
- ``backend``     one streamed attempt on one replica, errors as two values
- ``generation``  one request: pick, forward, retry, migrate mid-stream
- ``server``      the HTTP front door (``Router``)
"""

from .config import RouterConfig
from .endpoints import Endpoints
from .server import REPLICA_HEADER, Router

__all__ = ["RouterConfig", "Endpoints", "Router", "REPLICA_HEADER"]
