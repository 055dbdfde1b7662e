"""Model folders: every run exports its final model; folders load with identical outputs and never unpickle."""

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from meter.config import Config, load_config
from meter.errors import DataError
from meter.models.folder import (
    ModelFolder,
    export_model_folder,
    load_model,
    load_model_folder,
    require_answers,
    save_model_folder,
)
from meter.models.meter import build_meter
from meter.models.tokenizer_folder import load_tokenizer
from meter.runs import run_pretrain
from meter.tasks.build import tokenizer_path


def _inputs(tokenizer):
    encoded = tokenizer(["a red circle", "what shape is the blue object?"], padding=True, return_tensors="pt")
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)), encoded


@torch.no_grad()
def _outputs(model, tokenizer) -> dict[str, torch.Tensor]:
    pixels, encoded = _inputs(tokenizer)
    fused = model.eval()(pixels, encoded["input_ids"], encoded["attention_mask"])
    return {"joint": fused.joint, "image": fused.image, **{k: head(fused.joint if k != "mlm" else fused.text)
                                                           for k, head in model.heads.items()}}  # fmt: skip


def test_a_finished_run_exports_its_trained_model_and_it_loads_with_identical_outputs(micro_config: Config):
    cfg = load_config(None, ["train.max_steps=3", "train.checkpoint_every=2"], base=micro_config)
    final = run_pretrain(cfg)
    export = Path(cfg.train.out) / "model"
    assert sorted(p.name for p in export.iterdir()) == sorted(
        p.name for p in final.iterdir() if p.name not in ("training_state.pt", "progress.json")
    )
    trained, exported = load_file(final / "model.safetensors"), load_file(export / "model.safetensors")
    assert trained.keys() == exported.keys() and all(torch.equal(trained[k], exported[k]) for k in trained)
    from_checkpoint, tokenizer, _ = load_model_folder(final)
    from_export, _, description = load_model_folder(export)
    a, b = _outputs(from_checkpoint, tokenizer), _outputs(from_export, tokenizer)
    assert a.keys() == b.keys() == {"joint", "image", "mlm", "itm"}
    assert all(torch.equal(a[k], b[k]) for k in a)
    card = (export / "README.md").read_text()
    assert f"Trained with meter: `pretrain` run `{cfg.train.out}`, 3 steps." in card
    assert "Vision encoder: `vit` (timm `vit_base_patch16_224`" in card and "masked language modelling" in card
    assert description.source in card


def test_a_run_stopped_early_or_with_export_off_writes_no_model_folder(micro_config: Config, tmp_path: Path):
    for out, override in ((tmp_path / "stopped", "train.stop_at=1"), (tmp_path / "off", "train.export=false")):
        cfg = load_config(None, ["train.max_steps=2", f"train.out={out}", override], base=micro_config)
        run_pretrain(cfg)
        assert (out / "checkpoints").is_dir() and not (out / "model").exists()


def _model_and_tokenizer(cfg: Config):
    tokenizer = load_tokenizer(tokenizer_path(cfg))
    torch.manual_seed(0)
    heads = {"mlm": len(tokenizer), "vqa": 3}
    return build_meter(cfg.model, len(tokenizer), tokenizer.pad_token_id, heads), tokenizer, heads


def test_export_round_trip_gives_identical_outputs_and_keeps_answers(micro_config: Config, tmp_path: Path):
    model, tokenizer, heads = _model_and_tokenizer(micro_config)
    description = ModelFolder(micro_config, heads, answers=["red", "blue", "2"], source="a test")
    export_model_folder(tmp_path / "m", model, tokenizer, description)
    loaded, loaded_tokenizer, loaded_description = load_model_folder(tmp_path / "m")
    a, b = _outputs(model, tokenizer), _outputs(loaded, loaded_tokenizer)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert loaded_description.answers == ["red", "blue", "2"] and loaded_description.source == "a test"
    require_answers(loaded_description, tmp_path / "m")
    export_model_folder(tmp_path / "m", model, tokenizer, description)  # exporting again replaces the folder
    assert not list(tmp_path.glob(".m.tmp"))


