"""The ASGI middleware that holds request bodies to a size, before anything parses them."""

from __future__ import annotations

import asyncio

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meter.serve.limits import MB


class BodyLimit:
    """Answers 413 to a request whose body is over `max_bytes`, by its Content-Length or, for a chunked one, by
    counting. A body within the limit is read here and handed on whole. An oversized body is read and thrown away
    (up to `drain_bytes`) before answering, so that the client, still sending, reads the 413 instead of a reset
    connection. A body that stalls for `idle_s`, or is not whole after `total_s`, is answered 408."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, drain_bytes: int | None = None, idle_s: float = 30.0, total_s: float = 300.0
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.drain_bytes = drain_bytes if drain_bytes is not None else 4 * max_bytes
        self.idle_s = idle_s  # a body that sends nothing for this long is answered 408
        self.total_s = total_s  # nor one that is not whole after this long (a byte now and then)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        too_large = declared is not None and declared.isdigit() and int(declared) > self.max_bytes
        chunks: list[bytes] = []
        received, more = 0, True
        deadline = asyncio.get_running_loop().time() + self.total_s
        while more and received <= self.drain_bytes:
            left = deadline - asyncio.get_running_loop().time()
            try:
                async with asyncio.timeout(min(self.idle_s, max(left, 0))):
                    message = await receive()
            except TimeoutError:  # a stalled upload: it would hold its place in --max-pending for as long as it likes
                what = f"sent nothing for {self.idle_s:g} s" if left > self.idle_s else f"took over {self.total_s:g} s"
                await _closing(408, f"the request body {what}; send it again")(scope, receive, send)
                return
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
            await _closing(413, error)(scope, receive, send)
            return
        body = b"".join(chunks)
        boundary = _multipart_boundary(dict(scope["headers"]).get(b"content-type", b""))
        # cut short, the form parser would take the parts it got and name a field it lost as missing; the closing
        # boundary may be followed by an epilogue of any length (RFC 2046), which the parser ignores
        if boundary and not body.strip():
            await _closing(400, "the request body is empty: send the form's fields")(scope, receive, send)
            return
        if boundary and body.find(b"--" + boundary) == -1:  # not "cut short": the header names another boundary
            named = boundary.decode(errors="replace")
            error = f"the multipart body has no part with the boundary its Content-Type names ({named!r}): the " \
                    "header is not this body's"  # fmt: skip
            await _closing(400, error)(scope, receive, send)
            return
        if boundary and body.rfind(b"--" + boundary + b"--") == -1:
            error = "the multipart body is cut short (no closing boundary): send it again"
            await _closing(400, error)(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: wait for the client to go (a disconnect)
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def _multipart_boundary(content_type: bytes) -> bytes | None:
    """The boundary of a multipart/form-data body, from its Content-Type header."""
    kind, _, parameters = content_type.partition(b";")
    if kind.strip().lower() != b"multipart/form-data":
        return None
    for parameter in parameters.split(b";"):
        name, _, value = parameter.strip().partition(b"=")
        if name.strip().lower() == b"boundary" and value.strip(b' "'):
            return value.strip(b' "')
    return None


def _closing(status: int, error: str) -> JSONResponse:
    """An error answered before the body was read whole: the connection closes after it."""
    return JSONResponse({"error": error, "status": status}, status_code=status, headers={"Connection": "close"})
