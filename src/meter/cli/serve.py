"""`meter serve --model DIR`: load a model folder once and serve a JSON API and a web page over it.

The page is at http://HOST:PORT/; the API's endpoints are listed by GET /api/model. Binds to 127.0.0.1 unless
--host says otherwise. Needs the serve extra: pip install -e ".[serve]".
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from meter.cli.common import add_device_arguments, finite_number
from meter.serve.limits import MB, ServeLimits


def add_command(subparsers: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    parser = subparsers.add_parser("serve", help="serve a model folder: a JSON API and a web page with heat maps")
    parser.add_argument("--model", "--checkpoint", dest="model", required=True,
                        help="a model folder, or a run folder (a finished run's best/ or model/, else its newest "
                             "checkpoint); --checkpoint as in predict and explain")  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    add_device_arguments(parser)
    default = ServeLimits()
    limits = parser.add_argument_group("limits")
    limits.add_argument("--max-body-mb", type=finite_number(0, above=True), default=default.max_body_bytes / MB,
                        help="largest request in MiB (default %(default)g)")  # fmt: skip
    limits.add_argument("--max-pixels", type=int, default=default.max_pixels,
                        help="largest image in pixels, read before decoding (default %(default)s)")  # fmt: skip
    limits.add_argument("--max-batch", type=int, default=default.max_batch,
                        help="requests run in one forward pass (default %(default)s)")  # fmt: skip
    limits.add_argument("--max-wait-ms", type=finite_number(0), default=default.max_wait_ms,
                        help="ms a request waits for others to batch with (default %(default)g)")  # fmt: skip
    limits.add_argument("--max-pending", type=int, default=default.max_pending,
                        help="requests queued or running; past it: 503 (default %(default)s)")  # fmt: skip
    return run


def limits_of(args: argparse.Namespace) -> ServeLimits:
    if int(args.max_body_mb * MB) < 1:  # else ServeLimits named --max-body-bytes, which the command does not have
        from meter.errors import ConfigError

        raise ConfigError(f"--max-body-mb {args.max_body_mb:g} is less than a byte")
    from meter.data.images import check_pixel_limit

    check_pixel_limit(args.max_pixels, "--max-pixels")  # above Pillow's guard: images it refuses all the same
    return ServeLimits(
        max_body_bytes=int(args.max_body_mb * MB), max_pixels=args.max_pixels, max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms, max_pending=args.max_pending,
    )  # fmt: skip


def check_port_free(host: str, port: int) -> None:
    import errno
    import socket

    from meter.errors import ConfigError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise ConfigError(f"--host {host}: not an address of this machine ({error.strerror})") from None
    family, kind, protocol, _, address = infos[0]
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a port in TIME_WAIT is free
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRNOTAVAIL:  # the address, not the port
                raise ConfigError(f"--host {host}: not an address of this machine ({error.strerror}); give one of its"
                                  " own, 127.0.0.1 or 0.0.0.0 (every address)") from None  # fmt: skip
            raise ConfigError(f"--port {port}: cannot listen on {host}:{port} ({error.strerror}); give another "
                              "--port, or stop what serves there") from None  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from meter.errors import ConfigError

    try:
        from meter.serve.server import build_app, serve
    except ImportError as error:
        raise ConfigError(
            f'meter serve needs the serve extra ({error.name} is missing): pip install -e ".[serve]"'
        ) from None
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port} must be from 0 to 65535")
    limits = limits_of(args)
    check_port_free(args.host, args.port)  # before the model loads: a busy port was uvicorn's traceback, exit 3
    app = build_app(args.model, limits, args.device, args.precision)
    serve(app, args.host, args.port)
    return 0
