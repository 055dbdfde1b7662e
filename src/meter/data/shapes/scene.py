"""The shapes world's scene model: objects with colour, shape, size and position, and their rendering."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 38, 38),
    "green": (36, 160, 64),
    "blue": (40, 84, 220),
    "yellow": (232, 200, 30),
    "purple": (138, 58, 182),
    "orange": (245, 132, 26),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
SIZES: dict[str, float] = {"small": 0.16, "large": 0.27}  # object extent as a fraction of the image side
BACKGROUNDS: tuple[tuple[int, int, int], ...] = ((236, 236, 236), (226, 232, 238), (240, 236, 226), (230, 238, 230))
MAX_OBJECTS = 4
SUPERSAMPLE = 4  # draw large, then downsample: smooth edges like a photographed scene


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    color: str
    size: str
    x: float  # centre, as a fraction of the image width (0 = left)
    y: float  # centre, as a fraction of the image height (0 = top)

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    image_id: int
    background: int
    objects: tuple[ShapeObject, ...]

    def count(self, shape: str | None = None, color: str | None = None) -> int:
        return sum(
            1 for o in self.objects if (shape is None or o.shape == shape) and (color is None or o.color == color)
        )

    def to_dict(self) -> dict:
        return {
            "image_id": self.image_id,
            "background": self.background,
            "objects": [
                {"shape": o.shape, "color": o.color, "size": o.size, "x": round(o.x, 4), "y": round(o.y, 4)}
                for o in self.objects
            ],
        }


def sample_scene(rng: np.random.Generator, image_id: int) -> Scene:
    """1 to 4 objects with uniform colours and shapes, placed so that they never overlap."""
    count = int(rng.integers(1, MAX_OBJECTS + 1))
    objects: list[ShapeObject] = []
    while len(objects) < count:
        size = str(rng.choice(list(SIZES)))
        half = SIZES[size] / 2 + 0.03
        candidate = ShapeObject(
            shape=str(rng.choice(SHAPES)),
            color=str(rng.choice(list(COLORS))),
            size=size,
            x=float(rng.uniform(half, 1 - half)),
            y=float(rng.uniform(half, 1 - half)),
        )
        if all(_apart(candidate, other) for other in objects):
            objects.append(candidate)
    return Scene(image_id=image_id, background=int(rng.integers(len(BACKGROUNDS))), objects=tuple(objects))


def _apart(a: ShapeObject, b: ShapeObject) -> bool:
    gap = (SIZES[a.size] + SIZES[b.size]) / 2 + 0.04
    return abs(a.x - b.x) > gap or abs(a.y - b.y) > gap


def render(scene: Scene, image_size: int) -> Image.Image:
    side = image_size * SUPERSAMPLE
    image = Image.new("RGB", (side, side), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        cx, cy, r = obj.x * side, obj.y * side, SIZES[obj.size] * side / 2
        fill = COLORS[obj.color]
        if obj.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif obj.shape == "square":
            s = r * 0.9
            draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
        elif obj.shape == "triangle":
            draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=fill)
        elif obj.shape == "diamond":
            draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
        else:
            raise ValueError(f"unknown shape {obj.shape!r}")
    return image.resize((image_size, image_size), Image.Resampling.LANCZOS)


def position_words(obj: ShapeObject) -> str:
    """'top left', 'bottom', 'middle', ... for captions."""
    vertical = "top" if obj.y < 0.36 else "bottom" if obj.y > 0.64 else ""
    horizontal = "left" if obj.x < 0.36 else "right" if obj.x > 0.64 else ""
    return " ".join(w for w in (vertical, horizontal) if w) or "middle"
