"""The built-in serving engine and its OpenAI-compatible HTTP server (torch only).

Split as vLLM v1's engine is, one direction of calls, each room testable alone:

- ``kv_cache``   the KV cache manager: fixed-size blocks, allocation, freeing, prefix caching
- ``scheduler``  one ``schedule()`` per iteration filling a token budget (SARATHI-style)
- ``paged``      the transformer's incremental forward over a paged K/V cache
- ``runner``     the model runner: executes a plan, samples (greedy or seeded)
- ``engine``     schedule -> execute -> update, and ``generate``
- ``config``     ``EngineConfig`` / ``ServeConfig`` (pydantic only, renderable by the operator)

This package imports nothing at import time, so ``serve.config`` stays free of torch.
"""
