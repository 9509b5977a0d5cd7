"""Response headers that confine the page: everything it loads comes from the console
itself, no inline script or style runs, nothing frames it, and no Referer leaves it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # errors raised by aiohttp (404, 405) get them too
        exc.headers.update(HEADERS)
        raise
    # A streamed response (server-sent events) has sent its headers already: set at prepare.
    if not response.prepared:
        response.headers.update(HEADERS)
    return response


async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """The same headers on responses that are prepared before the middleware sees them."""
    for key, value in HEADERS.items():
        response.headers.setdefault(key, value)
