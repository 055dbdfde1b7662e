"""Retrieval recall by brute force, written independently of meter.metrics.retrieval to cross-check it on scores
without ties (ties are ranked as the official evaluation's `topk` ranks them: `retrieval_official_literal.py`): for
each query, sort every candidate by descending score and look for the ground truth. An image
in `absent` (not read) is a query that misses and the image of captions that miss, and is never a candidate (its row
of scores is not read)."""

from __future__ import annotations

MISS = float("inf")


def brute_force_recall(scores: list[list[float]], text_image: list[int], ks=(1, 5, 10),
                       absent: tuple[int, ...] = ()) -> dict[str, float]:  # fmt: skip
    images, texts = len(scores), len(text_image)
    candidates = [i for i in range(images) if i not in absent]
    i2t_ranks = []
    for i in range(images):
        order = sorted(range(texts), key=lambda t: (-scores[i][t], t))
        mine = [position for position, t in enumerate(order) if text_image[t] == i]
        i2t_ranks.append(MISS if i in absent or not mine else min(mine))  # an image without captions: a miss
    t2i_ranks = []
    for t in range(texts):
        order = sorted(candidates, key=lambda i: (-scores[i][t], i))
        t2i_ranks.append(MISS if text_image[t] in absent else order.index(text_image[t]))
    result = {}
    for k in ks:
        result[f"i2t_r{k}"] = 100.0 * sum(r < k for r in i2t_ranks) / len(i2t_ranks)
    for k in ks:
        result[f"t2i_r{k}"] = 100.0 * sum(r < k for r in t2i_ranks) / len(t2i_ranks)
    return result
