"""The built-in serving engine and its OpenAI-compatible HTTP server (torch only).

Split as vLLM v1's engine is, one direction of calls, each room testable alone:

- ``kv_cache``      the KV cache manager: fixed-size blocks, allocation, freeing, prefix caching
- ``scheduler``     one ``schedule()`` per iteration filling a token budget (SARATHI-style)
- ``paged``         the transformer's incremental forward over a paged K/V cache
- ``runner``        the model runner: executes a plan, samples (greedy or seeded)
- ``engine``        schedule -> execute -> update, and ``generate``
- ``weights``       the model's weights: from a seed or a TrainingJob checkpoint

Around it, one replica's server: ``engine_thread`` (the engine on its own thread),
``protocol`` (OpenAI request parsing, errors, response bodies), ``tokenizer`` (byte-level),
``metrics`` (vLLM's names), ``stats`` (recent latencies for ``/status``), ``server``.
``config`` holds ``EngineConfig`` / ``ServeConfig`` (pydantic only, renderable by the operator).

This package imports nothing at import time, so ``serve.config`` stays free of torch.
"""
