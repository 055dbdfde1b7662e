"""Statements about scenes, for the tasks that judge a sentence against images.

- NLVR2: a sentence that is true or false of a *pair* of scenes (left, right): what each image contains, what
  both or exactly one contain, totals and comparisons across the two.
- SNLI-VE: a hypothesis that the scene entails, contradicts, or leaves open. Neutral hypotheses speak of what
  the images cannot show (material, weight, temperature, age); the same wording about an object that is absent is
  a contradiction, so the words alone do not give the label away (a text-only model is at most at 2/3).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from meter.data.formats.snli_ve import SNLI_VE_LABELS
from meter.data.shapes.language import NUMBER_WORDS, plural
from meter.data.shapes.scene import COLORS, SHAPES, Scene

ENTAILMENT, NEUTRAL, CONTRADICTION = "entailment", "neutral", "contradiction"
HYPOTHESIS_ORDER = (ENTAILMENT, NEUTRAL, CONTRADICTION)  # drawn in this order per premise: it fixes the world's text
MATERIALS = ("wood", "metal", "plastic", "glass", "paper", "stone", "rubber")
PROPERTIES = ("heavy", "soft", "warm", "cold", "wet", "old", "new", "hollow")


@dataclass(frozen=True)
class Statement:
    text: str
    holds: Callable[[Scene, Scene], bool]  # truth over (left, right)


def _has(scene: Scene, color: str | None = None, shape: str | None = None) -> bool:
    return scene.count(shape=shape, color=color) > 0


def _thing(color: str | None, shape: str | None) -> str:
    if color and shape:
        return f"{color} {shape}"
    return shape or f"{color} shape"


# how often each template is drawn: existence over the two images (0-3) more often than counting (4-7), which a
# small model learns last
TEMPLATE_WEIGHTS = np.array([0.25, 0.15, 0.15, 0.15, 0.075, 0.075, 0.075, 0.075])
NAMED_WEIGHTS = np.array([0.25, 0.5, 0.25])  # colour and shape, colour only, shape only


def nlvr2_statement(rng: np.random.Generator) -> Statement:
    """One sentence about a pair of images, from one of eight templates."""
    color, shape = str(rng.choice(list(COLORS))), str(rng.choice(SHAPES))
    named = [(color, shape), (color, None), (None, shape)][int(rng.choice(3, p=NAMED_WEIGHTS))]
    thing = _thing(*named)
    article = "an" if thing[0] in "aeiou" else "a"
    side = str(rng.choice(["left", "right"]))
    n = int(rng.integers(1, 5))
    template = int(rng.choice(len(TEMPLATE_WEIGHTS), p=TEMPLATE_WEIGHTS))
    if template == 0:
        pick = (lambda a, b: a) if side == "left" else (lambda a, b: b)
        return Statement(f"the {side} image contains {article} {thing}.", lambda a, b: _has(pick(a, b), *named))
    if template == 1:
        return Statement(f"both images contain {article} {thing}.", lambda a, b: _has(a, *named) and _has(b, *named))
    if template == 2:
        text = str(rng.choice([f"only one image contains {article} {thing}.",
                               f"one image contains {article} {thing} and the other does not."]))  # fmt: skip
        return Statement(text, lambda a, b: _has(a, *named) != _has(b, *named))
    if template == 3:
        return Statement(
            f"neither image contains {article} {thing}.", lambda a, b: not (_has(a, *named) or _has(b, *named))
        )
    if template == 4:
        total = int(rng.integers(2, 6))  # the words the tokenizer knows ("six" has an unseen letter)
        return Statement(
            f"there are {NUMBER_WORDS[total]} shapes in total.", lambda a, b: len(a.objects) + len(b.objects) == total
        )
    if template == 5:
        things = f"is one {shape}" if n == 1 else f"are {NUMBER_WORDS[n]} {plural(shape)}"
        return Statement(
            f"there {things} in the two images.",
            lambda a, b: a.count(shape=shape) + b.count(shape=shape) == n,
        )
    if template == 6:
        relation = str(rng.choice(["more", "fewer"]))
        if relation == "more":
            return Statement("the left image has more shapes than the right image.",
                             lambda a, b: len(a.objects) > len(b.objects))  # fmt: skip
        return Statement("the left image has fewer shapes than the right image.",
                         lambda a, b: len(a.objects) < len(b.objects))  # fmt: skip
    word = NUMBER_WORDS[n]
    return Statement(
        f"one of the images shows {word} {'shape' if n == 1 else 'shapes'}, no more and no fewer.",
        lambda a, b: n in (len(a.objects), len(b.objects)),
    )


def pick_nlvr2_statement(
    pairs: list[tuple[Scene, Scene]], rng: np.random.Generator, attempts: int = 60
) -> tuple[str, list[bool]]:
    """A sentence true of as close to half of `pairs` as can be found (so the sentence alone tells nothing)."""
    best: tuple[str, list[bool]] | None = None
    half = len(pairs) / 2
    for _ in range(attempts):
        statement = nlvr2_statement(rng)
        labels = [bool(statement.holds(a, b)) for a, b in pairs]
        if best is None or abs(sum(labels) - half) < abs(sum(best[1]) - half):
            best = (statement.text, labels)
        if sum(labels) == round(half):
            break
    assert best is not None
    return best


def _present(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    obj = scene.objects[int(rng.integers(len(scene.objects)))]
    return obj.color, obj.shape


def _absent(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    options = [(c, s) for c in COLORS for s in SHAPES if not _has(scene, c, s)]
    return options[int(rng.integers(len(options)))]


def _observable(scene: Scene, truth: bool, rng: np.random.Generator) -> str:
    """A hypothesis about what the image shows, true or false as asked."""
    template = int(rng.integers(4))
    if template == 0:
        color, shape = _present(scene, rng) if truth else _absent(scene, rng)
        return str(rng.choice([f"there is a {color} {shape}.", f"the picture contains a {color} {shape}."]))
    if template == 1:
        color, shape = _absent(scene, rng) if truth else _present(scene, rng)
        return f"there is no {color} {shape}."
    if template == 2:
        n = len(scene.objects)
        shown = n if truth else int(rng.choice([k for k in range(1, 5) if k != n]))
        return f"the image shows {NUMBER_WORDS[shown]} {'shape' if shown == 1 else 'shapes'}."
    color = str(rng.choice(list(COLORS)))
    if _has(scene, color) != truth:
        color = str(rng.choice([c for c in COLORS if _has(scene, c) == truth]))
    return f"at least one shape is {color}."


def _unobservable(color: str, shape: str, rng: np.random.Generator) -> str:
    """A hypothesis about an attribute no image shows; neutral when the object is there."""
    if rng.random() < 0.5:
        return f"the {color} {shape} is made of {rng.choice(MATERIALS)}."
    prop = str(rng.choice(PROPERTIES))
    return str(rng.choice([f"the {color} {shape} is {prop}.", f"there is a {prop} {color} {shape}."]))


def snli_ve_hypothesis(scene: Scene, label: str, rng: np.random.Generator) -> str:
    """A hypothesis with the given label: half the contradictions use the neutral wording about an absent object."""
    if label == ENTAILMENT:
        return _observable(scene, True, rng)
    if label == NEUTRAL:
        return _unobservable(*_present(scene, rng), rng)
    if label != CONTRADICTION:
        raise ValueError(f"label {label!r} is not one of {SNLI_VE_LABELS}")
    if rng.random() < 0.5:
        return _observable(scene, False, rng)
    return _unobservable(*_absent(scene, rng), rng)
