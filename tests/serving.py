"""Starting `meter serve`'s app from tests: a real uvicorn server on a free loopback port, on a thread."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from meter.serve.limits import ServeLimits
from meter.serve.server import build_app, running
from tests.browser import chromium_page

IMAGE = "images/val2014/COCO_val2014_000000000055.png"


@contextmanager
def serving(model: Path, **limits: float) -> Iterator[str]:
    """The base URL of a server of `model` with the given limits (ServeLimits' fields), stopped on exit."""
    with running(build_app(model, ServeLimits(**limits), device="cpu")) as url:
        yield url


def png_bytes(path: Path) -> bytes:
    return Path(path).read_bytes()


def upload(path: Path, name: str = "image") -> dict[str, tuple[str, io.BytesIO, str]]:
    return {name: (Path(path).name, io.BytesIO(png_bytes(path)), "image/png")}


def ask_in_browser(url: str, image: Path, question: str, screenshot: Path, layer: str = "mean") -> dict[str, object]:
    """Drives the page in headless Chromium as a person would: chooses the image, types the question, asks, waits
    for the answers and the heat map; saves a screenshot. Returns what the page shows."""
    with chromium_page(1400, 640) as (page, errors):
        page.goto(url)
        page.wait_for_selector("#task option", state="attached")  # the model's description has arrived
        page.set_input_files("#file", str(image))
        page.fill("#text", question)
        page.click("#go")
        page.wait_for_selector("#answers li")
        page.wait_for_function("document.getElementById('heatmap').naturalWidth > 0")
        if layer != "mean":
            page.select_option("#layer", layer)
        page.screenshot(path=str(screenshot), full_page=True)
        return {
            "answers": page.locator("#answers li").all_inner_texts(),
            "heatmap_width": page.evaluate("document.getElementById('heatmap').naturalWidth"),
            "heatmap_src": page.get_attribute("#heatmap", "src") or "",
            "caption": page.inner_text("#heatmap-caption"),
            "error": page.inner_text("#error"),
            "console_errors": list(errors),
        }
