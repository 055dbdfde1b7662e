"""MLM, ITM and MIM draws: per sample, independent of the batch layout; MIM's patches and targets."""

from pathlib import Path

import pytest
import torch

from meter.config import load_config
from meter.data.collate import Collate
from meter.errors import ConfigError
from meter.models.tokenizer_folder import load_tokenizer
from meter.models.vision import build_vision
from meter.objectives.itm import itm_pairing
from meter.objectives.mim import (
    VARIANCE_EPS,
    draw_patch_mask,
    hide_patches,
    in_batch_loss,
    mim_patch_size,
    patchify,
    pixel_targets,
)
from meter.objectives.mlm import IGNORE, mask_tokens
from meter.objectives.prefix_lm import split_prefix
from meter.objectives.randomness import SampleRandomness, StepRandomness
from meter.objectives.seq2seq import Targets, captions_of
from meter.objectives.span import add_sentinels, corrupt_spans, sentinel_ids
from meter.tasks.pretrain import check_objectives

CAPTIONS = [
    "a red circle",
    "two small blue squares at the top left of the picture",
    "a green triangle",
    "three yellow circles next to a purple diamond and an orange square",
    "one square",
    "a large red triangle at the bottom right",
    "four circles",
    "a blue diamond above a small green circle",
]


@pytest.fixture(scope="module", params=["wordpiece", "bpe"])
def tokenizer(request: pytest.FixtureRequest, shapes_world: Path):
    return load_tokenizer(shapes_world / "tokenizers" / request.param)


def _mask(tokenizer, texts, random):
    batch = Collate(tokenizer, max_length=40)([{"text": t, "pixels": torch.zeros(3, 4, 4)} for t in texts])
    special = set(tokenizer.all_special_ids)
    replacements = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
    out, labels = mask_tokens(batch["input_ids"], batch["word_ids"], tokenizer.mask_token_id, replacements, 0.3,
                              random, max_length=40)  # fmt: skip
    return out, labels


def test_mlm_masks_do_not_depend_on_how_the_step_is_split(tokenizer):
    """One batch of 8 (padded to its longest caption) and two micro-batches of 4 (each padded to its own)."""
    for step in range(5):
        random = StepRandomness(seed=1, step=step, total=8)
        whole, whole_labels = _mask(tokenizer, CAPTIONS, random.rows(0, 8))
        for offset in (0, 4):
            part, part_labels = _mask(tokenizer, CAPTIONS[offset : offset + 4], random.rows(offset, 4))
            length = part.shape[1]
            assert torch.equal(whole[offset : offset + 4, :length], part)
            assert torch.equal(whole_labels[offset : offset + 4, :length], part_labels)
            assert (whole_labels[offset : offset + 4, length:] == IGNORE).all()


def test_mlm_masks_change_from_step_to_step(tokenizer):
    masks = [_mask(tokenizer, CAPTIONS, StepRandomness(1, step, 8).rows(0, 8))[1] for step in range(3)]
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2])


def _decoder_rows(tokenizer, texts, random):
    """The unpadded encoder inputs and targets of span corruption and of the prefix split."""
    batch = Collate(tokenizer, max_length=40)([{"text": t, "pixels": torch.zeros(3, 4, 4)} for t in texts])
    captions = captions_of(batch["input_ids"], batch["word_ids"], batch["attention_mask"])
    targets = Targets.of(tokenizer, 64)
    span = corrupt_spans(captions, sentinel_ids(tokenizer), 0.3, 2.0, random.generators("span"), targets)
    prefix = split_prefix(captions, random.generators("prefix_lm"), targets)
    return [
        [ids[mask.bool()].tolist() for ids, mask in zip(out.input_ids, out.attention_mask, strict=True)]
        + [labels[labels != IGNORE].tolist() for labels in out.labels]
        for out in (span, prefix)
    ]


def test_span_and_prefix_draws_do_not_depend_on_how_the_step_is_split(shapes_world):
    tokenizer = load_tokenizer(shapes_world / "tokenizers/bpe")
    add_sentinels(tokenizer)
    random = StepRandomness(seed=2, step=4, total=8)
    whole = _decoder_rows(tokenizer, CAPTIONS, random.rows(0, 8))
    parts = [_decoder_rows(tokenizer, CAPTIONS[o : o + 4], random.rows(o, 4)) for o in (0, 4)]
    for objective in range(2):  # encoder rows then target rows, for 8 captions
        rows = whole[objective]
        split = parts[0][objective][:4] + parts[1][objective][:4] + parts[0][objective][4:] + parts[1][objective][4:]
        assert rows == split
    again = _decoder_rows(tokenizer, CAPTIONS, StepRandomness(seed=2, step=5, total=8).rows(0, 8))
    assert again != whole


