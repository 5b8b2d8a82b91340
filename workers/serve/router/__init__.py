"""The pool's router: one OpenAI front door over many replicas (no torch).

- ``config``      ``RouterConfig`` (pydantic only, rendered by the operator)
- ``plugins``     filter -> score -> pick: routable / not-tried filters, prefix and load
                  scorers, max-score and round-robin pickers, ``pipeline_for(policy)``
- ``endpoints``   the registry: registered + probed serving + not routed away = routable
- ``backend``     one streamed attempt on one replica, errors as two values
- ``generation``  one request: pick, forward, retry, migrate mid-stream
- ``server``      the HTTP front door (``Router``)

This package imports nothing at import time, so ``router.config`` stays light for the operator.
"""
