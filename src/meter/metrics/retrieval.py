"""Image-text retrieval recall: R@1/5/10 in both directions from a full image x text score matrix, computed as the
official METER evaluation (`compute_irtr_recall`) computes it, so that tied scores give its numbers too.

- The scores are taken as float32 on the CPU and each K's candidates are `torch.topk(K)` of that matrix, along the
  texts for image -> text and along the images for text -> image; among tied scores, topk's own choice decides (it
  need not keep the candidate listed first, and R@1's choice need not be among R@5's).
- image -> text: an image is a hit at K when any of its captions is among its K best-scored texts; every image is a
  query, one without a caption a query that misses.
- text -> image: a caption is a hit at K when its image is among its K best-scored images.
- an image the evaluation could not read (`absent`) stays in the split, as in the official evaluation of the same
  files: a query that misses, the image of its captions (which then miss), and never retrieved.
Values are percentages; `rsum` is the sum of the six recalls, as papers report it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from meter.errors import DataError

KS = (1, 5, 10)


def _official_matrix(scores: np.ndarray, absent: Sequence[int] = ()) -> torch.Tensor:
    """The scores as the official evaluation ranks them: float32 (it builds a tensor of Python floats), on the CPU;
    the rows of images that were not read below every image that was."""
    matrix = torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32))
    matrix[torch.as_tensor(np.asarray(absent, dtype=np.int64))] = -torch.inf
    return matrix


def rankings(scores: np.ndarray, top: int, absent: Sequence[int] = ()) -> tuple[list[list[int]], list[list[int]]]:
    """The `top` best texts of each image and the `top` best images of each text, best first, as the recall at K =
    `top` takes them (R@`top` can be counted from them; R@1 and R@5 among tied scores are topk's own choices, which
    need not be the first entries); an image in `absent` is never listed."""
    matrix = _official_matrix(np.asarray(scores, dtype=np.float64), absent)
    texts_of_image = matrix.topk(min(top, matrix.shape[1]), dim=1).indices.tolist()
    images_of_text = matrix.topk(min(top, matrix.shape[0]), dim=0).indices.T.tolist()
    left_out = set(np.asarray(absent, dtype=np.int64).tolist())
    return texts_of_image, [[image for image in row if image not in left_out] for row in images_of_text]


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
    if np.isnan(scores).any():
        raise DataError("retrieval: the score matrix holds NaN")
    matrix = _official_matrix(scores, absent)
    links = torch.from_numpy(text_image)
    image_missed = torch.zeros(images, dtype=torch.bool)
    image_missed[torch.as_tensor(np.asarray(absent, dtype=np.int64))] = True
    caption_missed = image_missed[links]  # a caption of an image that was not read
    result = {}
    for k in ks:  # image -> text: does any of the image's K best texts belong to it?
        best = matrix.topk(min(k, texts), dim=1).indices
        hits = (links[best] == torch.arange(images)[:, None]).any(dim=1) & ~image_missed
        result[f"i2t_r{k}"] = 100.0 * hits.double().mean().item()
    for k in ks:  # text -> image: is the caption's image among its K best images?
        best = matrix.topk(min(k, images), dim=0).indices
        hits = (best == links[None, :]).any(dim=0) & ~caption_missed
        result[f"t2i_r{k}"] = 100.0 * hits.double().mean().item()
    result["rsum"] = sum(result[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in ks)
    return result