def test_itm_pairs_half_of_every_group_with_another_image_of_that_group():
    image_ids = torch.arange(32) // 2  # two captions per image, as a batch of captions often has
    for seed in range(10):
        index, labels = itm_pairing(image_ids, SampleRandomness.standalone(seed, 32), group_size=8)
        rows = torch.arange(32)
        moved = index != rows
        assert (moved.view(4, 8).sum(dim=1) == 4).all()
        assert (index // 8 == rows // 8).all(), "a partner comes from the same group"
        assert torch.equal(labels, (image_ids[index] == image_ids).long())
        assert (labels[moved] == 0).any() and (labels[~moved] == 1).all()


def test_itm_pairing_does_not_depend_on_how_the_step_is_split():
    image_ids = torch.arange(100, 116)
    random = StepRandomness(seed=3, step=7, total=16)
    whole, whole_labels = itm_pairing(image_ids, random.rows(0, 16), group_size=4)
    for offset in (0, 8):
        part, part_labels = itm_pairing(image_ids[offset : offset + 8], random.rows(offset, 8), group_size=4)
        assert torch.equal(whole[offset : offset + 8], part + offset)
        assert torch.equal(whole_labels[offset : offset + 8], part_labels)


def test_itm_in_a_batch_smaller_than_a_group_still_pairs_within_the_batch():
    index, _ = itm_pairing(torch.arange(5), SampleRandomness.standalone(0, 5), group_size=16)
    assert (index != torch.arange(5)).sum() == 2 and index.max() < 5
    index, labels = itm_pairing(torch.arange(1), SampleRandomness.standalone(0, 1), group_size=16)
    assert index.tolist() == [0] and labels.tolist() == [1]


def test_mim_patches_follow_the_vision_encoders_token_grid(micro_config):
    vision = build_vision(micro_config.model.vision)  # 64 px, patch 16
    patch = mim_patch_size(vision, 64)
    tokens = vision(torch.zeros(1, 3, 64, 64))
    assert patch == 16 and tokens.shape[1] == 1 + (64 // patch) ** 2
    # patch (r, c) filled with its row-major index: patchify lists the patches in the encoder's token order
    ids = torch.arange(16, dtype=torch.float32).view(4, 4)
    image = ids.repeat_interleave(16, 0).repeat_interleave(16, 1).expand(2, 3, 64, 64)
    patches = patchify(image, 16)
    assert patches.shape == (2, 16, 16 * 16 * 3)
    assert torch.equal(patches, torch.arange(16.0)[None, :, None].expand_as(patches))


def test_mim_rejects_an_image_size_that_patches_do_not_tile(micro_config):
    vision = build_vision(micro_config.model.vision)
    with pytest.raises(ConfigError, match="image_size = 72 is not a multiple"):
        mim_patch_size(vision, 72)


def test_mim_masks_the_same_number_of_patches_in_every_image_and_hides_exactly_them():
    mask = draw_patch_mask(6, 16, 0.6, SampleRandomness.standalone(0, 6))
    assert (mask.sum(dim=1) == 10).all()
    assert len({tuple(row.tolist()) for row in mask}) > 1
    pixels = torch.randn(6, 3, 64, 64) + 5  # nowhere 0 before masking
    hidden = patchify(hide_patches(pixels, mask, 16), 16)
    assert (hidden[mask] == 0).all()
    assert torch.equal(hidden[~mask], patchify(pixels, 16)[~mask])


def test_mim_targets_are_each_patchs_pixels_standardised():
    pixels = torch.rand(2, 3, 32, 32) * 4 + 1
    targets = pixel_targets(pixels, 16)
    raw = patchify(pixels, 16)
    centred = raw - raw.mean(-1, keepdim=True)
    var = raw.var(dim=-1, unbiased=False, keepdim=True)
    assert torch.allclose(targets, centred / (var + VARIANCE_EPS).sqrt(), atol=1e-5)
    assert torch.allclose(targets.mean(dim=-1), torch.zeros(2, 4), atol=1e-5)
    assert torch.allclose(targets.std(dim=-1, unbiased=False), torch.ones(2, 4), atol=0.02)  # textured: ~unit


def test_a_flat_patch_is_regressed_to_its_mean_not_to_amplified_noise():
    pixels = torch.full((1, 3, 16, 16), 1.7) + 0.003 * torch.randn(1, 3, 16, 16)  # a plain background
    assert pixel_targets(pixels, 16).abs().max() < 0.2


def test_objectives_that_are_all_off_or_negative_are_config_errors():
    with pytest.raises(ConfigError, match="every objective is off"):
        check_objectives(load_config(None, ["objectives.mlm=0", "objectives.itm=0"]).objectives)
    with pytest.raises(ConfigError, match="objectives.mim = -1.0 is a loss weight"):
        check_objectives(load_config(None, ["objectives.mim=-1"]).objectives)
    with pytest.raises(ConfigError, match="objectives.mim_mask_ratio = 1.0 must be between 0 and 1"):
        check_objectives(load_config(None, ["objectives.mim_mask_ratio=1"]).objectives)
    with pytest.raises(ConfigError, match="objectives.mim_target = 'dall-e'; choose one of: pixels, in-batch"):
        check_objectives(load_config(None, ["objectives.mim_target=dall-e"]).objectives)


def test_in_batch_mim_picks_each_masked_patch_out_of_every_patch_of_the_batch():
    torch.manual_seed(0)
    candidates = pixel_targets(torch.randn(2, 3, 32, 32), 8).flatten(0, 1)  # 2 images x 16 patches of 8 x 8 x 3
    answers = torch.tensor([3, 17, 30])
    loss, correct = in_batch_loss(candidates[answers], candidates, answers, reduction="sum")
    logits = candidates[answers] @ candidates.T / candidates.shape[1] ** 0.5
    expected = -(logits.log_softmax(-1)[torch.arange(3), answers]).sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6) and correct.item() == 3
    assert in_batch_loss(candidates[answers].roll(1, 0), candidates, answers)[1].item() == 0, "another patch's guess"
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as training runs on a GPU: the scores stay in fp32
        assert in_batch_loss(candidates[answers], candidates, answers, reduction="sum")[0].item() == loss.item()


def test_without_at_least_one_mlm_masks_its_rate_of_words_and_leaves_some_short_captions_unmasked(tokenizer):
    """The forced word raised the rate of 4-word phrases to about 25% (the official collator leaves them unmasked
    when its draw picks none): the paper's recipes turn it off."""
    batch = Collate(tokenizer, max_length=40)([{"text": CAPTIONS[4], "pixels": torch.zeros(3, 4, 4)}] * 400)
    special = set(tokenizer.all_special_ids)
    replacements = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
    masked_words = {}
    for at_least_one in (True, False):
        _, labels = mask_tokens(
            batch["input_ids"],
            batch["word_ids"],
            tokenizer.mask_token_id,
            replacements,
            0.15,
            StepRandomness(1, 0, 400).rows(0, 400),
            max_length=40,
            at_least_one=at_least_one,
        )
        masked_words[at_least_one] = (labels != IGNORE).any(dim=1).float()  # "one square": a word at most, mostly
    assert masked_words[True].mean() == 1.0
    assert 0.2 < masked_words[False].mean() < 0.4  # 1 - 0.85^2 = 0.28 of the two-word captions have one


def test_the_mim_pixel_decoder_starts_at_model_init_std_as_every_new_part(micro_config):
    """model.init_std set every randomly initialised part but the MIM pixel decoder (left at 0.02)."""
    from meter.tasks.build import build_model, task_tokenizer
    from meter.tasks.pretrain import PretrainTask, pretrain_heads

    cfg = load_config(None, ["objectives.mim=1", "model.init_std=0.5"], base=micro_config)
    tokenizer = task_tokenizer(cfg)
    heads = pretrain_heads(tokenizer, cfg.objectives)
    task = PretrainTask(build_model(cfg, tokenizer, heads), tokenizer, cfg, heads)
    weights = torch.cat([task.mim_decoder.dense.weight.flatten(), task.mim_decoder.decoder.weight.flatten()])
    assert weights.std().item() == pytest.approx(0.5, rel=0.05)
