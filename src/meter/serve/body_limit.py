"""The ASGI middleware that holds request bodies to a size, before anything parses them."""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meter.serve.limits import MB


class BodyLimit:
    """Answers 413 to a request whose body is over `max_bytes`, by its Content-Length or, for a chunked one, by
    counting. A body within the limit is read here and handed on whole. An oversized body is read and thrown away
    (up to `drain_bytes`) before answering, so that the client, still sending, reads the 413 instead of a reset
    connection."""

    def __init__(self, app: ASGIApp, max_bytes: int, drain_bytes: int | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.drain_bytes = drain_bytes if drain_bytes is not None else 4 * max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        too_large = declared is not None and declared.isdigit() and int(declared) > self.max_bytes
        chunks: list[bytes] = []
        received, more = 0, True
        while more and received <= self.drain_bytes:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            received += len(message.get("body", b""))
            more = message.get("more_body", False)
            if received > self.max_bytes:
                too_large, chunks = True, []
            elif not too_large:
                chunks.append(message.get("body", b""))
        if too_large:
            limit = f"{self.max_bytes / MB:g} MiB" if self.max_bytes >= MB else f"{self.max_bytes:,} bytes"
            size = f"{int(declared):,} bytes" if declared and declared.isdigit() else f"over {self.max_bytes:,} bytes"
            error = f"the request body is {size}; this server takes at most {limit} per request"
            response = JSONResponse({"error": error, "status": 413}, status_code=413, headers={"Connection": "close"})
            await response(scope, receive, send)
            return
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: wait for the client to go (a disconnect)
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
