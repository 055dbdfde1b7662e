"""The README's screenshot of `meter serve`'s page: the demo's VQA model asked "What color is the triangle?" about
a held-out shapes-world image, in headless Chromium (the system's), the way tests/test_serve_page.py drives it.

    python benchmarks/serve_screenshot.py [--model runs/demo/vqa-model/model] [--world runs/demo/shapes]
                                          [--out docs/serve-page.png]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.serving drives the page
from tests.serving import ask_in_browser, serving


def image_with_a_triangle(world: Path, split: str = "val2014") -> Path:
    """The first held-out image with exactly one triangle among several objects."""
    scenes = json.loads((world / "scenes.json").read_text())
    files = {int(p.stem.rsplit("_", 1)[1]): p for p in (world / "images" / split).glob("*.png")}
    for scene in scenes:
        shapes = [o["shape"] for o in scene["objects"]]
        if scene["image_id"] in files and shapes.count("triangle") == 1 and len(shapes) >= 3:
            return files[scene["image_id"]]
    raise SystemExit(f"no {split} image of {world} has one triangle among three or more objects")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/demo/vqa-model/model")
    parser.add_argument("--world", default="runs/demo/shapes")
    parser.add_argument("--question", default="What color is the triangle?")
    parser.add_argument("--out", default="docs/serve-page.png")
    args = parser.parse_args()
    image = image_with_a_triangle(Path(args.world))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with serving(Path(args.model)) as url:
        shown = ask_in_browser(url, image, args.question, Path(args.out))
    print(f"{image.name}: {args.question} -> {shown['answers'][:3]}; {shown['caption']}\nwritten: {args.out}")


if __name__ == "__main__":
    main()
