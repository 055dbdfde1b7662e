"""`meter import meter-official`: an official METER checkpoint (zdou0830/METER, PyTorch Lightning) as a meter model
folder.

Every tensor is placed by name: the vision tower through timm's own conversion (OpenAI CLIP layout, or the
original Swin layout; position embeddings resampled when the resolution changes), everything else by renaming a
module prefix (our fusion layers, poolers and heads already use the official BERT-style names below it). Tensors
that released checkpoints carry but METER never used are tolerated and listed; anything else that cannot be placed
is reported; a weight of our model that the checkpoint cannot fill, or fills with the wrong shape, is an error.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn
from transformers import AutoConfig, PretrainedConfig, PreTrainedTokenizerBase

from meter.data.formats.snli_ve import SNLI_VE_LABELS
from meter.errors import ConfigError, DataError
from meter.importers.official_layout import VISION, OfficialLayout, read_layout
from meter.importers.safe_load import read_checkpoint, state_dict_of
from meter.importers.vqa_answers import read_answers
from meter.models.folder import ModelFolder, export_model_folder
from meter.models.meter import Meter, build_meter
from meter.models.tokenizer_folder import has_tokenizer, load_tokenizer
from meter.models.vision_weights import timm_filter

log = logging.getLogger(__name__)

# official module prefix -> ours
RENAMES = (
    ("cross_modal_text_transform.", "text_proj."),
    ("cross_modal_image_transform.", "image_proj."),
    ("token_type_embeddings.", "token_type."),
    ("cross_modal_text_layers.", "fusion.text_layers."),
    ("cross_modal_image_layers.", "fusion.image_layers."),
    ("cross_modal_text_pooler.", "text_pooler."),
    ("cross_modal_image_pooler.", "image_pooler."),
    ("text_transformer.", "text.model."),
    ("mlm_score.", "heads.mlm."),
    ("itm_score.", "heads.itm."),
    ("vqa_classifier.", "heads.vqa."),
    ("nlvr2_classifier.", "heads.nlvr2."),
    ("snli_classifier.", "heads.snli_ve."),
    ("rank_output.", "heads.rank."),
)
# carried by released checkpoints, never used by METER's forward
TOLERATED = (
    "text_transformer.pooler.",  # the text encoder's own pooler (METER pools the fused streams)
    "text_transformer.embeddings.position_ids",  # a buffer of old transformers versions
    "text_transformer.embeddings.token_type_ids",
)

REBUILT_BUFFERS = ("attn_mask", "relative_position_index")  # Swin's: timm recomputes them for its window


@dataclass
class ImportReport:
    out: Path
    placed: int = 0
    tolerated: list[str] = field(default_factory=list)
    unplaced: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        lines = [f"placed {self.placed} tensors of the checkpoint"]
        if self.tolerated:
            lines.append(f"left {len(self.tolerated)} unused tensors behind: {', '.join(self.tolerated)}")
        if self.unplaced:
            lines.append(f"could not place {len(self.unplaced)} tensors: {', '.join(self.unplaced)}")
        return lines + self.notes


def rename(key: str) -> str | None:
    for official, ours in RENAMES:
        if key.startswith(official):
            return ours + key[len(official) :]
    return None


VISION_HINT = "name the encoder it is of with --vision, or leave --vision out to read it from the checkpoint"


def vision_weights(weights: dict[str, Tensor], backbone: nn.Module, report: ImportReport) -> dict[str, Tensor]:
    """The vision tower's tensors in our names, through the conversion timm applies to its own checkpoints."""
    vision = {k[len(VISION) :]: v for k, v in weights.items() if k.startswith(VISION)}
    if "visual.class_embedding" in vision:  # METER's CLIP object keeps a few tensors of CLIP's text tower
        report.tolerated += sorted(VISION + k for k in vision if not k.startswith("visual."))
    report.tolerated += sorted(VISION + k for k in vision if k.endswith(REBUILT_BUFFERS))
    # the user chose the encoder with the command's --vision, not a config's model.vision.name
    converted = timm_filter(backbone, vision, f"the checkpoint's vision tower ({VISION}*)", hint=VISION_HINT)
    own = backbone.state_dict()
    report.unplaced += sorted(f"{VISION}* -> timm {k}" for k in converted if k not in own)
    before, after = vision.get("visual.positional_embedding"), converted.get("pos_embed")
    if before is not None and after is not None and before.shape[0] != after.shape[1]:
        report.notes.append(
            f"vision position embeddings resampled (bicubic, as METER) from {before.shape[0] - 1} to "
            f"{after.shape[1] - 1} patches: the model runs at a resolution it was not trained at"
        )
    return {f"vision.backbone.{k}": v for k, v in converted.items() if k in own}


