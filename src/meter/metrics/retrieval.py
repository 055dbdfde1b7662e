"""Image-text retrieval recall: R@1/5/10 in both directions from a full image x text score matrix.

Ranking is a stable sort by descending score: among equal scores the candidate listed first ranks first (what
`torch.topk`-based evaluation code does on CPU for ties is unspecified; a fixed rule makes numbers reproducible).
- image -> text: an image is a hit at K when any of its captions is among its K best-scored texts; images without
  a caption are not queries.
- text -> image: a caption is a hit at K when its image is among its K best-scored images.
- an image the evaluation could not read (`absent`) stays in the split, as in the official evaluation of the same
  files: a query that misses, the image of its captions (which then miss), and never retrieved.
Values are percentages; `rsum` is the sum of the six recalls, as papers report it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from meter.errors import DataError

KS = (1, 5, 10)


def _positions(scores: np.ndarray) -> np.ndarray:
    """positions[q, c]: the 0-based rank of candidate c for query q (stable sort, best first)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    positions = np.empty_like(order)
    rows = np.arange(scores.shape[0])[:, None]
    positions[rows, order] = np.arange(scores.shape[1])[None, :]
    return positions


def ranking(scores: np.ndarray, top: int) -> np.ndarray:
    """The `top` best candidates of each query, best first, by the same rule as the recall."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :top]


def retrieval_recall(scores: np.ndarray, text_image: Sequence[int], ks: Sequence[int] = KS,
                     absent: Sequence[int] = ()) -> dict[str, float]:  # fmt: skip
    """`scores[i, t]`: how well text t matches image i; `text_image[t]`: the index of text t's image; `absent`: the
    images that could not be read (their rows are not read)."""
    scores = np.asarray(scores, dtype=np.float64)
    text_image = np.asarray(text_image, dtype=np.int64)
    if scores.ndim != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
        raise DataError(f"retrieval: need at least one image and one text; got a score matrix of {scores.shape}")
    images, texts = scores.shape
    if text_image.shape != (texts,):
        raise DataError(f"retrieval: {texts} texts scored but {text_image.shape[0]} text -> image links given")
    if texts and (text_image.min() < 0 or text_image.max() >= images):
        raise DataError(f"retrieval: a text's image index is outside 0..{images - 1}")
    absent = np.asarray(absent, dtype=np.int64)
    if absent.size:
        scores = scores.copy()
        scores[absent] = -np.inf  # below every image that was read
    if np.isnan(scores).any():
        raise DataError("retrieval: the score matrix holds NaN")
    text_positions = _positions(scores)  # (images, texts)
    best_caption = np.full(images, np.iinfo(np.int64).max)
    np.minimum.at(best_caption, text_image, text_positions[text_image, np.arange(texts)])
    queried = best_caption < np.iinfo(np.int64).max  # images with at least one caption
    image_positions = _positions(scores.T)[np.arange(texts), text_image]  # (texts,)
    never = np.iinfo(np.int64).max - 1  # a rank past every K: a miss that counts (a caption's image, a query)
    best_caption[absent[queried[absent]]] = never
    image_positions[np.isin(text_image, absent)] = never
    result = {}
    for k in ks:
        result[f"i2t_r{k}"] = 100.0 * float(np.mean(best_caption[queried] < k))
    for k in ks:
        result[f"t2i_r{k}"] = 100.0 * float(np.mean(image_positions < k))
    result["rsum"] = sum(result[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in ks)
    return result
