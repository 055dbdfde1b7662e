"""Image-text retrieval (Flickr30k, COCO Karpathy splits): train the fused model to rank, evaluate R@1/5/10.

Two training objectives (`retrieval.objective`): `official`, METER's own (see `meter.tasks.retrieval_official`), and
`meter`, this module's. Training with `meter`, per batch of (image, caption) pairs: each image ranks its caption
above `negatives` other captions of the batch, and each caption its image above `negatives` other images, by the
`rank` head's score (METER's `rank_output`, started from the pretrained ITM head's match row as METER does), with a
softmax cross-entropy over the candidates (ViLT/METER's ranking loss, in both directions). Negatives are drawn in
proportion to the unimodal similarity (hard negatives, as ALBEF draws them), which a contrastive loss on the
projected [CLS] features trains at the same time. Captions of the same image are never negatives.

Evaluation scores image x caption pairs with the fused model. Scoring every pair is quadratic (COCO's 5K test:
125M fused passes), so by default a cheap first stage shortlists, per query, the `shortlist` best candidates by
unimodal similarity and only those pairs are fused (ranked by fused score + similarity, as ALBEF and BLIP do); the
rest rank last. `retrieval.shortlist=0` scores every pair with the fused model alone, as METER evaluates; so does a
model whose projections the contrastive loss did not train (an official model, or one trained with the official
objective): its unimodal similarity would shortlist at random.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from meter.atomic_files import write_text_atomically
from meter.config import Config, RetrievalConfig
from meter.data.bad_samples import BadSampleBudget, evaluation_budget, skipped_fields, warn_evaluation_skips
from meter.data.collate import Collate
from meter.data.datasets import CaptionPairs, ImageReader
from meter.data.formats.captions import CaptionRecord
from meter.data.labelled import image_batches
from meter.data.ordered_batches import EvalReading
from meter.errors import ConfigError, DataError
from meter.metrics.retrieval import KS, rankings, retrieval_recall
from meter.models.finite_outputs import check_finite
from meter.models.folder import ModelFolder
from meter.models.meter import Meter
from meter.objectives.randomness import SampleRandomness
from meter.objectives.ranking import ranking_loss
from meter.tasks.build import (
    build_model,
    eval_reading,
    image_reader,
    karpathy_split,
    load_for_eval,
    read_karpathy_splits,
    task_tokenizer,
)
from meter.tasks.downstream import DOWNSTREAM, Downstream, Finetuning
from meter.tasks.rank_head import HEAD, ITM, rank_score, scoring_head, start_rank_head
from meter.tasks.retrieval_official import setup_official
from meter.train.runtime import Runtime, setup_runtime

log = logging.getLogger(__name__)
OBJECTIVES = ("meter", "official")
SHORTLIST = 16  # candidates per query when retrieval.shortlist is unset and the model can shortlist


def unimodal_similarity(model: Meter, text: Tensor, image: Tensor) -> Tensor:
    """(images, texts) cosine similarity of the unit-length [CLS] features of each encoder, through the model's
    projections: the shortlist's ranking and the contrastive loss's logits. In fp32 whatever autocast is on (the
    encoders' tokens may come in bf16): a ranking, and logits that a temperature of 0.05 multiplies by 20."""
    # the image's summary as the model pools its stream (image_pool): its first token, or the mean of its tokens (a
    # grid encoder mean-pooled, Swin as official METER, has no first token of its own: it was the top-left patch)
    summary = image[:, 0] if model.image_pool == "first" else image.mean(dim=1)
    with torch.autocast(text.device.type, enabled=False):
        text_embedding = F.normalize(model.text_proj(text[:, 0].float()), dim=-1)
        image_embedding = F.normalize(model.image_proj(summary.float()), dim=-1)
        return image_embedding @ text_embedding.T


def contrastive_loss(similarity: Tensor, positive: Tensor) -> Tensor:
    """InfoNCE in both directions with several positives per row (the other captions of the same image)."""
    losses = []
    for sim, pos in ((similarity, positive), (similarity.T, positive.T)):
        losses.append((sim.logsumexp(1) - sim.masked_fill(~pos, -math.inf).logsumexp(1)).mean())
    return sum(losses) / 2


def negative_noise(random: SampleRandomness, size: int, columns: int) -> Tensor:
    """(2, size, size) Gumbel noise for drawing negatives without replacement: [0] per image over the batch's texts,
    [1] per text over its images, transposed. Drawn per sample in a fixed number of `columns` (the configured batch
    size), so a sample's draws do not depend on how the step is split."""
    to_texts = random.uniform("retrieval_text_negatives", columns)[:, :size]  # rows: images
    to_images = random.uniform("retrieval_image_negatives", columns)[:, :size]  # rows: texts
    return -torch.log(-torch.log(torch.stack([to_texts, to_images.T]).clamp_min(1e-12)))


class RetrievalTask(nn.Module):
    def __init__(self, model: Meter, cfg: Config) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.settings: RetrievalConfig = cfg.retrieval

    def describe(self) -> ModelFolder:
        return ModelFolder(self.cfg, {HEAD: 1})

    def prepare(self, batch: dict[str, Any], random: SampleRandomness) -> dict[str, Any]:
        batch["negative_noise"] = negative_noise(random, batch["size"], max(self.cfg.train.batch_size, batch["size"]))
        return batch

    # no `loss_counts`: each loss is a mean over a micro-batch whose own pairs are each other's negatives (in-batch
    # contrastive), so a micro-batch's loss is its own; a step's micro-batches weigh the same however many they hold
    def forward(self, batch: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        model, settings = self.model, self.settings
        mask = batch["attention_mask"]
        image = model.encode_image(batch["pixels"])
        text = model.encode_text(batch["input_ids"], mask)
        ids = batch["image_id"]
        same = ids[:, None] == ids[None, :]  # (images, texts): pairs that match
        losses: dict[str, Tensor] = {}
        report: dict[str, Tensor] = {}
        keys = batch["negative_noise"]
        if settings.itc > 0:
            similarity = unimodal_similarity(model, text, image) / settings.temperature
            losses["itc_loss"] = settings.itc * contrastive_loss(similarity, same)
            keys = keys + similarity.detach()  # Gumbel top-k: draws in proportion to softmax(similarity)
        k = min(settings.negatives, len(ids) - 1)
        if k < 1:
            return losses, report
        negative_texts = keys[0].masked_fill(same, -math.inf).topk(k, dim=1).indices  # per image
        negative_images = keys[1].T.masked_fill(same.T, -math.inf).topk(k, dim=1).indices  # per text
        rows = torch.arange(len(ids), device=ids.device)
        image_index = torch.cat([rows, rows.repeat_interleave(k), negative_images.flatten()])
        text_index = torch.cat([rows, negative_texts.flatten(), rows.repeat_interleave(k)])
        scores = rank_score(model, text[text_index], mask[text_index], image[image_index])
        positive, to_texts, to_images = scores.split([len(ids), len(ids) * k, len(ids) * k])
        loss_t, hit_t = ranking_loss(positive, to_texts.view(-1, k), ~same.gather(1, negative_texts))
        loss_i, hit_i = ranking_loss(positive, to_images.view(-1, k), ~same.T.gather(1, negative_images))
        losses["rank_loss"] = (loss_t + loss_i) / 2
        report["rank_accuracy"] = torch.cat([hit_t, hit_i]).float().mean()
        return losses, report


def untrained_shortlist(cfg: Config) -> str | None:
    """Why a run (or the run a model folder's config records) did not train the unimodal projections with the
    contrastive loss, so that their similarity cannot shortlist candidates; None when it did."""
    settings = cfg.retrieval
    if cfg.task != "retrieval":
        return f"a {cfg.task} model"
    if settings.objective != "meter":
        return f"retrieval.objective = {settings.objective}"
    if settings.itc <= 0:
        return f"retrieval.itc = {settings.itc}"
    return None


def check_settings(cfg: Config) -> None:
    settings = cfg.retrieval
    if settings.objective not in OBJECTIVES:
        raise ConfigError(f"retrieval.objective = {settings.objective!r}; choose one of: {', '.join(OBJECTIVES)}")
    if settings.objective == "meter" and settings.negatives < 1 and settings.itc <= 0:
        raise ConfigError("retrieval.negatives = 0 and retrieval.itc = 0: nothing to train; raise one of them")
    if settings.objective == "meter" and settings.negatives > cfg.train.batch_size - 1:
        log.warning("retrieval.negatives = %d: a process's batch of %d (train.batch_size) holds %d other pairs, so "
                    "%d negatives a pair are drawn (raise train.batch_size for more)", settings.negatives,
                    cfg.train.batch_size, cfg.train.batch_size - 1, cfg.train.batch_size - 1)  # fmt: skip
    reason = untrained_shortlist(cfg)
    if settings.shortlist and settings.shortlist > 0 and reason:
        raise ConfigError(
            f"retrieval.shortlist = {settings.shortlist}, but nothing trains the projections that shortlist "
            f"({reason}): leave retrieval.shortlist unset or 0 (every pair)"
        )


def setup_retrieval(cfg: Config) -> Finetuning:
    check_settings(cfg)
    records = read_karpathy_splits(cfg, "retrieval", cfg.retrieval.train_splits)
    tokenizer = task_tokenizer(cfg)
    if cfg.retrieval.objective == "official":
        return setup_official(cfg, records, tokenizer)
    model = build_model(cfg, tokenizer, {HEAD: 1})
    start_rank_head(model, cfg.train.init_from)
    dataset = CaptionPairs(records, image_reader(cfg, model))
    log.info("retrieval: %d training captions of %d images", len(dataset), len(records))
    return Finetuning(RetrievalTask(model, cfg), dataset, Collate(tokenizer, cfg.model.text.max_length), tokenizer)


@dataclass
class Encoded:
    images: Tensor  # (I, N, vision width): the vision encoder's tokens
    readable: Tensor  # (I,) bool: False for images that could not be read (they are never retrieved)
    texts: Tensor  # (T, L, text width), padded to the longest caption
    masks: Tensor  # (T, L)

    def images_read(self) -> Encoded:
        """The split's readable images (in order) with every text."""
        if bool(self.readable.all()):
            return self  # no copy of the image tokens (gigabytes for COCO's 5,000)
        kept = self.readable.nonzero().flatten()
        return Encoded(self.images[kept], self.readable[kept], self.texts, self.masks)


@torch.no_grad()
def encode_split(
    model: Meter, records: list[CaptionRecord], texts: list[str], collate: Collate, images: ImageReader,
    runtime: Runtime, reading: EvalReading, budget: BadSampleBudget | None = None,
) -> Encoded:  # fmt: skip
    """Every image and text through its encoder; an unreadable image counts against `budget` (without one, it is
    an error) and is marked unreadable."""
    image_tokens: list[Tensor | None] = [None] * len(records)  # an unreadable image stays None
    paths = [r.image for r in records]
    for indices, pixels in image_batches(paths, images, reading, "retrieval: images", budget):
        with runtime.autocast():
            tokens = model.encode_image(pixels.to(runtime.device, non_blocking=True))
        for i, row in zip(indices, tokens, strict=True):
            image_tokens[i] = row
    template = next((t for t in image_tokens if t is not None), None)
    if template is None:
        raise DataError(f"retrieval: none of the {len(records)} images could be read (first: {records[0].image})")
    readable = torch.tensor([t is not None for t in image_tokens])
    stacked = torch.stack([t if t is not None else torch.zeros_like(template) for t in image_tokens])
    encoded = collate.tokenizer(texts, padding="longest", truncation=True, max_length=collate.max_length,
                                return_tensors="pt")  # fmt: skip
    ids, masks = encoded["input_ids"].to(runtime.device), encoded["attention_mask"].to(runtime.device)
    text_tokens = []
    step = reading.batch_size
    for start in range(0, len(texts), step):
        with runtime.autocast():
            text_tokens.append(model.encode_text(ids[start : start + step], masks[start : start + step]))
    return Encoded(stacked, readable.to(runtime.device), torch.cat(text_tokens), masks)


def candidate_pairs(similarity: Tensor, shortlist: int) -> Tensor:
    """(I, T) bool: the pairs the fused model scores: every pair, or each query's `shortlist` best by similarity."""
    images, texts = similarity.shape
    if shortlist <= 0 or (shortlist >= images and shortlist >= texts):
        return torch.ones_like(similarity, dtype=torch.bool)
    chosen = torch.zeros_like(similarity, dtype=torch.bool)
    chosen.scatter_(1, similarity.topk(min(shortlist, texts), dim=1).indices, True)
    chosen.T.scatter_(1, similarity.T.topk(min(shortlist, images), dim=1).indices, True)
    return chosen


@torch.no_grad()
def score_matrix(
    model: Meter, source: object, encoded: Encoded, shortlist: int, runtime: Runtime, batch_size: int, progress: bool
) -> np.ndarray:
    """(I, T) scores. Scoring every pair (`shortlist` 0, or one as long as the lists): the fused match score, as METER
    ranks. With a shortlist: the fused score plus the first stage's cosine similarity on the shortlisted pairs (as
    ALBEF and BLIP rank), -inf elsewhere. Unreadable images score -inf. A fused score that is not finite is a
    NonFiniteOutput naming `source`, the model folder: -inf and NaN would rank as misses and at random."""
    shape = (len(encoded.images), len(encoded.texts))
    first_stage = torch.zeros(shape, device=encoded.texts.device)
    chosen = torch.ones(shape, dtype=torch.bool, device=encoded.texts.device)
    if shortlist > 0:
        similarity = unimodal_similarity(model, encoded.texts, encoded.images)
        chosen = candidate_pairs(similarity, shortlist)
        if not bool(chosen.all()):
            first_stage = similarity
    chosen &= encoded.readable[:, None]
    pairs = chosen.nonzero()
    scores = torch.full(shape, -math.inf, device=encoded.texts.device)
    starts = range(0, len(pairs), batch_size)
    for start in tqdm(starts, desc="retrieval: pairs", unit="batch", disable=not progress):
        image_index, text_index = pairs[start : start + batch_size].unbind(1)
        with runtime.autocast():
            score = rank_score(model, encoded.texts[text_index], encoded.masks[text_index],
                                encoded.images[image_index])  # fmt: skip
        scores[image_index, text_index] = score.float() + first_stage[image_index, text_index]
    check_finite(scores[chosen], model, source)  # once, not a host sync per batch
    return scores.cpu().double().numpy()


def chance_recall(images: int, captions_per_image: list[int], ks: tuple[int, ...] = KS) -> dict[str, float]:
    """Expected recall of a random ranking (the baseline a model that does not look would reach)."""
    texts = sum(captions_per_image)
    result = {}
    for k in ks:
        # an image misses when none of its c captions is among k random texts of T
        misses = [Fraction(math.comb(texts - c, k), math.comb(texts, k)) if texts >= k else Fraction(0)
                  for c in captions_per_image]  # fmt: skip
        result[f"i2t_r{k}"] = 100.0 * float(1 - sum(misses) / len(misses))
    for k in ks:
        result[f"t2i_r{k}"] = 100.0 * min(1.0, k / images)
    result["rsum"] = sum(result[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in ks)
    return result


def eval_shortlist(shortlist: int | None, description: ModelFolder, checkpoint: str | Path) -> int:
    """The shortlist to evaluate a model folder with: `shortlist` when set, else 16 when the folder records a
    contrastively trained first stage, else 0 (every pair). A shortlist for a model without one is an error: its
    numbers would measure a random first stage, not the model."""
    if shortlist is not None and 0 < shortlist < max(KS):
        raise ConfigError(f"retrieval.shortlist = {shortlist} must be 0 (every pair) or at least {max(KS)}")
    reason = untrained_shortlist(description.config)
    if shortlist is None and reason is None:
        return SHORTLIST
    if shortlist is None:
        log.info("retrieval: %s was not trained with the contrastive loss (%s): scoring every pair with the fused "
                 "model", checkpoint, reason)  # fmt: skip
        return 0
    if shortlist > 0 and reason:
        raise ConfigError(
            f"retrieval.shortlist = {shortlist}: {checkpoint} was not trained with the contrastive loss that trains "
            f"the shortlist's projections ({reason}), so its shortlist would be random; leave retrieval.shortlist "
            "unset or set it to 0 (every pair)"
        )
    return shortlist


def distinct_captions(records: list[CaptionRecord]) -> list[tuple[int, int, str]]:
    """(image index, caption number, caption) of each image's captions, an image's repeated caption once: the
    official evaluation ranks the distinct captions as written (METER's datasets keep `set(texts)` of each image,
    base_dataset.py:66-69), so a repeat would count a query twice, while "a dog" and "a dog " are two queries (of
    one text once stripped). The number is the caption's index among its image's sentences in the file (an empty
    one left out does not move the ones after it)."""
    queries = []
    for i, record in enumerate(records):
        first_of: dict[str, int] = {}
        for index, caption in enumerate(record.written or record.captions):
            first_of.setdefault(caption, index)
        queries += [(i, record.number(index), record.captions[index]) for index in first_of.values()]
    repeats = sum(len(r.captions) for r in records) - len(queries)
    if repeats:
        log.info("retrieval eval: %d repeated captions of the same image ranked once, as the official evaluation "
                 "does", repeats)  # fmt: skip
    return queries


def evaluate_retrieval(cfg: Config, checkpoint: str | Path, out: Path) -> dict[str, Any]:
    """R@1/5/10 on retrieval.eval_split; writes `retrieval_rankings_{split}.json` (each query's 10 best) and the
    recalls."""
    settings = cfg.retrieval
    runtime = setup_runtime(cfg.train)
    loaded = load_for_eval(checkpoint, runtime.device, blind=cfg.data.blind, max_pixels=cfg.data.max_image_pixels)
    if scoring_head(loaded.model) is None:
        raise ConfigError(f"{checkpoint}: the model has no {HEAD} or {ITM} head to score pairs with (it has: "
                          f"{', '.join(loaded.model.heads) or 'none'}); fine-tune it with task=retrieval")  # fmt: skip
    shortlist = eval_shortlist(settings.shortlist, loaded.description, checkpoint)
    records = read_karpathy_splits(cfg, "retrieval", [settings.eval_split])
    if settings.max_eval_images > 0:
        records = records[: settings.max_eval_images]
    split = settings.eval_split
    queries = distinct_captions(records)
    texts = [caption for _, _, caption in queries]
    text_image = [i for i, _, _ in queries]
    text_ids = [f"{records[i].image_id}#{k}" for i, k, _ in queries]
    collate = Collate(loaded.tokenizer, loaded.description.config.model.text.max_length)
    batch = cfg.train.eval_batch_size
    budget = evaluation_budget(cfg.data.max_bad_samples, len(records), out / f"retrieval_bad_samples_{split}.jsonl")
    encoded = encode_split(loaded.model, records, texts, collate, loaded.images, runtime, eval_reading(cfg, runtime),
                           budget)  # fmt: skip
    # an unreadable image stays in the split, as the official evaluation of the same files would keep it: a query
    # that misses, the image of captions that miss, never retrieved; only the readable ones are scored
    read = encoded.readable.nonzero().flatten().tolist()
    absent = sorted(set(range(len(records))) - set(read))
    scores = np.full((len(records), len(texts)), -np.inf)
    scores[read] = score_matrix(loaded.model, checkpoint, encoded.images_read(), shortlist, runtime, batch,
                                cfg.train.progress)  # fmt: skip
    warn_evaluation_skips("retrieval eval", budget, "they stay in the split as misses (as queries, and as the image "
                          "of their captions); the rankings file leaves them out")  # fmt: skip
    recall = retrieval_recall(scores, text_image, absent=absent)
    result = {**recall, "images": len(records), "texts": len(texts), "shortlist": shortlist,
              "scored_pairs": int(np.isfinite(scores).sum()),  # by the fused model
              "chance": chance_recall(len(records), [text_image.count(i) for i in range(len(records))]),
              **skipped_fields(budget)}  # fmt: skip
    texts_of_image, images_of_text = rankings(scores, max(KS), absent)  # as the recall at K = 10 ranks them
    ranked = {  # the readable images': an image that was not read ranks nothing and is ranked by nothing
        "image_to_text": {str(records[i].image_id): [text_ids[t] for t in texts_of_image[i]] for i in read},
        "text_to_image": {text_ids[t]: [records[i].image_id for i in row] for t, row in enumerate(images_of_text)},
    }  # fmt: skip
    recall_file = out / f"retrieval_recall_{split}.json"
    recall_file.unlink(missing_ok=True)  # first: killed before the new score, no old one stays beside new predictions
    write_text_atomically(out / f"retrieval_rankings_{split}.json", json.dumps(ranked))
    write_text_atomically(recall_file, json.dumps(result, indent=1))
    return result


DOWNSTREAM.add(
    "retrieval",
    Downstream(setup_retrieval, evaluate_retrieval, karpathy_split("retrieval"),
               lambda scores: scores["t2i_r1"] + scores["i2t_r1"], "text-to-image R@1 + image-to-text R@1"),
    "image-text retrieval, R@1/5/10",
)  # fmt: skip