def place_weights(weights: dict[str, Tensor], model: Meter, report: ImportReport) -> dict[str, Tensor]:
    """Our state-dict entries filled from the checkpoint; errors for missing or mis-shaped ones."""
    own = model.state_dict()
    placed = vision_weights(weights, model.vision.backbone, report)
    for key, value in weights.items():
        if key.startswith(VISION):
            continue
        if key.startswith(TOLERATED):
            report.tolerated.append(key)
            continue
        ours = rename(key)
        if ours is None or ours not in own:
            report.unplaced.append(key)
            continue
        placed[ours] = value
    wrong = [f"{k}: checkpoint {tuple(v.shape)}, model {tuple(own[k].shape)}" for k, v in placed.items()
             if v.shape != own[k].shape]  # fmt: skip
    if wrong:
        raise DataError(
            f"{len(wrong)} tensors do not fit the model built from --text-encoder / --vision ({'; '.join(wrong[:3])})"
            "; give the text encoder folder the checkpoint was trained from (roberta-base for the released ones)"
        )
    text_left = [key for key in report.unplaced if key.startswith("text_transformer.")]
    if text_left:  # a text encoder of fewer layers than the checkpoint's: it would run without the rest
        raise DataError(
            f"the checkpoint has {len(text_left)} text-encoder tensors the model built from --text-encoder has no "
            f"place for (e.g. {text_left[0]}); give the text encoder folder the checkpoint was trained from "
            "(roberta-base for the released ones)"
        )
    parameters = {name for name, _ in model.named_parameters()}
    missing = sorted(k for k in own if k not in placed and k in parameters)
    if missing:
        raise DataError(f"the checkpoint cannot fill {len(missing)} weights of the model, e.g. {missing[:3]}")
    report.placed = len(weights) - len(report.tolerated) - len(report.unplaced)
    return placed


def read_text_config(folder: str | Path) -> PretrainedConfig:
    path = Path(folder)
    if not (path / "config.json").is_file():
        raise DataError(
            f"{path}: no config.json; --text-encoder must be the Hugging Face folder of the checkpoint's text encoder"
            " (e.g. roberta-base: its config.json is enough, its tokenizer files are used when present)"
        )
    try:
        return AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as error:  # a config.json that names no model type (a meter model folder's, say)
        raise DataError(f"{path}/config.json is not a Hugging Face text encoder's config ({error}); "
                        "--text-encoder must be the folder of the checkpoint's text encoder (e.g. roberta-base)"
                        ) from None  # fmt: skip


def saved_config(checkpoint: dict[str, Any], path: Path) -> dict[str, Any]:
    """The official config the checkpoint saved (`hyper_parameters.config`), empty when it saved none."""
    hyper = checkpoint.get("hyper_parameters") or {}
    config = (hyper.get("config") or {}) if isinstance(hyper, dict) else hyper
    if not isinstance(config, dict):
        raise DataError(f"{path}: its hyper_parameters hold a {type(config).__name__}, expected the config dictionary")
    return config


