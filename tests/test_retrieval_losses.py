import math

import torch
import torch.nn.functional as F

from meter.objectives.randomness import StepRandomness
from meter.objectives.ranking import ranking_loss
from meter.tasks.retrieval import candidate_pairs, contrastive_loss, negative_noise


def test_ranking_loss_ignores_negatives_that_are_not_valid():
    positive = torch.tensor([2.0, 0.5])
    negative = torch.tensor([[1.0, 5.0, 0.0], [1.0, -1.0, 3.0]])
    valid = torch.tensor([[True, False, True], [True, True, True]])
    loss, hit = ranking_loss(positive, negative, valid)
    expected = (F.cross_entropy(torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([0]))
                + F.cross_entropy(torch.tensor([[0.5, 1.0, -1.0, 3.0]]), torch.tensor([0]))) / 2  # fmt: skip
    assert torch.allclose(loss, expected) and hit.tolist() == [True, False]


def test_contrastive_loss_counts_every_caption_of_the_image_as_positive():
    similarity = torch.tensor([[3.0, 3.0, 0.0], [0.0, 0.0, 2.0]])  # image 0 has texts 0 and 1
    positive = torch.tensor([[True, True, False], [False, False, True]])
    image_to_text = [-(math.log(2 * math.e**3) - math.log(2 * math.e**3 + 1)), -(2 - math.log(2 + math.e**2))]
    text_to_image = [-(3 - math.log(math.e**3 + 1))] * 2 + [-(2 - math.log(1 + math.e**2))]
    expected = (sum(image_to_text) / 2 + sum(text_to_image) / 3) / 2
    assert math.isclose(float(contrastive_loss(similarity, positive)), expected, rel_tol=1e-6)


def test_shortlist_covers_each_querys_best_candidates_both_ways():
    similarity = torch.randn(6, 20, generator=torch.Generator().manual_seed(0))
    chosen = candidate_pairs(similarity, 3)
    assert all(chosen[i, similarity[i].topk(3).indices].all() for i in range(6))
    assert all(chosen[similarity[:, t].topk(3).indices, t].all() for t in range(20))
    assert candidate_pairs(similarity, 0).all() and candidate_pairs(similarity, 50).all()


def test_negative_noise_is_drawn_per_sample():
    step = StepRandomness(seed=7, step=3, total=4)
    noise = negative_noise(step.rows(0, 4), 4, 4)
    assert noise.shape == (2, 4, 4) and torch.isfinite(noise).all()
    half = negative_noise(step.rows(2, 2), 2, 4)  # the same step split in two micro-batches
    assert torch.equal(half[0], noise[0, 2:, :2])  # rows 2-3 draw the same numbers


def test_a_mean_pooled_model_compares_texts_with_the_mean_of_its_image_tokens(micro_config):
    """A grid encoder mean-pooled (Swin, as the official Swin METER) returns no summary token: the contrastive loss
    and the shortlist compared texts with its top-left patch. With image_pool=mean the order of the image tokens
    cannot matter; with image_pool=first the first token is the summary."""
    from meter.config import load_config
    from meter.models.tokenizer_folder import load_tokenizer
    from meter.tasks.build import build_model, tokenizer_path
    from meter.tasks.retrieval import unimodal_similarity

    torch.manual_seed(0)
    text, image = torch.randn(3, 5, 32), torch.randn(2, 17, 32)
    shuffled = image[:, torch.randperm(17)]
    for pool in ("mean", "first"):
        cfg = load_config(None, [f"model.image_pool={pool}"], base=micro_config)
        model = build_model(cfg, load_tokenizer(tokenizer_path(cfg)), {"itm": 2})
        same = torch.allclose(unimodal_similarity(model, text, image), unimodal_similarity(model, text, shuffled),
                              atol=1e-6)  # fmt: skip
        assert same == (pool == "mean"), pool


def test_more_negatives_than_a_batch_holds_are_said_to_be_capped(micro_config, caplog):
    """retrieval.negatives=8 with a batch of 4 drew 3, the same losses as 3, without a word."""
    from meter.config import load_config
    from meter.tasks.retrieval import check_settings

    check_settings(
        load_config(None, ["task=retrieval", "train.batch_size=4", "retrieval.negatives=3"], base=micro_config)
    )
    assert "negatives" not in caplog.text
    check_settings(
        load_config(None, ["task=retrieval", "train.batch_size=4", "retrieval.negatives=8"], base=micro_config)
    )
    assert "retrieval.negatives = 8: a process's batch of 4 (train.batch_size) holds 3 other pairs" in caplog.text
