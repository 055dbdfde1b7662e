import math

import numpy as np
import pytest
import torch

from meter.errors import DataError
from meter.metrics.retrieval import rankings, retrieval_recall
from meter.tasks.retrieval import chance_recall
from tests.reference.retrieval_brute_force import brute_force_recall
from tests.reference.retrieval_official_literal import official_recall


def _check_against_brute_force(scores: np.ndarray, text_image: list[int]) -> dict[str, float]:
    ours = retrieval_recall(scores, text_image)
    expected = brute_force_recall(scores.tolist(), text_image)
    assert {k: v for k, v in ours.items() if k != "rsum"} == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert ours["rsum"] == pytest.approx(sum(expected.values()))
    return ours


@pytest.mark.parametrize("seed", range(6))
def test_recall_equals_brute_force_on_random_scores(seed: int):
    rng = np.random.default_rng(seed)
    images = int(rng.integers(1, 25))
    text_image = [i for i in range(images) for _ in range(int(rng.integers(1, 6)))]
    _check_against_brute_force(rng.normal(size=(images, len(text_image))), text_image)


def _check_against_official(scores: np.ndarray, text_image: list[int], ks=(1, 5, 10)) -> dict[str, float]:
    ours = retrieval_recall(scores, text_image, ks)
    expected = official_recall(scores.tolist(), text_image, ks)  # averaged in float32, as the official does
    assert {k: v for k, v in ours.items() if k != "rsum"} == pytest.approx(expected, rel=1e-6, abs=1e-6)
    return ours


@pytest.mark.parametrize("seed", range(8))
def test_recall_equals_the_official_evaluation_when_scores_tie(seed: int):
    """Ties are frequent in half-precision scores; each K's candidates are the official code's `topk` choice."""
    rng = np.random.default_rng(100 + seed)
    images = int(rng.integers(10, 30))
    text_image = rng.permutation([i for i in range(images) for _ in range(5)]).tolist()  # texts in any order
    scores = rng.integers(0, 3, size=(images, len(text_image))).astype(float)  # many ties
    _check_against_official(scores, text_image)


def test_a_tied_column_is_ranked_as_the_official_evaluation_ranks_it():
    """Each caption's own image scores 1, the others -1, and caption 0 scores 0 everywhere: which images its R@1 and
    R@5 take among the ties is topk's choice (the earliest listed is not always it)."""
    scores = np.where(np.eye(10, dtype=bool), 1.0, -1.0)
    scores[:, 0] = 0.0
    ours = _check_against_official(scores, list(range(10)))
    assert ours["t2i_r10"] == 100.0
    assert ours["t2i_r1"] == 90.0  # the official's too (within its float32 mean)
    assert rankings(scores, 10)[1][0] == torch.tensor(scores.tolist()).topk(10, dim=0).indices[:, 0].tolist()


@pytest.mark.parametrize("seed", range(4))
def test_the_rankings_hold_the_candidates_the_recall_at_10_counted(seed: int):
    """The rankings file lists each query's 10 best as R@10 took them, with tied scores and unread images too."""
    rng = np.random.default_rng(200 + seed)
    images = int(rng.integers(12, 25))
    text_image = rng.permutation([i for i in range(images) for _ in range(5)]).tolist()
    scores = rng.integers(0, 3, size=(images, len(text_image))).astype(float)
    absent = sorted(rng.choice(images, size=2, replace=False).tolist())
    recall = retrieval_recall(scores, text_image, absent=absent)
    texts_of_image, images_of_text = rankings(scores, 10, absent)
    read = [i for i in range(images) if i not in absent]
    assert all(not set(absent) & set(row) for row in images_of_text)
    i2t = sum(any(text_image[t] == i for t in texts_of_image[i]) for i in read) / images
    t2i = sum(text_image[t] in row and text_image[t] not in absent for t, row in enumerate(images_of_text))
    assert (100 * i2t, 100 * t2i / len(text_image)) == pytest.approx((recall["i2t_r10"], recall["t2i_r10"]))


def test_float64_scores_that_differ_below_float32_tie_as_in_the_official_evaluation():
    scores = np.array([[1.0, 1.0 + 1e-12], [0.0, 0.0]])  # equal in float32, which the official ranks in
    assert _check_against_official(scores, [0, 1], ks=(1,))["i2t_r1"] == 50.0  # ranked in float64, it would be 0


def test_an_image_without_captions_is_a_query_that_misses():
    scores = np.array([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])  # image 2 has no caption
    result = retrieval_recall(scores, [0, 1])
    assert result["i2t_r1"] == pytest.approx(100 * 2 / 3) and result["t2i_r1"] == 0.0  # image 2 outscores both


def test_perfect_scores_give_full_recall():
    text_image = [i for i in range(4) for _ in range(5)]
    scores = np.array([[1.0 if text_image[t] == i else 0.0 for t in range(20)] for i in range(4)])
    assert set(retrieval_recall(scores, text_image).values()) == {100.0, 600.0}


@pytest.mark.parametrize("shape", [(0, 5), (3, 0), (0, 0)])
def test_empty_score_matrices_are_an_error(shape: tuple[int, int]):
    with pytest.raises(DataError, match="need at least one image and one text"):
        retrieval_recall(np.zeros(shape), [0] * shape[1])


def test_mismatched_links_and_nan_are_errors():
    with pytest.raises(DataError, match="3 texts scored but 2"):
        retrieval_recall(np.zeros((2, 3)), [0, 1])
    with pytest.raises(DataError, match="outside 0..1"):
        retrieval_recall(np.zeros((2, 2)), [0, 2])
    with pytest.raises(DataError, match="NaN"):
        retrieval_recall(np.array([[0.0, math.nan]]), [0, 0])


def test_chance_recall_is_the_mean_of_random_rankings():
    rng = np.random.default_rng(0)
    text_image = [i for i in range(8) for _ in range(5)]
    trials = [retrieval_recall(rng.random((8, 40)), text_image) for _ in range(3000)]
    chance = chance_recall(8, [5] * 8)
    for key in ("i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5"):
        assert np.mean([t[key] for t in trials]) == pytest.approx(chance[key], abs=1.5)


def test_an_image_that_could_not_be_read_stays_in_the_split_as_misses():
    """Its row of scores is not read (here it would be perfect); it and its captions count as queries that miss,
    even at R@10 among three images, and it is never retrieved above an image that was read."""
    scores = np.array([[9.0, 9.0, 0.0, 0.0], [0.0, 0.0, 9.0, 0.0], [1.0, 1.0, 1.0, 9.0]])
    text_image = [0, 0, 1, 2]
    full = retrieval_recall(scores, text_image)
    assert full["i2t_r1"] == full["t2i_r1"] == 100.0
    without = retrieval_recall(scores, text_image, absent=[0])
    assert without["i2t_r1"] == without["i2t_r10"] == pytest.approx(100 * 2 / 3)
    assert without["t2i_r1"] == without["t2i_r10"] == pytest.approx(100 * 2 / 4)
    scores[0, 2] = 99.0  # the absent image's row would win text 2 (of image 1): it is not read, so it does not
    assert retrieval_recall(scores, text_image, absent=[0])["t2i_r1"] == pytest.approx(100 * 2 / 4)
