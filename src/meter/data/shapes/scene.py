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
# Silhouettes that differ at 64 px: a 10-pixel circle and square of equal extent differ by 5 pixels per corner, a
# cross by its empty corners. (A square drawn inside the circle's extent and a diamond, version 1, had nearly the
# same area and outline as the circle: a model trained from scratch on 2 cores confused them for 1000+ steps.)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
SIZES: dict[str, float] = {"small": 0.16, "large": 0.22}  # object extent as a fraction of the image side
BACKGROUNDS: tuple[tuple[int, int, int], ...] = ((118, 118, 118), (108, 116, 124), (124, 118, 108), (112, 122, 112))
MAX_OBJECTS = 4
GRID = 4  # cells per side in the grid layout
LAYOUTS = ("grid", "free")
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


def sample_scene(rng: np.random.Generator, image_id: int, layout: str = "grid") -> Scene:
    """1 to 4 objects with uniform colours and shapes that never overlap.

    layout "grid": each object in its own cell of a 4 x 4 grid, jittered inside it (as in Sort-of-CLEVR): with a
    16-pixel patch at 64 px, one object lies within about one patch, which a small model learns from in minutes.
    layout "free": anywhere in the image.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {LAYOUTS}")
    count = int(rng.integers(1, MAX_OBJECTS + 1))
    cells = rng.choice(GRID * GRID, size=count, replace=False) if layout == "grid" else None
    objects: list[ShapeObject] = []
    while len(objects) < count:
        size = str(rng.choice(list(SIZES)))
        shape, color = str(rng.choice(SHAPES)), str(rng.choice(list(COLORS)))
        if cells is not None:
            row, column = divmod(int(cells[len(objects)]), GRID)
            room = (1 / GRID - SIZES[size]) / 2 - 0.01
            x = (column + 0.5) / GRID + float(rng.uniform(-room, room))
            y = (row + 0.5) / GRID + float(rng.uniform(-room, room))
        else:
            half = SIZES[size] / 2 + 0.03
            x, y = float(rng.uniform(half, 1 - half)), float(rng.uniform(half, 1 - half))
        candidate = ShapeObject(shape=shape, color=color, size=size, x=x, y=y)
        if all(_apart(candidate, other) for other in objects):
            objects.append(candidate)
    return Scene(image_id=image_id, background=int(rng.integers(len(BACKGROUNDS))), objects=tuple(objects))


def _apart(a: ShapeObject, b: ShapeObject) -> bool:
    gap = (SIZES[a.size] + SIZES[b.size]) / 2 + 0.02
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
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif obj.shape == "triangle":
            draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
        elif obj.shape == "cross":
            arm = r / 3
            draw.rectangle((cx - r, cy - arm, cx + r, cy + arm), fill=fill)
            draw.rectangle((cx - arm, cy - r, cx + arm, cy + r), fill=fill)
        else:
            raise ValueError(f"unknown shape {obj.shape!r}")
    return image.resize((image_size, image_size), Image.Resampling.LANCZOS)


def position_words(obj: ShapeObject) -> str:
    """'top left', 'bottom', 'middle', ... for captions."""
    vertical = "top" if obj.y < 0.36 else "bottom" if obj.y > 0.64 else ""
    horizontal = "left" if obj.x < 0.36 else "right" if obj.x > 0.64 else ""
    return " ".join(w for w in (vertical, horizontal) if w) or "middle"
