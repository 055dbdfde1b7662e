"""The web page in a real browser: headless Chromium (the system's) driven by Playwright against a real server."""

import pytest

from tests.browser import needs_chromium
from tests.serving import IMAGE, ask_in_browser, serving

pytestmark = needs_chromium


@pytest.mark.slow
def test_page_shows_the_answers_and_the_heat_map_of_an_uploaded_image(micro_checkpoints, shapes_tasks_world, tmp_path):
    screenshot = tmp_path / "page.png"
    with serving(micro_checkpoints("vqa")) as url:
        shown = ask_in_browser(url, shapes_tasks_world / IMAGE, "What color is the circle?", screenshot)
    assert shown["error"] == "" and shown["console_errors"] == [] and len(shown["answers"]) == 5
    assert all(": " in answer for answer in shown["answers"])  # "red: 0.512"
    assert shown["heatmap_src"].startswith("data:image/png;base64,") and shown["heatmap_width"] == 384
    assert shown["caption"].startswith("gradcam map for ")
    assert screenshot.stat().st_size > 10_000
    print(f"screenshot: {screenshot}")
