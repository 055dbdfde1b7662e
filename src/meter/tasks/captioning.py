"""Image captioning with the encoder-decoder: the encoder reads the image and an empty prompt ([CLS] [SEP]), the
decoder writes the caption (teacher-forced cross-entropy in training; greedy or beam search in evaluation).
Scored with BLEU-4 and CIDEr through pycocoevalcap's scorers (see meter.metrics.caption for the tokenisation).

A model pretrained without a decoder can be fine-tuned for captioning: its encoders and fusion are loaded and a
fresh decoder (model.decoder's sizes) is added on top.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import decoders
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from meter.atomic_files import write_text_atomically
from meter.config import CaptioningConfig, Config
from meter.data.bad_samples import BadSampleBudget, evaluation_budget, skipped_fields, warn_evaluation_skips
from meter.data.collate import Collate
from meter.data.datasets import CaptionPairs, ImageReader
from meter.data.formats.captions import CaptionRecord
from meter.data.labelled import image_batches
from meter.data.ordered_batches import EvalReading
from meter.data.shared_rows import moved
from meter.errors import ConfigError
from meter.metrics.caption import caption_scores, resolved_tokenizer
from meter.models.finite_outputs import FP32_SETTING, check_finite
from meter.models.folder import ModelFolder
from meter.models.generation import generate
from meter.models.meter import Meter
from meter.objectives.positions import at_positions
from meter.objectives.randomness import SampleRandomness
from meter.objectives.seq2seq import Caption, Seq2SeqBatch, Targets, captions_of, pack
from meter.objectives.step_mean import step_mean
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
from meter.train.runtime import Runtime, setup_runtime

log = logging.getLogger(__name__)
PROMPT = ""  # what the text encoder reads: nothing but its special tokens


def caption_targets(captions: list[Caption], targets: Targets) -> Seq2SeqBatch:
    """Encoder input: the special tokens only (an empty prompt); decoder target: every word token, then the end."""
    encoder_rows = [[token for token, word in caption.tokens if word < 0] for caption in captions]
    target_rows = [[token for token, word in caption.tokens if word >= 0] + [targets.end_id] for caption in captions]
    return pack(encoder_rows, target_rows, targets)


class CaptioningTask(nn.Module):
    def __init__(self, model: Meter, tokenizer: PreTrainedTokenizerBase, cfg: Config) -> None:
        super().__init__()
        if model.decoder is None:
            raise ConfigError("captioning needs a decoder: set model.architecture=encoder-decoder")
        self.model = model
        self.cfg = cfg
        self.targets = Targets.of(tokenizer, model.decoder.max_length)

    def describe(self) -> ModelFolder:
        return ModelFolder(self.cfg, {})  # the decoder is part of the model, not a head

    def prepare(self, batch: dict[str, Any], random: SampleRandomness) -> dict[str, Any]:
        captions = captions_of(batch["input_ids"], batch["word_ids"], batch["attention_mask"])
        caption_targets(captions, self.targets).store(batch, "caption")
        return batch

    def forward(self, batch: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        model = self.model
        seq = Seq2SeqBatch.load(batch, "caption")
        text = model.encode_text(seq.input_ids, seq.attention_mask)
        fused = model.fuse(text, seq.attention_mask, model.encode_image(batch["pixels"]), pool=False)
        logits = model.decoder.logits(at_positions(model.decode(fused, seq.decoder_input_ids), seq.positions)).float()
        labels = at_positions(seq.labels, seq.positions)
        loss = step_mean(F.cross_entropy(logits, labels, reduction="sum"), "caption_loss", len(labels), batch)
        correct = (logits.argmax(-1) == labels).float().sum().detach()
        return {"caption_loss": loss}, {"caption_accuracy": step_mean(correct, "caption_loss", len(labels), batch)}

    def loss_counts(self, batch: dict[str, Any]) -> dict[str, int]:
        """The caption tokens the loss averages over in this (prepared) batch: every token of the step weighs the
        same, however the step is split over micro-batches and processes."""
        return {"caption_loss": len(batch["caption_positions"])}


def setup_captioning(cfg: Config) -> Finetuning:
    if not cfg.train.init_from and cfg.model.architecture != "encoder-decoder":
        raise ConfigError("captioning needs a decoder: set model.architecture=encoder-decoder (or train.init_from)")
    records = read_karpathy_splits(cfg, "captioning", cfg.captioning.train_splits)
    tokenizer = task_tokenizer(cfg)
    model = build_model(cfg, tokenizer, {}, with_decoder=True)
    check_caption_length(cfg.captioning, model)  # before training, not at its evaluation
    dataset = CaptionPairs(records, image_reader(cfg, model))
    log.info("captioning: %d training captions of %d images", len(dataset), len(records))
    task = CaptioningTask(model, tokenizer, cfg)
    # the caption is the decoder's target, cut at its positions (the text encoder reads the special tokens alone):
    # cut at model.text.max_length, a long caption taught the decoder to stop mid-sentence
    collate = Collate(tokenizer, max(cfg.model.text.max_length, model.decoder.max_length + 1))
    return Finetuning(task, dataset, collate, tokenizer)


def check_caption_length(settings: CaptioningConfig, model: Meter) -> None:
    """A caption longer than the decoder has positions for cannot be written: refused, not cut short unsaid."""
    positions = model.decoder.max_length if model.decoder is not None else 0
    if positions and settings.max_length > positions:
        raise ConfigError(f"captioning.max_length = {settings.max_length} is more than the decoder's {positions} "
                          "positions (model.decoder.max_length): lower it, or 0 for as many as there are")  # fmt: skip


@torch.no_grad()
def write_captions(
    model: Meter, tokenizer: PreTrainedTokenizerBase, pixels: Tensor, settings: CaptioningConfig, runtime: Runtime,
    source: object, fp32: str = FP32_SETTING,
) -> list[str]:  # fmt: skip
    """One caption per image of `pixels` (B, 3, H, W). Scores that are not finite (a model whose weights are NaN
    writes whatever an argmax over NaN picks) are a NonFiniteOutput naming `source`, the model folder, and `fp32`,
    the setting that avoids an overflow."""
    if model.decoder is None:
        raise ConfigError("writing captions needs a model with a decoder (model.architecture=encoder-decoder)")
    targets = Targets.of(tokenizer, model.decoder.max_length)
    prompt = tokenizer([PROMPT] * len(pixels), return_tensors="pt").to(runtime.device)
    with runtime.autocast():
        written = generate(model, moved(pixels, runtime.device), prompt["input_ids"], prompt["attention_mask"],
                           targets.start_id, targets.end_id, settings.max_length or None, settings.beam_size,
                           settings.length_penalty)  # fmt: skip
    check_finite(written.scores, model, source, fp32)
    return caption_texts(tokenizer, written.tokens)


def caption_texts(tokenizer: PreTrainedTokenizerBase, tokens: Tensor) -> list[str]:
    """The captions of token rows as text. BERT's WordPiece splits punctuation off every word ("double-decker" is
    double - decker, "woman's" woman ' s, 3.5 is 3 . 5) and its decoder does not join it back: the PTB tokenizer then
    drops the pieces, and the caption no longer matches a reference that has the word (CIDEr 330 for a caption
    written exactly as its references: 1000). Joined back as written; byte-level BPE (RoBERTa) decodes exactly."""
    decoder = tokenizer.backend_tokenizer.decoder
    if type(decoder).__name__ != "WordPiece":
        # the clean-up off whatever the tokenizer's folder says (transformers 4 applied it to BPE too)
        texts = tokenizer.batch_decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return [text.strip() for text in texts]
    # not the decoder's own clean-up: it glues every ' to both neighbours ("reads'all way'on", "players'uniforms")
    # and cuts numbers after their point or comma ("3. 5", "4, 203"), which the PTB tokenizer then splits
    spaced = decoders.WordPiece(prefix=decoder.prefix, cleanup=False)
    rows = [tokenizer.convert_ids_to_tokens(row, skip_special_tokens=True) for row in tokens.tolist()]
    return [join_split_punctuation(spaced.decode(row).strip()) for row in rows]


def join_split_punctuation(text: str) -> str:
    """A WordPiece decoding's words and punctuation, spaced apart, joined where the caption wrote them together.
    Quote marks stay spaced: which word one belongs to is not known, and the PTB tokenizer drops them either way."""
    text = re.sub(r"(?<=\d) ([.:]) (?=\d)", r"\1", text)  # 3 . 5, 3 : 00
    text = re.sub(r"(?<=\d) , (?=\d{3}\b)", ",", text)  # 4 , 203 (a list's "1 , 2" stays apart)
    text = re.sub(r" ([.,!?])", r"\1", text)  # flag , / here .
    text = re.sub(r"(?<=\w) (['’]) (s|t|m|d|re|ve|ll)\b", r"\1\2", text)  # woman ' s, isn ' t
    text = re.sub(r"\b(o|d|l|c|ma) (['’]) (?=\w)", r"\1\2", text)  # o ' clock, o ' hare, d ' angelo, c ' mon
    text = re.sub(r"(^| )(['’]) (tis|twas|til|cause|em|n|\d0s)\b", r"\1\2\3", text)  # ' tis, ' 90s, rock ' n
    text = re.sub(r"(['’]n) (['’]) ", r"\1\2 ", text)  # rock 'n ' roll
    text = re.sub(r"(?<=\w) ([-/]) (?=\w)", r"\1", text)  # double - decker, 1 / 2
    return re.sub(r"\b((?:[a-z]\. )+[a-z]\.)", lambda found: found.group(1).replace(" ", ""), text)  # u. s.


def caption_split(
    model: Meter, source: object, tokenizer: PreTrainedTokenizerBase, records: list[CaptionRecord], images: ImageReader,
    settings: CaptioningConfig, runtime: Runtime, reading: EvalReading, budget: BadSampleBudget | None = None,
) -> dict[int, str]:  # fmt: skip
    """image_id -> the caption written for it, for every image that could be read; the others count against
    `budget` (without one, an unreadable image is an error)."""
    model.eval()
    written: dict[int, str] = {}
    paths = [r.image for r in records]
    for indices, pixels in image_batches(paths, images, reading, "captioning", budget):
        captions = write_captions(model, tokenizer, pixels, settings, runtime, source)
        for i, text in zip(indices, captions, strict=True):
            written[records[i].image_id] = text
    return written


def evaluate_captioning(cfg: Config, checkpoint: str | Path, out: Path) -> dict[str, Any]:
    """Captions captioning.eval_split; writes `captions_{split}.json` in the COCO results format
    ([{"image_id", "caption"}]) and BLEU-1..4 and CIDEr against the split's references."""
    settings = cfg.captioning
    runtime = setup_runtime(cfg.train)
    loaded = load_for_eval(checkpoint, runtime.device, blind=cfg.data.blind, max_pixels=cfg.data.max_image_pixels)
    if loaded.model.decoder is None:
        raise ConfigError(f"{checkpoint}: the model has no decoder to write captions with; fine-tune it with "
                          "task=captioning")  # fmt: skip
    check_caption_length(settings, loaded.model)
    # an image whose captions are all empty is scored too, against empty references, as the COCO evaluation does
    records = read_karpathy_splits(cfg, "captioning", [settings.eval_split], keep_uncaptioned=True)
    if settings.max_eval_images > 0:
        records = records[: settings.max_eval_images]
    split = settings.eval_split
    budget = evaluation_budget(cfg.data.max_bad_samples, len(records), out / f"captioning_bad_samples_{split}.jsonl")
    written = caption_split(loaded.model, checkpoint, loaded.tokenizer, records, loaded.images, settings, runtime,
                            eval_reading(cfg, runtime), budget)  # fmt: skip
    warn_evaluation_skips("captioning eval", budget, "the captions file gives them an empty caption, and the "
                          "scores are that file's")  # fmt: skip
    results = [{"image_id": r.image_id, "caption": written.get(r.image_id, "")} for r in records]
    # empty references count as the official evaluation counts them: CIDEr averages over every reference
    references = {str(r.image_id): [*r.captions, *[""] * r.empty] for r in records}
    # the official score of the captions file: an image it could not read scores its empty caption
    tokenizer = resolved_tokenizer(settings.tokenizer)
    scores = caption_scores(references, {str(row["image_id"]): row["caption"] for row in results},
                            tokenizer).to_dict()  # fmt: skip
    result = {**scores, "images": len(references), "beam_size": settings.beam_size, "tokenizer": tokenizer,
              **skipped_fields(budget)}  # fmt: skip
    results.sort(key=lambda row: row["image_id"])
    scores_file = out / f"caption_scores_{split}.json"
    scores_file.unlink(missing_ok=True)  # first: killed before the new score, no old one stays beside new predictions
    write_text_atomically(out / f"captions_{split}.json", json.dumps(results, indent=0))
    write_text_atomically(scores_file, json.dumps(result, indent=1))
    return result


DOWNSTREAM.add(
    "captioning",
    Downstream(setup_captioning, evaluate_captioning, karpathy_split("captioning"),
               lambda scores: scores["cider"], "CIDEr"),
    "image captioning, BLEU-4 and CIDEr",
)  # fmt: skip