def pick_tokenizer(
    tokenizer: str | Path | None, text_encoder: str | Path, text_config: PretrainedConfig, report: ImportReport
) -> PreTrainedTokenizerBase | None:
    folder = tokenizer or (text_encoder if has_tokenizer(text_encoder) else None)
    if folder is None:
        report.notes.append(
            f"no tokenizer in {text_encoder} and no --tokenizer: the folder has none; copy the text encoder's"
            " tokenizer files in (or import again with --tokenizer DIR) before training or predicting with it"
        )
        return None
    loaded = load_tokenizer(folder)
    if len(loaded) > text_config.vocab_size:
        raise DataError(
            f"{folder}: the tokenizer has {len(loaded)} tokens, the text encoder only {text_config.vocab_size}"
        )
    if loaded.pad_token_id is None or loaded.mask_token_id is None:  # tokenizer.json alone: no roles for its tokens
        raise DataError(f"{folder}: the tokenizer has no padding or mask token (a tokenizer.json without its "
                        "tokenizer_config.json?); give the text encoder's whole tokenizer folder")  # fmt: skip
    if text_config.pad_token_id is not None and loaded.pad_token_id != text_config.pad_token_id:
        # another tokenizer's numbering: the folder fine-tuned on ids meaning other words (training refuses the pair)
        raise DataError(f"{folder}: the tokenizer pads with token id {loaded.pad_token_id}, but the text encoder of "
                        f"--text-encoder {text_encoder} has pad_token_id {text_config.pad_token_id} (its config.json):"
                        " not this encoder's tokenizer; give the text encoder's own tokenizer folder (--tokenizer)"
                        )  # fmt: skip
    return loaded


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


IMPORT_OPTIONS = {"model.vision.image_size": "--image-size", "model.vision": "--vision"}


def in_import_options(message: str) -> str:
    """A model-building error as `meter import` is given its model: the settings it names are the command's options
    (it has no model.vision.* settings to set)."""
    named = [f"{setting} is {option}" for setting, option in IMPORT_OPTIONS.items() if setting in message]
    return f"{message} (meter import: {'; '.join(named)})" if named else message


def import_meter_official(
    ckpt: str | Path,
    text_encoder: str | Path,
    out: str | Path,
    vision: str | None = None,
    image_size: int | None = None,
    tokenizer: str | Path | None = None,
    vqa_answers: str | Path | None = None,
) -> ImportReport:
    """Reads the checkpoint safely, rebuilds its model in meter, and writes a model folder at `out`."""
    ckpt = Path(ckpt)
    checkpoint = read_checkpoint(ckpt)
    weights = state_dict_of(checkpoint, ckpt)
    hparams = saved_config(checkpoint, ckpt)
    text_config = read_text_config(text_encoder)
    try:
        layout: OfficialLayout = read_layout(weights, hparams, text_config, vision, image_size)
        model = build_meter(
            layout.config.model, text_config.vocab_size, text_config.pad_token_id, layout.heads, layout.token_types,
            text_config,
        )  # fmt: skip
    except ConfigError as error:
        raise ConfigError(in_import_options(str(error))) from None
    report = ImportReport(Path(out))
    model.load_state_dict(place_weights(weights, model, report), strict=False)
    answers = read_answers(vqa_answers, layout.heads["vqa"]) if vqa_answers and "vqa" in layout.heads else []
    if vqa_answers and "vqa" not in layout.heads:
        raise DataError(f"--vqa-answers given, but {ckpt} has no VQA classifier")
    if "vqa" in layout.heads and not answers:
        report.notes.append("VQA classifier rows are unnamed: name them with --vqa-answers DIR (VQAv2 annotations)")
    if "snli_ve" in layout.heads:  # the official order is meter's: the rows are copied as they are
        report.notes.append(f"SNLI-VE classifier rows: {', '.join(SNLI_VE_LABELS)} (the official order)")
    loaded_tokenizer = pick_tokenizer(tokenizer, text_encoder, text_config, report)
    step = f", epoch {checkpoint['epoch']}, step {checkpoint['global_step']}" if "global_step" in checkpoint else ""
    source = (
        f"Imported from the official METER checkpoint `{ckpt.name}` (sha256 {_sha256(ckpt)}{step}) with"
        f" `meter import meter-official`; text encoder config from `{text_encoder}`; trained at"
        f" {layout.trained_image_size} px."
    )
    description = ModelFolder(
        layout.config, layout.heads, answers, layout.token_types, source=source, notes=report.lines()
    )
    export_model_folder(out, model.eval(), loaded_tokenizer, description)
    return report
