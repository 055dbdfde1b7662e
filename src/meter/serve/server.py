"""Running the app under uvicorn: in the foreground (`meter serve`), or on a thread (tests, benchmarks)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import uvicorn
from fastapi import FastAPI

from meter.predictor import Predictor
from meter.serve.app import create_app
from meter.serve.limits import ServeLimits
from meter.serve.service import ModelService

log = logging.getLogger(__name__)


def build_app(
    model: str | Path, limits: ServeLimits | None = None, device: str = "auto", precision: str = "auto"
) -> FastAPI:
    """Loads the model folder once and returns the app that serves it."""
    predictor = Predictor(model, device, precision=precision)
    service = ModelService(predictor, limits or ServeLimits())
    log.info("serving %s (weights %s): %s", predictor.checkpoint, service.model_id, ", ".join(service.endpoints()))
    return create_app(service)


class DrainingServer(uvicorn.Server):
    """uvicorn's server that, asked to stop (SIGINT, SIGTERM), answers the requests still queued for the model with
    a JSON 503 at once, and lets the batch running finish within the grace period."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        batcher = getattr(self.config.app.state, "batcher", None)
        if batcher is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(batcher.drain)

    async def serve(self, sockets: list | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    _loop: asyncio.AbstractEventLoop | None = None


GRACE_S = 60  # for the running batch to answer when asked to stop (uvicorn cancels requests after it: plain 500s)


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000) -> None:
    config = uvicorn.Config(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=GRACE_S)
    DrainingServer(config).run()


@contextmanager
def running(app: FastAPI, host: str = "127.0.0.1", timeout: float = 60.0) -> Iterator[str]:
    """Serves `app` on a free port of `host` from a thread; yields the base URL, and stops the server on exit."""
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start on {host} within {timeout:g} s")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