def test_a_model_folder_holding_an_evaluation_is_not_replaced_and_a_half_replaced_one_is(
    micro_config: Config, tmp_path: Path
):
    """`meter evaluate` writes into DIR/eval by default: importing or exporting into DIR again deleted the score and
    the leaderboard file. And the old folder was deleted in place: a kill mid-way left DIR without its config.json,
    refused ever after as "not a meter model folder"."""
    from meter.errors import ConfigError

    model, tokenizer, heads = _model_and_tokenizer(micro_config)
    description = ModelFolder(micro_config, heads, source="a test")
    export_model_folder(tmp_path / "m", model, tokenizer, description)
    (tmp_path / "m/eval").mkdir()
    (tmp_path / "m/eval/vqa_predictions_test-dev2015.json").write_text("[]")
    with pytest.raises(ConfigError, match=r"m holds files that are not its model's \(eval/vqa_predictions_test-dev2015"
                                          r".json: an evaluation's, or yours\)"):  # fmt: skip
        export_model_folder(tmp_path / "m", model, tokenizer, description)
    assert (tmp_path / "m/eval/vqa_predictions_test-dev2015.json").read_text() == "[]"
    (tmp_path / "m/eval/vqa_predictions_test-dev2015.json").unlink()
    (tmp_path / "m/eval").rmdir()
    os.replace(tmp_path / "m", tmp_path / ".m.replaced")  # killed after it set the old folder aside
    export_model_folder(tmp_path / "m", model, tokenizer, description)
    assert load_model_folder(tmp_path / "m")[2].source == "a test" and not (tmp_path / ".m.replaced").exists()


def test_a_folder_without_tokenizer_loads_as_a_model_and_says_what_is_missing(micro_config: Config, tmp_path: Path):
    model, _, heads = _model_and_tokenizer(micro_config)
    save_model_folder(tmp_path / "m", model, None, ModelFolder(micro_config, heads))
    loaded, _ = load_model(tmp_path / "m")
    assert loaded.heads.keys() == model.heads.keys()
    with pytest.raises(DataError, match="has no tokenizer; copy the text encoder's tokenizer files"):
        load_model_folder(tmp_path / "m")
    assert "**none**" in (tmp_path / "m" / "README.md").read_text()
    with pytest.raises(DataError, match="VQA head has 3 rows but the folder names 0 answers"):
        require_answers(ModelFolder(micro_config, heads), tmp_path / "m")


class Bomb:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_weights_that_are_a_pickle_are_refused_without_running_it(micro_config: Config, tmp_path: Path):
    model, tokenizer, heads = _model_and_tokenizer(micro_config)
    save_model_folder(tmp_path / "m", model, tokenizer, ModelFolder(micro_config, heads))
    torch.save({"weights": Bomb(tmp_path / "was_unpickled")}, tmp_path / "m" / "model.safetensors")
    with pytest.raises(DataError, match="model.safetensors: damaged"):  # its checksum differs
        load_model_folder(tmp_path / "m")
    (tmp_path / "m" / "checksums.json").unlink()  # a folder without checksums: the safetensors reader refuses it
    with pytest.raises(DataError, match="not a safetensors weights file"):
        load_model_folder(tmp_path / "m")
    assert not (tmp_path / "was_unpickled").exists()


def test_the_card_of_a_captioner_says_it_writes_captions_and_a_conv_stem_is_named(micro_checkpoints, micro_config):
    """A captioning model's card said "Heads: none (encoders and fusion only)" and offered it only as a pretrained
    starting point; a conv-stem model's card named the patchify layer it replaced; a small part read "0.0 M"."""
    from meter.models.model_card import model_card

    card = (micro_checkpoints("captioning") / "README.md").read_text()
    assert "Heads: none (the decoder writes text)" in card and "image captioning: `meter predict --caption`" in card
    assert "a pretrained starting point" not in card
    assert "pooled by" not in card  # an encoder-decoder has no image pooler: its decoder reads every fused token
    assert "image stream pooled by its first token." in (micro_checkpoints("vqa") / "README.md").read_text()
    cfg = load_config(None, ["model.vision.conv_stem=true"], base=micro_config)
    from meter.models.folder_description import ModelFolder
    from meter.tasks.build import build_model

    model = build_model(cfg, load_tokenizer(tokenizer_path(cfg)), {"itm": 2})

    stem_card = model_card(model, ModelFolder(cfg, {"itm": 2}), has_tokenizer=True)
    assert "replaced by a convolutional stem (`conv_stem`)" in stem_card and "0.0 M" not in stem_card


