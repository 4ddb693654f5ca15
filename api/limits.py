"""A request-body size limit (Starlette has none): job JSON is small, anything larger is refused early."""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException

MAX_BODY_BYTES = 1 << 20


class BodySizeLimit:
    """Pure ASGI middleware: 413 on a Content-Length over the limit, or once a streamed body exceeds it."""

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(scope, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise HTTPException(413, f"request body over {self.max_bytes} bytes")  # FastAPI re-raises these
            return message

        await self.app(scope, limited, send)

    async def _refuse(self, scope, send) -> None:
        body = json.dumps(
            {"type": "https://fda-merge.dev/problems/body_too_large", "title": "Content Too Large", "status": 413,
             "detail": f"request body over {self.max_bytes} bytes", "instance": scope.get("path", ""),
             "code": "body_too_large"}
        ).encode()  # fmt: skip
        headers = [(b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
