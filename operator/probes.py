"""The kubelet's probes of every operator replica, leader or standby: plain HTTP on the
health port. Kopf's own liveness endpoint runs only where Kopf runs (the leader), so a
standby would fail its liveness probe and be restarted for ever.

``/healthz``: 200 while the event loop answers (liveness).
``/readyz``: 200 once the admission webhook serves the current certificate (readiness:
the Service sends the API server's calls only to ready replicas); with no webhook, at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp.web


async def serve(addr: str, port: int, ready: Callable[[], Awaitable[bool]] | None) -> aiohttp.web.AppRunner:
    """Listen on ``addr:port``; the caller cleans the returned runner up."""

    async def healthz(_: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.Response(text="ok")

    async def readyz(_: aiohttp.web.Request) -> aiohttp.web.Response:
        if ready is None or await ready():
            return aiohttp.web.Response(text="ok")
        return aiohttp.web.Response(status=503, text="the admission webhook does not serve the current certificate yet")

    app = aiohttp.web.Application()
    app.add_routes([aiohttp.web.get("/healthz", healthz), aiohttp.web.get("/readyz", readyz)])
    runner = aiohttp.web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, addr, port, reuse_address=True).start()
    return runner
