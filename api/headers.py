"""Security headers on every response; pages get a Content-Security-Policy of their own.

The dashboard and the docs pages load scripts and styles only from this origin (no inline script),
talk only to this origin, and refuse to be framed (clickjacking). API responses are never cached.
"""

from __future__ import annotations

COMMON = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}
LOCKED = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
PAGE = "img-src 'self' data: blob:; connect-src 'self'; font-src 'self' data:; " + LOCKED.removeprefix(
    "default-src 'none'; "
)
CSP = {
    "/dashboard": f"default-src 'none'; script-src 'self'; style-src 'self'; {PAGE}",
    "/docs": f"default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; {PAGE}",
    # ReDoc builds its styles at run time and parses the document in a blob: worker
    "/redoc": f"default-src 'none'; script-src 'self' blob:; worker-src blob:; style-src 'self' 'unsafe-inline'; {PAGE}",
}


def policy_for(path: str) -> str:
    return next((csp for prefix, csp in CSP.items() if path == prefix or path.startswith(prefix + "/")), LOCKED)


class SecurityHeaders:
    """Pure ASGI: adds the headers to the response start, without buffering bodies (SSE streams pass)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        extra = {**COMMON, "content-security-policy": policy_for(path)}
        if path.startswith("/v1/"):
            extra["cache-control"] = "no-store"

        async def with_headers(message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                added = [(k.encode(), v.encode()) for k, v in extra.items() if k.encode() not in present]
                message = {**message, "headers": [*message.get("headers", []), *added]}
            await send(message)

        await self.app(scope, receive, with_headers)
