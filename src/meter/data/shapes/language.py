"""Captions and VQA questions rendered from a scene, with some variety in wording.

Question types (VQAv2's `question_type` is a fixed string per template, as below):
- "what color is the": the colour of the only object of a named shape (answer: one of 6 colours, uniform)
- "what shape is the": the shape of the only object of a named colour (answer: one of 4 shapes, uniform)
- "how many": objects, or objects of a shape or colour (answer_type "number")
- "is there a": existence of a coloured shape, half of them true (answer_type "yes/no")
- "is the": a spatial relation between two objects (answer_type "yes/no")
The colour and shape questions cannot be answered without looking: a blind model is at chance on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meter.data.shapes.scene import COLORS, SHAPES, Scene, ShapeObject, position_words

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five")


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x", "sh", "ch")) else "s")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def describe(obj: ShapeObject, rng: np.random.Generator, with_size: bool, with_position: bool) -> str:
    words = ([obj.size] if with_size else []) + [obj.color, obj.shape]
    phrase = f"{_article(words[0])} {' '.join(words)}"
    if with_position:
        where = position_words(obj)
        phrase += " in the middle" if where == "middle" else f" at the {where}"
    return phrase


def _join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def captions(scene: Scene, rng: np.random.Generator, count: int = 5) -> list[str]:
    """`count` distinct captions of the scene, from several templates."""
    n = len(scene.objects)
    noun = "shape" if n == 1 else "shapes"
    candidates: list[str] = []
    for attempt in range(40):
        with_size, with_position = bool(rng.integers(2)), bool(rng.integers(2))
        objects = list(scene.objects)
        order = rng.permutation(n)
        listing = _join([describe(objects[i], rng, with_size, with_position) for i in order])
        template = attempt % 5
        if template == 0:
            text = f"{listing}."
        elif template == 1:
            text = f"there {'is' if n == 1 else 'are'} {NUMBER_WORDS[n]} {noun}: {listing}."
        elif template == 2:
            text = f"a picture of {listing}."
        elif template == 3:
            text = f"{NUMBER_WORDS[n]} {noun} on a plain background: {listing}."
        else:
            text = f"an image showing {listing}."
        if text not in candidates:
            candidates.append(text)
        if len(candidates) >= count and attempt >= 2 * count:
            break
    picked = rng.choice(len(candidates), size=min(count, len(candidates)), replace=False)
    return [candidates[i] for i in sorted(picked)]


@dataclass(frozen=True)
class Question:
    text: str
    answer: str
    question_type: str
    answer_type: str


def _unique(scene: Scene, key: str) -> list[ShapeObject]:
    return [o for o in scene.objects if sum(getattr(p, key) == getattr(o, key) for p in scene.objects) == 1]


def color_question(scene: Scene, rng: np.random.Generator) -> Question | None:
    options = _unique(scene, "shape")
    if not options:
        return None
    obj = options[rng.integers(len(options))]
    text = str(
        rng.choice(
            [
                f"What color is the {obj.shape}?",
                f"What colour is the {obj.shape}?",
                f"What color is the {obj.shape} in the picture?",
                f"Which color is the {obj.shape}?",
            ]
        )
    )
    return Question(text, obj.color, "what color is the", "other")


def shape_question(scene: Scene, rng: np.random.Generator) -> Question | None:
    options = _unique(scene, "color")
    if not options:
        return None
    obj = options[rng.integers(len(options))]
    text = str(
        rng.choice(
            [
                f"What shape is the {obj.color} object?",
                f"What shape is the {obj.color} thing?",
                f"What is the shape of the {obj.color} object?",
                f"Which shape is {obj.color}?",
            ]
        )
    )
    return Question(text, obj.shape, "what shape is the", "other")


def count_question(scene: Scene, rng: np.random.Generator) -> Question:
    kind = rng.integers(3)
    if kind == 0:
        text = str(rng.choice(["How many shapes are there?", "How many objects are in the picture?"]))
        answer = len(scene.objects)
    elif kind == 1:
        shape = str(rng.choice(SHAPES))
        text, answer = f"How many {plural(shape)} are there?", scene.count(shape=shape)
    else:
        color = str(rng.choice(list(COLORS)))
        text, answer = f"How many {color} shapes are there?", scene.count(color=color)
    return Question(text, str(answer), "how many", "number")


def exists_question(scene: Scene, rng: np.random.Generator) -> Question:
    if rng.random() < 0.5:
        obj = scene.objects[rng.integers(len(scene.objects))]
        color, shape = obj.color, obj.shape
    else:
        absent = [(c, s) for c in COLORS for s in SHAPES if scene.count(shape=s, color=c) == 0]
        color, shape = absent[rng.integers(len(absent))]
    answer = "yes" if scene.count(shape=shape, color=color) else "no"
    text = str(rng.choice([f"Is there a {color} {shape}?", f"Is there a {color} {shape} in the image?"]))
    return Question(text, answer, "is there a", "yes/no")


RELATIONS = {
    "to the left of": lambda a, b: a.x < b.x,
    "to the right of": lambda a, b: a.x > b.x,
    "above": lambda a, b: a.y < b.y,
    "below": lambda a, b: a.y > b.y,
}


def spatial_question(scene: Scene, rng: np.random.Generator) -> Question | None:
    named = [o for o in scene.objects if scene.count(shape=o.shape, color=o.color) == 1]
    if len(named) < 2:
        return None
    i, j = rng.choice(len(named), size=2, replace=False)
    a, b = named[i], named[j]
    horizontal = abs(a.x - b.x) >= abs(a.y - b.y)  # ask along the axis where the answer is clear
    relation = str(rng.choice(list(RELATIONS)[:2] if horizontal else list(RELATIONS)[2:]))
    answer = "yes" if RELATIONS[relation](a, b) else "no"
    return Question(f"Is the {a.name} {relation} the {b.name}?", answer, "is the", "yes/no")


GENERATORS = (color_question, shape_question, count_question, exists_question, spatial_question)


def questions(scene: Scene, rng: np.random.Generator, per_image: int) -> list[Question]:
    """Up to `per_image` questions of distinct texts, drawn from the templates in turn."""
    asked: dict[str, Question] = {}
    start = int(rng.integers(len(GENERATORS)))
    for attempt in range(per_image * 4):
        question = GENERATORS[(start + attempt) % len(GENERATORS)](scene, rng)
        if question is not None and question.text not in asked:
            asked[question.text] = question
        if len(asked) == per_image:
            break
    return list(asked.values())


def wrong_answer(question: Question, rng: np.random.Generator) -> str:
    """What a careless annotator might say instead."""
    if question.answer_type == "yes/no":
        return "no" if question.answer == "yes" else "yes"
    if question.answer_type == "number":
        pool = [str(n) for n in range(0, 5) if str(n) != question.answer]
    elif question.question_type == "what color is the":
        pool = [c for c in COLORS if c != question.answer]
    else:
        pool = [s for s in SHAPES if s != question.answer]
    return str(rng.choice(pool))


def written_form(answer: str, rng: np.random.Generator) -> str:
    """The same answer as annotators type it: sometimes a number word, an article, a capital or a full stop."""
    roll = rng.random()
    if answer.isdigit() and roll < 0.5:
        return NUMBER_WORDS[int(answer)]
    if roll < 0.25 and answer in SHAPES:
        return f"a {answer}"
    if roll < 0.5:
        return answer.capitalize()
    return answer + "."
