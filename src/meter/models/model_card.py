"""The README.md of a model folder: what the model is, what it is made of, where it came from, what it is for."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from meter.models.vision import resolve_vision

if TYPE_CHECKING:
    from meter.config import DecoderConfig
    from meter.models.folder_description import ModelFolder
    from meter.models.meter import Meter

# head kind -> what a model carrying it is for
HEAD_TASKS = {
    "vqa": "visual question answering (VQAv2): `meter evaluate vqa --checkpoint DIR`",
    "nlvr2": "NLVR2: is a statement true of a pair of images",
    "snli_ve": "SNLI-VE visual entailment: entailment / neutral / contradiction",
    "rank": "image-text retrieval (Flickr30k / COCO): a matching score for each candidate pair",
    "itm": "image-text matching (pretraining objective; also scores pairs for retrieval)",
    "mlm": "masked language modelling (pretraining objective)",
}


NO_HEADS = {True: "the decoder writes text", False: "encoders and fusion only"}  # has a decoder ->


def intended_tasks(heads: dict[str, int], task: str = "", decoder: bool = False) -> list[str]:
    tasks = [HEAD_TASKS[kind] for kind in HEAD_TASKS if kind in heads]
    if decoder and task == "captioning":  # a captioner has a decoder and no head
        tasks.append("image captioning: `meter predict --caption`, `/api/caption`, `meter evaluate captioning`")
    elif set(heads) <= {"mlm", "itm"}:
        tasks.append("a pretrained starting point: fine-tune it with `train.init_from=DIR`")
    return tasks


def _millions(module: nn.Module) -> str:
    count = sum(p.numel() for p in module.parameters())
    return f"{count / 1e6:.1f} M" if count >= 50_000 else f"{count:,}"  # a small part is not "0.0 M"


def _decoder_lines(model: Meter, decoder: DecoderConfig) -> list[str]:
    if model.decoder is None:
        return []
    return [
        f"- Decoder (encoder-decoder): {decoder.layers} layers, {decoder.heads} heads, up to {decoder.max_length}"
        f" positions, {_millions(model.decoder)} parameters; classification heads read its class token."
    ]


def model_card(model: Meter, description: ModelFolder, has_tokenizer: bool) -> str:
    cfg = description.config.model
    vision = cfg.vision
    recipe = resolve_vision(vision)
    timm_name, timm_kwargs = recipe.timm_name, recipe.kwargs
    text = model.text.model.config
    fusion = cfg.fusion
    heads = description.heads
    lines = [
        "# meter model",
        "",
        "A self-contained [meter](https://arxiv.org/abs/2111.02387) vision-and-language model folder. Load it with",
        "`meter.models.folder.load_model_folder(DIR)`, or pass the folder wherever meter takes a checkpoint",
        "(`train.init_from=DIR`, `meter evaluate vqa --checkpoint DIR`).",
        "",
        "## Source",
        "",
        description.source or f"Trained with meter (task: {description.config.task}).",
        "",
        "## Architecture",
        "",
        f"- Vision encoder: `{vision.name}` (timm `{timm_name}`"
        + (f", {', '.join(f'{k}={v}' for k, v in sorted(timm_kwargs.items()))}" if timm_kwargs else "")
        + ("; its patch embedding replaced by a convolutional stem (`conv_stem`)" if vision.conv_stem else "")
        + f"), {vision.image_size} px, {model.vision.width} wide, {_millions(model.vision)} parameters; "
        f"pixels normalised with mean {list(model.vision.mean)}, std {list(model.vision.std)}.",
        f"- Text encoder: `{cfg.text.name}` (transformers `{text.model_type}`, {text.num_hidden_layers} layers, "
        f"{text.hidden_size} wide, vocabulary {text.vocab_size}), up to {cfg.text.max_length} tokens, "
        f"{_millions(model.text)} parameters; its config is in `text_encoder/config.json`.",
        f"- Fusion: `{fusion.name}`, {fusion.layers} layers, width {fusion.width}, {fusion.heads} heads, "
        f"FFN {int(fusion.width * fusion.mlp_ratio)}, {_millions(model.fusion)} parameters; "
        f"{description.token_types} token types"
        + (
            "."
            if model.decoder is not None
            else "; image stream pooled by "  # the decoder reads every fused token
            + ("its first token." if cfg.image_pool == "first" else "the mean of its tokens.")
        ),
        *_decoder_lines(model, cfg.decoder),
        "- Heads: " + ", ".join(f"`{kind}` ({size} outputs)" for kind, size in heads.items()) + "."
        if heads
        else f"- Heads: none ({NO_HEADS[model.decoder is not None]}).",
        f"- Parameters in all: {_millions(model)}.",
        "",
        "## Intended use",
        "",
        *[f"- {task}" for task in intended_tasks(heads, description.config.task, model.decoder is not None)],
    ]
    if "vqa" in heads:
        lines.append(
            f"- VQA answers: {len(description.answers)} of {heads['vqa']} classifier rows named (`answers` in"
            " `config.json`)."
            if description.answers
            else "- VQA answers: unknown (no answer list was given): the classifier rows have no names yet."
        )
    lines += [
        "",
        "## Files",
        "",
        "- `config.json`: the meter config (`config`), head sizes (`heads`), VQA answers, token types, source.",
        "- `model.safetensors`: the weights (safetensors: loading never unpickles).",
        "- `text_encoder/config.json`: the text encoder's transformers config.",
        "- Tokenizer: "
        + (
            "the tokenizer files (`tokenizer.json`, ...)."
            if has_tokenizer
            else "**none**: copy the text encoder's tokenizer files in before training or predicting with it."
        ),
    ]
    if description.notes:
        lines += ["", "## Notes", "", *[f"- {note}" for note in description.notes]]
    return "\n".join(lines) + "\n"
