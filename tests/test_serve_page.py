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
    assert shown["caption"].startswith('gradcam map for the answer "')
    assert screenshot.stat().st_size > 10_000
    print(f"screenshot: {screenshot}")


@pytest.mark.slow
def test_page_shows_no_empty_panel_and_no_answers_of_an_earlier_image(micro_checkpoints, shapes_tasks_world):
    """The result panel showed on load (its display rule beat `hidden`: an empty box and a broken image), and after a
    new image was chosen the old image's answers and map stayed beside it."""
    from tests.browser import chromium_page

    with serving(micro_checkpoints("vqa")) as url, chromium_page(1400, 640) as (page, errors):
        page.goto(url)
        page.wait_for_selector("#task option", state="attached")
        assert not page.is_visible("#output")
        page.set_input_files("#file", str(shapes_tasks_world / IMAGE))
        page.fill("#text", "What color is the circle?")
        page.click("#go")
        page.wait_for_selector("#answers li")
        assert page.inner_text("#heatmap-caption").startswith('gradcam map for the answer "')
        images = sorted((shapes_tasks_world / IMAGE).parent.glob("*.png"))
        other = next(path for path in images if path.name not in IMAGE)
        page.set_input_files("#file", str(other))
        assert not page.is_visible("#output") and page.locator("#answers li").count() == 0
        assert list(errors) == []
