"""The HTTP surface every service serves on loopback, whatever its transport.

`GET /healthz` and `GET /metrics` on every service; `POST` and `DELETE /admin/fault`
on generators. Errors leave as JSON bodies that name the cause: a bad body is a `400`
saying which field and why, an oversized one a `413`, a failed call to the peer a
`503` (or `504` for a timeout) carrying the peer error's `cause`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from service_core import contract
from service_core.errors import ContractError, PeerError
from service_core.fault import FaultInjector, FaultSpec
from service_core.metrics import Registry

logger = logging.getLogger(__name__)

# The largest body any endpoint needs is a sync confirmation query of 10,000 ids
# (about 350 KiB); user-facing bodies are a few bytes. aiohttp answers 413 past this.
MAX_BODY_BYTES = 512 * 1024

BodyT = TypeVar("BodyT", bound=msgspec.Struct)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(payload: Any, *, status: int = 200) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(payload),
        status=status,
        content_type="application/json",
    )


def error_response(status: int, error: str, detail: str, **extra: Any) -> web.Response:
    return json_response({"error": error, "detail": detail, **extra}, status=status)


async def read_body(
    request: web.Request, kind: type[BodyT], *, empty_means_default: bool = False
) -> BodyT:
    """The request's JSON body as a `kind`, or `ContractError` saying what is wrong."""
    data = await request.read()
    if not data.strip() and empty_means_default:
        return kind()
    return contract.decode(data, kind)


def build_app(registry: Registry) -> web.Application:
    """An aiohttp application with JSON errors and per-route request counting."""
    requests_total = registry.counter(
        "http_requests_total", "HTTP requests served, by route and status code"
    )

    @web.middleware
    async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except ContractError as exc:
            response = error_response(
                400, "invalid_body", str(exc), field=exc.field or "$"
            )
        except PeerError as exc:
            response = error_response(exc.http_status, exc.cause, str(exc))
        except web.HTTPRequestEntityTooLarge as exc:
            response = error_response(
                413,
                "body_too_large",
                f"body exceeds {MAX_BODY_BYTES} bytes ({exc.text})",
            )
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            error = exc.reason.lower().replace(" ", "_")
            response = error_response(exc.status, error, exc.text or exc.reason)
        requests_total.inc(route=_route_of(request), status=str(response.status))
        return response

    return web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[json_errors])


def _route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def fault_routes(injector: FaultInjector, registry: Registry) -> list[web.RouteDef]:
    """`POST /admin/fault` sets a fault, `DELETE /admin/fault` clears it."""
    changes = registry.counter("faults_set_total", "faults set through /admin/fault")
    registry.gauge(
        "fault_latency_ms",
        "latency added to each unit of work by the current fault",
        lambda: [({}, injector.spec.latency_ms)],
    )
    registry.gauge(
        "fault_error_rate",
        "share of work failed on purpose by the current fault",
        lambda: [({}, injector.spec.error_rate)],
    )

    async def set_fault(request: web.Request) -> web.Response:
        spec = await read_body(request, FaultSpec)
        injector.spec = spec
        changes.inc()
        logger.info(
            "fault set: latency_ms=%s error_rate=%s", spec.latency_ms, spec.error_rate
        )
        return json_response(msgspec.structs.asdict(spec))

    async def clear_fault(request: web.Request) -> web.Response:
        injector.spec = FaultSpec()
        logger.info("fault cleared")
        return json_response(msgspec.structs.asdict(injector.spec))

    async def show_fault(request: web.Request) -> web.Response:
        return json_response(msgspec.structs.asdict(injector.spec))

    return [
        web.post("/admin/fault", set_fault),
        web.delete("/admin/fault", clear_fault),
        web.get("/admin/fault", show_fault),
    ]
