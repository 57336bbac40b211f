"""How a service process starts, serves and stops.

Start: open what the service needs, bind the HTTP surface, connect dependencies, and
only then report ready on `/healthz`. Stop, on SIGTERM or SIGINT: report not ready,
stop the HTTP intake and let in-flight handlers finish, then let the service finish
its in-flight work, drain its connections and close its ledger. A second signal during
the stop is ignored; `shutdown_timeout_s` bounds how long the HTTP part waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from aiohttp import web

from service_core import config as config_module
from service_core.config import ServiceConfig
from service_core.errors import ConfigError
from service_core.metrics import Registry
from service_core.surface import build_app, json_response

logger = logging.getLogger(__name__)

ConfigT = TypeVar("ConfigT", bound=ServiceConfig)


class Service(Protocol):
    """The transport-specific part of a service process."""

    role: str
    registry: Registry

    def routes(self) -> list[web.RouteDef]:
        """Routes beyond `/healthz` and `/metrics`."""
        ...

    async def start(self) -> None:
        """Connect dependencies and begin work; the service is ready on return."""
        ...

    async def stop(self) -> None:
        """Finish in-flight work, drain connections, close the ledger."""
        ...

    def health(self) -> dict[str, Any]:
        """Details shown on `/healthz`, such as the peer or broker connection."""
        ...


async def serve(config: ServiceConfig, service: Service) -> None:
    """Run `service` until SIGTERM or SIGINT, then stop it gracefully."""
    ready = False
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)

    async def healthz(request: web.Request) -> web.Response:
        status = "ok" if ready else ("stopping" if stopping.is_set() else "starting")
        body = {
            "status": status,
            "role": service.role,
            "instance": config.instance,
            **service.health(),
        }
        return json_response(body, status=200 if ready else 503)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            text=service.registry.render(), content_type="text/plain", charset="utf-8"
        )

    app = build_app(service.registry)
    app.add_routes([web.get("/healthz", healthz), web.get("/metrics", metrics)])
    app.add_routes(service.routes())
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=config.shutdown_timeout_s,
    )
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, reuse_address=True)
    await site.start()
    logger.info("%s %s listening on %s", service.role, config.instance, site.name)

    try:
        # A signal while dependencies are still being connected (a broker that is
        # down) must stop the process too, so the start races the stop request.
        starting = asyncio.create_task(service.start())
        waiting = asyncio.create_task(stopping.wait())
        await asyncio.wait({starting, waiting}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            logger.info(
                "%s %s stopped before it was ready", service.role, config.instance
            )
            return
        waiting.cancel()
        starting.result()
        ready = True
        logger.info("%s %s ready", service.role, config.instance)
        await stopping.wait()
    finally:
        ready = False
        logger.info("%s %s stopping", service.role, config.instance)
        await runner.cleanup()
        await service.stop()
        logger.info("%s %s stopped", service.role, config.instance)


def main(
    kind: type[ConfigT],
    build: Callable[[ConfigT], Service],
    *,
    prog: str,
    description: str,
    argv: Sequence[str] | None = None,
) -> int:
    """Entry point shared by every service: parse settings, log, serve."""
    config = config_module.load(kind, argv, prog=prog, description=description)
    config_module.configure_logging(config.log_level, config.instance or prog)
    try:
        asyncio.run(serve(config, build(config)))
    except ConfigError as exc:
        logger.error("%s", exc)
        return 2
    return 0