def test_weights_the_config_has_no_place_for_are_refused_by_name(micro_config: Config, tmp_path: Path):
    """A weight with no place in the model config.json describes (another model's, a head config.json lost) was
    skipped without a word: the folder loaded as a model other than the one its weights are."""
    from safetensors.torch import save_file

    from meter.models.checksums import record_checksums

    model, tokenizer, heads = _model_and_tokenizer(micro_config)
    save_model_folder(tmp_path / "m", model, tokenizer, ModelFolder(micro_config, heads))
    weights = load_file(tmp_path / "m" / "model.safetensors")
    weights["text.model.embeddings.position_ids"] = torch.arange(40)[None]  # as an older transformers saved it
    save_file(weights, str(tmp_path / "m" / "model.safetensors"))
    record_checksums(tmp_path / "m", "model")
    load_model(tmp_path / "m")  # a buffer the model computes has its place
    rows = weights["heads.vqa.3.weight"]
    weights["heads.nlvr2.3.weight"] = torch.zeros(2, 8)  # a head config.json does not name
    weights["heads.vqa.3.weight"] = torch.cat([rows, rows[:1]])  # a fourth answer row
    save_file(weights, str(tmp_path / "m" / "model.safetensors"))
    record_checksums(tmp_path / "m", "model")  # an intact folder: only the weights and the config disagree
    with pytest.raises(DataError, match=r"model.safetensors: 2 weights have no place in the model that config.json "
                                        r"describes, e.g. heads.nlvr2.3.weight \(no such weight\); "
                                        r"heads.vqa.3.weight \(shape \[4, "):  # fmt: skip
        load_model(tmp_path / "m")


def test_a_tokenizer_larger_than_the_text_embedding_is_refused_naming_both_sizes(micro_config: Config, tmp_path: Path):
    """Its last ids would index past the embedding table: an index error deep in the first forward pass."""
    tokenizer = load_tokenizer(tokenizer_path(micro_config))
    rows = len(tokenizer) - 10
    model = build_meter(micro_config.model, rows, tokenizer.pad_token_id, {"itm": 2})
    save_model_folder(tmp_path / "m", model, tokenizer, ModelFolder(micro_config, {"itm": 2}))
    load_model(tmp_path / "m")  # the model alone is whole
    with pytest.raises(DataError, match=rf"the tokenizer has {len(tokenizer)} tokens but the text embedding has "
                                        rf"{rows} rows \(text_encoder/config.json vocab_size\)"):  # fmt: skip
        load_model_folder(tmp_path / "m")


def test_a_tokenizer_padding_with_another_id_than_the_folders_text_encoder_is_refused(
    micro_config: Config, tmp_path: Path
):
    """A tokenizer of another numbering that is no larger than the table loaded, and the model read ids meaning
    other words (an import given another --tokenizer wrote such a folder)."""
    tokenizer = load_tokenizer(tokenizer_path(micro_config))
    model = build_meter(micro_config.model, len(tokenizer), tokenizer.pad_token_id + 1, {"itm": 2})
    save_model_folder(tmp_path / "m", model, tokenizer, ModelFolder(micro_config, {"itm": 2}))
    with pytest.raises(DataError, match=rf"m: the tokenizer pads with token id {tokenizer.pad_token_id} but the text "
                                        rf"encoder with {tokenizer.pad_token_id + 1} \(text_encoder/config.json "
                                        r"pad_token_id\)"):  # fmt: skip
        load_model_folder(tmp_path / "m")
