"""The HTTP side of `meter serve`: a JSON API and one web page over a loaded model (see ModelService).

Every error is JSON `{"error": message, "status": code}`: 400 a model without the needed head (the message names
the heads it has), 413 a body or an image too large, 415 not an image, 422 a truncated image, an empty text or a bad
value, 500 a model whose outputs are not finite (NaN weights), 503 the queue is full. None of them stops the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any

import anyio
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meter.errors import MeterError
from meter.explain import DEFAULT_METHOD, check_answer, check_method
from meter.serve.batcher import MicroBatcher
from meter.serve.body_limit import BodyLimit
from meter.serve.service import ModelService
from meter.serve.uploads import ServeError, check_text, read_image
from meter.setting_ranges import MAX_BEAM

log = logging.getLogger(__name__)
PAGE = resources.files("meter.serve") / "page"
DECODERS = min(4, os.cpu_count() or 1)  # uploads decoded at once
IMAGE_FIELDS = ("image", "left", "right")  # the routes' file fields


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


class CountIncoming:
    """Tells the batcher of every model request from its first byte, so that a batch waits for requests still
    being uploaded or decoded, and only for those (see MicroBatcher.expecting)."""

    def __init__(self, app: ASGIApp, batcher: MicroBatcher) -> None:
        self.app = app
        self.batcher = batcher

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].startswith("/api/"):
            batcher = self.batcher
            if batcher.incoming >= batcher.max_pending:  # 503 before its body is read: bodies and decodes held memory
                message = (f"{batcher.incoming} requests are already being read, waiting or running (the limit is "
                           f"{batcher.max_pending})")  # fmt: skip
                await error_response(503, message, {"Retry-After": "1"})(scope, receive, send)
                return
            with batcher.expecting():
                await answer_unless_gone(self.app, scope, receive, send)
        else:
            await self.app(scope, receive, send)


async def answer_unless_gone(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Runs the request's handler; a client that hangs up once its body is sent (a timeout, a closed tab) cancels
    it: its job leaves the queue unrun, and its place in --max-pending is free again."""
    body_read = asyncio.Event()
    answered = False  # once the response is sent, uvicorn's receive says "disconnect": no hang-up, the cycle's end

    async def marked_send(message: Message) -> None:
        nonlocal answered
        await send(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            answered = True

    async def counted_receive() -> Message:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            body_read.set()
        return message

    async def hung_up() -> None:
        await body_read.wait()  # the handler reads the body; only then is `receive` free to listen on
        while (await receive())["type"] != "http.disconnect":
            pass

    handler = asyncio.ensure_future(app(scope, counted_receive, marked_send))
    watcher = asyncio.ensure_future(hung_up())
    try:
        await asyncio.wait({handler, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not handler.done() and not answered:  # the client is gone: nobody to answer
            handler.cancel()
        watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await handler


def create_app(service: ModelService) -> FastAPI:
    limits = service.limits

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.batcher.start()
        yield
        await service.batcher.stop()

    app = FastAPI(title="meter serve", lifespan=lifespan, docs_url=None, redoc_url=None)  # docs pages load a CDN
    app.state.batcher = service.batcher  # the server drains it when it is asked to stop (meter.serve.server)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes, idle_s=limits.body_idle_s,
                       total_s=limits.body_total_s)  # fmt: skip
    app.add_middleware(CountIncoming, batcher=service.batcher)  # outermost: counts uploads still in transit

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, error: ServeError) -> JSONResponse:
        return error_response(error.status, error.message, {"Retry-After": "1"} if error.status == 503 else None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:  # 400 a malformed form,
        return error_response(error.status_code, str(error.detail), getattr(error, "headers", None))  # 404, 405

    @app.exception_handler(Exception)
    async def failed(request: Request, error: Exception) -> JSONResponse:  # a bug: said as JSON, logged, served on
        log.error("%s %s failed", request.method, request.url.path, exc_info=error)
        return error_response(500, f"internal error ({type(error).__name__}: {error}); the server keeps serving")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        sent = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if request.method == "POST" and sent != "multipart/form-data":  # `requests.post(url, json=...)` was told
            # only "image: Field required"
            return error_response(
                415,
                f"the request body is {sent or 'of no Content-Type'}; this API takes a "
                "multipart form, its images as files (e.g. curl -F image=@photo.jpg -F question=...; in "
                "Python requests.post(url, files={'image': open('photo.jpg', 'rb')}, data=...))",
            )
        problems = []
        for problem in error.errors():
            field = ".".join(str(part) for part in problem["loc"] if part not in ("body", "query"))
            if field in IMAGE_FIELDS and isinstance(problem.get("input"), str):  # curl -F 'image=<photo.jpg': text
                problems.append(f"{field}: send the image as a file (curl -F {field}=@photo.jpg), not as a text field")
            else:
                problems.append(f"{field}: {problem['msg']}")
        return error_response(422, "; ".join(problems))

    decoding = anyio.Semaphore(DECODERS)

    async def decoded(data: bytes, name: str) -> Image.Image:
        async with decoding:  # a 40 M-pixel image takes ~300 MB while it is decoded: a few at a time, not 40 threads
            return await run_in_threadpool(read_image, data, name, limits.max_pixels,
                                           service.predictor.images.image_size)  # fmt: skip

    async def image_of(upload: UploadFile, field: str) -> Image.Image:
        data = await upload.read()
        decode = asyncio.ensure_future(decoded(data, upload.filename or field))
        try:
            return await asyncio.shield(decode)
        except asyncio.CancelledError:  # the client left; its decode thread runs on: the request holds its decoding
            with contextlib.suppress(Exception):  # place, and its place in --max-pending, until that thread is done
                await decode
            raise

    async def text_of(text: str | None, field: str, what: str) -> tuple[str, list[str]]:
        text = check_text(text, field, what, limits.max_text_chars)
        return text, await run_in_threadpool(service.text_notes, text, field)

    def top_of(top: int) -> int:
        if not 1 <= top <= limits.max_top:
            raise ServeError(422, f"top {top} must be from 1 to {limits.max_top}")
        return top

    # HEAD too: uptime checkers and load balancers probe with it (405 read as "the server is down")
    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(PAGE / "index.html"))

    app.mount("/static", StaticFiles(directory=str(PAGE)), name="static")

    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health() -> dict[str, Any]:
        batcher = service.batcher
        return {"status": "ok", **service.identity(), "pending": batcher.pending, "incoming": batcher.incoming,
                "batches_run": batcher.batches_run}  # fmt: skip

    @app.get("/api/model")
    async def model() -> dict[str, Any]:
        return service.describe()

    @app.post("/api/vqa")
    async def vqa(
        image: Annotated[UploadFile, File()], question: Annotated[str, Form()] = "", top: Annotated[int, Form()] = 5
    ) -> dict[str, Any]:
        started = time.perf_counter()
        service.require("vqa")
        top = top_of(top)
        question, notes = await text_of(question, "question", "a question about the image")
        done = await service.submit(("vqa",), (await image_of(image, "image"), question, top))
        return service.answer(done, started, notes, answers=done.result)

    @app.post("/api/match")
    async def match(image: Annotated[UploadFile, File()], text: Annotated[str, Form()] = "") -> dict[str, Any]:
        started = time.perf_counter()
        service.require("match")
        text, notes = await text_of(text, "text", "a caption of the image")
        done = await service.submit(("match",), (await image_of(image, "image"), text))
        scores = {k: v for k, v in done.result.items() if k in ("match_score", "match_probability")}
        return service.answer(done, started, notes, **scores)

    @app.post("/api/snli-ve")
    async def snli_ve(image: Annotated[UploadFile, File()], text: Annotated[str, Form()] = "") -> dict[str, Any]:
        started = time.perf_counter()
        service.require("snli-ve")
        text, notes = await text_of(text, "text", "a hypothesis about the image")
        done = await service.submit(("snli-ve",), (await image_of(image, "image"), text))
        return service.answer(done, started, notes, entailment=done.result["entailment"])

    @app.post("/api/nlvr2")
    async def nlvr2(
        left: Annotated[UploadFile, File()], right: Annotated[UploadFile, File()], text: Annotated[str, Form()] = ""
    ) -> dict[str, Any]:
        started = time.perf_counter()
        service.require("nlvr2")
        text, notes = await text_of(text, "text", "a statement about the two images")
        pair = (await image_of(left, "left"), await image_of(right, "right"))
        done = await service.submit(("nlvr2",), (*pair, text))
        return service.answer(done, started, notes, **done.result)

    @app.post("/api/caption")
    async def caption(
        image: Annotated[UploadFile, File()], beam: Annotated[int | None, Form()] = None
    ) -> dict[str, Any]:
        started = time.perf_counter()
        service.require("caption")
        if beam is None:  # the beam the model's own evaluation used
            beam = service.predictor.description.config.captioning.beam_size
        if not 1 <= beam <= MAX_BEAM:  # as meter predict and captioning.beam_size: a model's own beam is served
            raise ServeError(422, f"beam {beam} must be from 1 (greedy) to {MAX_BEAM}")
        done = await service.submit(("caption", beam), await image_of(image, "image"))
        return service.answer(done, started, [], caption=done.result, beam=beam)

    @app.post("/api/explain")
    async def explain(
        image: Annotated[UploadFile, File()],
        text: Annotated[str, Form()] = "",
        task: Annotated[str, Form()] = "",
        method: Annotated[str, Form()] = DEFAULT_METHOD,
        answer: Annotated[str, Form()] = "",
        top: Annotated[int, Form()] = 5,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        service.require("explain")
        tasks = service.describe()["explain"]["tasks"]
        task = task or tasks[0]
        if task not in tasks:
            raise ServeError(
                400, f"task {task!r} cannot be explained by this model; it can explain: {', '.join(tasks)}"
            )
        answer = answer.strip()
        try:  # here, not in its batch: a bad answer failed its batch-mates, which then ran again one by one
            check_method(method)
            check_answer(service.predictor, task, answer or None)
        except MeterError as error:
            raise ServeError(422, str(error.args[0])) from None  # without the CLI's "config error: "
        text, notes = await text_of(text, "text", "a question or a caption")
        item = (await image_of(image, "image"), text, answer or None, top_of(top))
        done = await service.submit(("explain", task, method), item)
        heat, views = done.result
        return service.answer(done, started, notes, task=task, **heat.prediction, heatmap=heat.to_dict() | views)

    return app
