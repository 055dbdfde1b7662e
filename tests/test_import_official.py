"""Importing official METER checkpoints: the tiny reference checkpoint and variants of it built in its layout."""

import json
import os
import sys
import types
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from meter.cli import main
from meter.data.formats.snli_ve import SNLI_VE_LABELS
from meter.errors import DataError
from meter.importers.meter_official import import_meter_official
from meter.importers.safe_load import read_checkpoint
from meter.models.folder import load_model, read_model_folder
from tests.reference import meter_resample_literal

# A copy of the shared reference (../shared/reference/meter-official-tiny): a tiny random checkpoint in the
# official layout with the outputs the official code computed; see its README.md.
REFERENCE = Path(__file__).resolve().parent / "data" / "meter-official-tiny"
CKPT = REFERENCE / "meter_official_tiny.ckpt"
TEXT_ENCODER = REFERENCE / "text_encoder"
OUTPUTS = ("text_feats", "image_feats", "cls_feats", "mlm_logits", "itm_logits", "vqa_logits")
MLM_ROWS = ("mlm_score.decoder.weight", "mlm_score.bias")  # one per token of the vocabulary


def official_checkpoint() -> dict:
    return torch.load(CKPT, weights_only=True)


def save_variant(checkpoint: dict, path: Path) -> Path:
    torch.save(checkpoint, path)
    return path


@torch.no_grad()
def outputs(model, io: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What the official forward returns, computed by our model."""
    fused = model.eval()(io["pixel_values"], io["input_ids"], io["attention_mask"])
    return {
        "text_feats": fused.text, "image_feats": fused.image, "cls_feats": fused.joint,
        "mlm_logits": model.heads["mlm"](fused.text), "itm_logits": model.heads["itm"](fused.joint),
        "vqa_logits": model.heads["vqa"](fused.joint),
    }  # fmt: skip


def test_imported_tiny_checkpoint_reproduces_the_official_outputs(tmp_path: Path, capsys):
    code = main(["import", "meter-official", "--ckpt", str(CKPT), "--text-encoder", str(TEXT_ENCODER),
                 "--out", str(tmp_path / "model")])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "placed 195 tensors" in printed and "could not place" not in printed
    model, description = load_model(tmp_path / "model")
    io = load_file(REFERENCE / "io.safetensors")
    ours = outputs(model, io)
    errors = {name: float((ours[name] - io[name]).abs().max()) for name in OUTPUTS}
    print("max abs error per output:", errors)
    assert all(ours[name].shape == io[name].shape for name in OUTPUTS)
    assert max(errors.values()) <= 1e-5, errors
    assert description.heads == {"mlm": 1000, "itm": 2, "vqa": 10}
    assert description.config.model.vision.timm_kwargs["depth"] == 2  # the config's 3 layers, minus one


def test_leftover_keys_are_tolerated_and_unknown_ones_reported(tmp_path: Path):
    checkpoint = official_checkpoint()
    checkpoint["state_dict"]["vit_model.token_embedding.weight"] = torch.zeros(8, 4)  # CLIP's text tower
    checkpoint["state_dict"]["some_new_module.weight"] = torch.zeros(3)
    report = import_meter_official(save_variant(checkpoint, tmp_path / "x.ckpt"), TEXT_ENCODER, tmp_path / "m")
    assert report.unplaced == ["some_new_module.weight"]
    assert set(report.tolerated) == {
        "vit_model.positional_embedding", "vit_model.ln_final.weight", "vit_model.ln_final.bias",
        "vit_model.token_embedding.weight", "text_transformer.pooler.dense.weight",
        "text_transformer.pooler.dense.bias", "text_transformer.embeddings.position_ids",
    }  # fmt: skip
    card = (tmp_path / "m" / "README.md").read_text()
    assert "could not place 1 tensors: some_new_module.weight" in card


def test_a_missing_weight_is_an_error_naming_it(tmp_path: Path):
    checkpoint = official_checkpoint()
    del checkpoint["state_dict"]["cross_modal_text_pooler.dense.weight"]
    with pytest.raises(DataError, match="text_pooler.dense.weight"):
        import_meter_official(save_variant(checkpoint, tmp_path / "x.ckpt"), TEXT_ENCODER, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_a_text_encoder_that_does_not_fit_is_a_clear_error(tmp_path: Path):
    config = json.loads((TEXT_ENCODER / "config.json").read_text())
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "config.json").write_text(json.dumps({**config, "vocab_size": 2000}))
    with pytest.raises(DataError, match=r"word_embeddings.weight: checkpoint \(1000, 96\), model \(2000, 96\)"):
        import_meter_official(CKPT, tmp_path / "text", tmp_path / "m")


def test_a_text_encoder_of_fewer_layers_than_the_checkpoints_is_a_clear_error(tmp_path: Path):
    """It imported with exit status 0, the checkpoint's other text layers listed as "could not place" and dropped:
    a model without half its text encoder."""
    config = json.loads((TEXT_ENCODER / "config.json").read_text())
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    with pytest.raises(DataError, match=r"text-encoder tensors the model built from --text-encoder has no place for"):
        import_meter_official(CKPT, tmp_path / "text", tmp_path / "m")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("what", ["no model type", "a tokenizer without roles"])
def test_a_text_encoder_or_tokenizer_folder_that_is_not_one_is_named(tmp_path: Path, what: str):
    """A config.json naming no model type (a meter model folder's) was an internal error; a tokenizer.json alone (no
    tokenizer_config.json: no padding token) imported, and every prediction then failed as an internal error."""
    text, tokenizer = tmp_path / "text", None
    text.mkdir()
    if what == "no model type":
        (text / "config.json").write_text(json.dumps({"hidden_size": 8}))
        message = r"text/config.json is not a Hugging Face text encoder's config"
    else:
        (text / "config.json").write_text((TEXT_ENCODER / "config.json").read_text())
        tokenizer = tmp_path / "tokenizer"
        tokenizer.mkdir()
        from meter.data.tokenizers import train_bpe

        train_bpe(["a red circle", "a blue square"] * 50, vocab_size=300).backend_tokenizer.save(
            str(tokenizer / "tokenizer.json")
        )  # the tokenizer.json alone, as a hub folder without its tokenizer_config.json
        message = r"tokenizer: the tokenizer has no padding token"
    with pytest.raises(DataError, match=message):
        import_meter_official(CKPT, text, tmp_path / "m", tokenizer=tokenizer)


def test_a_tokenizer_padding_with_another_id_than_the_text_encoder_is_refused(shapes_world: Path, tmp_path: Path):
    """It imported with a note, and the folder fine-tuned on ids meaning other words (training refuses the pair)."""
    wordpiece = shapes_world / "tokenizers" / "wordpiece"  # pads with 0; the checkpoint's RoBERTa with 1
    with pytest.raises(DataError, match=r"wordpiece: the tokenizer pads with token id 0, but the text encoder of "
                                        r"--text-encoder .*text_encoder has pad_token_id 1"):  # fmt: skip
        import_meter_official(CKPT, TEXT_ENCODER, tmp_path / "m", tokenizer=wordpiece)
    assert not (tmp_path / "m").exists()


def test_a_truncated_download_or_a_folder_is_named_as_such(tmp_path: Path):
    data = CKPT.read_bytes()
    (tmp_path / "half.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"half.ckpt: not a complete PyTorch checkpoint .*interrupted download"):
        import_meter_official(tmp_path / "half.ckpt", TEXT_ENCODER, tmp_path / "m")
    with pytest.raises(DataError, match="is a folder: name the checkpoint file in it"):
        import_meter_official(REFERENCE, TEXT_ENCODER, tmp_path / "m")
    code = main(["import", "meter-official", "--ckpt", str(tmp_path / "half.ckpt"), "--text-encoder",
                 str(TEXT_ENCODER), "--out", str(tmp_path / "m")])  # fmt: skip
    assert code == 2 and not (tmp_path / "m").exists()


def _archive_with_odd_byteorder(path: Path) -> None:
    """A zip checkpoint whose byteorder entry is not text (torch decodes it as UTF-8)."""
    torch.save({"w": torch.ones(2)}, path.with_suffix(".good"))
    with zipfile.ZipFile(path.with_suffix(".good")) as good, zipfile.ZipFile(path, "w") as odd:
        for name in good.namelist():
            odd.writestr(name, b"\xff\xfe" if name.endswith("/byteorder") else good.read(name))


@pytest.mark.parametrize(
    "write",
    [lambda p: p.write_text("hello"), _archive_with_odd_byteorder],  # torch's reader: KeyError, UnicodeDecodeError
    ids=["text-file", "archive-entry-not-utf8"],
)
def test_a_file_torch_cannot_make_sense_of_is_named_as_not_a_checkpoint(tmp_path: Path, write):
    write(tmp_path / "x.ckpt")
    with pytest.raises(DataError, match=r"x.ckpt: not a PyTorch checkpoint, or a damaged one \((KeyError|Unicode)"):
        read_checkpoint(tmp_path / "x.ckpt")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.update(state_dict=[1, 2]), r"its `state_dict` is a list, expected a dictionary of tensors"),
        (lambda c: c.update(hyper_parameters=[1, 2]), r"its hyper_parameters hold a list, expected the config"),
        (lambda c: c.update(state_dict={"vit_model.patch_embed.proj.weight": torch.zeros(128, 3, 4, 4)}),  # IndexError
         r"not an official METER checkpoint: its Swin encoder has no vit_model.layers.N.blocks"),
        (lambda c: c.update(state_dict={"vit_model.patch_embed.proj.weight": torch.zeros(128, 3, 4, 4),
                                        "vit_model.layers.0.blocks.0.norm1.weight": torch.zeros(128)}),  # KeyError
         r"it has no 'vit_model.layers.0.blocks.0.attn.relative_position_bias_table'"),
        (lambda c: c.update(state_dict={"visual.conv1.weight": torch.zeros(1)}),  # a bare OpenAI CLIP, say
         r"not an official METER checkpoint: no vision encoder under 'vit_model.' \(it has e.g. \['visual.conv1"),
        (lambda c: c["state_dict"].update({k: c["state_dict"][k][:500] for k in MLM_ROWS}),
         r"the checkpoint's MLM head predicts 500 tokens, its text encoder embeds 1000 .*: not one model"),
    ],
    ids=["state-dict-list", "hyper-parameters-list", "swin-stageless", "swin-tableless", "another-model",
         "mlm-head-of-another-vocabulary"],
)  # fmt: skip
def test_a_checkpoint_of_another_shape_is_a_clear_error(tmp_path: Path, change, message: str):
    checkpoint = official_checkpoint()
    change(checkpoint)
    with pytest.raises(DataError, match=message):
        import_meter_official(save_variant(checkpoint, tmp_path / "x.ckpt"), TEXT_ENCODER, tmp_path / "m")


def test_an_image_size_the_patches_do_not_tile_is_refused(tmp_path: Path):
    with pytest.raises(DataError, match=r"--image-size 72 must be a multiple of 16 .*e.g. 64 or 80"):
        import_meter_official(CKPT, TEXT_ENCODER, tmp_path / "m", image_size=72)
    assert not (tmp_path / "m").exists()


def test_a_vision_encoder_the_checkpoint_does_not_fit_is_named_by_the_commands_option(tmp_path: Path, capsys):
    """The error told the user to set model.vision.name, a setting `meter import` does not have: its option is
    --vision. (DeiT's distilled filter fails on the CLIP tower's grid with a RuntimeError.)"""
    code = main(["import", "meter-official", "--ckpt", str(CKPT), "--text-encoder", str(TEXT_ENCODER),
                 "--out", str(tmp_path / "m"), "--vision", "timm:deit_base_distilled_patch16_224"])  # fmt: skip
    err = capsys.readouterr().err
    assert code != 0 and "not a checkpoint of deit_base_distilled_patch16_224" in err
    assert "--vision" in err and "model.vision.name" not in err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    ("vision", "names"), [("swin", ["model.vision.image_size is --image-size"]), ("volo", ["model.vision is --vision"])]
)
def test_a_model_the_chosen_encoder_cannot_build_names_the_commands_options(tmp_path: Path, capsys, vision: str,
                                                                            names: list[str]):  # fmt: skip
    """Swin at the checkpoint's 64 px and timm's VOLO with CLIP's width are config errors naming model.vision.*
    settings, which `meter import` does not have: the options that set them are named beside."""
    code = main(["import", "meter-official", "--ckpt", str(CKPT), "--text-encoder", str(TEXT_ENCODER),
                 "--out", str(tmp_path / "m"), "--vision", vision])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "config error: model.vision" in err and all("meter import: " in err and n in err
                                                                       for n in names)  # fmt: skip
    assert not (tmp_path / "m").exists()


class Bomb:
    """Unpickling it would create a directory: proof that the loader ran code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


@pytest.mark.parametrize("zipped", [True, False], ids=["zip-format", "legacy-format"])
def test_a_checkpoint_holding_a_pickled_object_is_refused(tmp_path: Path, zipped: bool):
    checkpoint = official_checkpoint()
    checkpoint["hyper_parameters"]["trap"] = Bomb(tmp_path / "was_unpickled")
    path = tmp_path / "trap.ckpt"
    torch.save(checkpoint, path, _use_new_zipfile_serialization=zipped)
    refusal = r"refusing to load: .*\bmkdir\b" if zipped else r"can read safely \(.*\bmkdir\b"
    with pytest.raises(DataError, match=refusal):
        import_meter_official(path, TEXT_ENCODER, tmp_path / "m")
    assert not (tmp_path / "was_unpickled").exists()
    result = main(["import", "meter-official", "--ckpt", str(path), "--text-encoder", str(TEXT_ENCODER),
                   "--out", str(tmp_path / "m")])  # fmt: skip
    assert result == 2 and not (tmp_path / "was_unpickled").exists()


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.script/save are deprecated
def test_a_torchscript_archive_is_refused_with_the_command_that_converts_it(tmp_path: Path):
    """A TorchScript archive (OpenAI's CLIP .pt files are) failed as "not a PyTorch checkpoint meter can read
    safely (RuntimeError)"."""
    path = tmp_path / "ViT-B-16.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(DataError, match=r"ViT-B-16.pt: a TorchScript archive .*torch.jit.load\('.*ViT-B-16.pt'"):
        import_meter_official(path, TEXT_ENCODER, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_a_checkpoint_in_the_legacy_format_imports(tmp_path: Path):
    torch.save(official_checkpoint(), tmp_path / "legacy.ckpt", _use_new_zipfile_serialization=False)
    report = import_meter_official(tmp_path / "legacy.ckpt", TEXT_ENCODER, tmp_path / "m")
    assert report.placed == 195 and not report.unplaced


def _fake_module(monkeypatch, name: str, **attributes) -> None:
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        monkeypatch.setitem(sys.modules, ".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    for attribute, value in attributes.items():
        value.__module__ = name
        setattr(sys.modules[name], attribute, value)


def test_a_lightning_checkpoint_with_callback_states_and_attribute_dict_loads(tmp_path: Path, monkeypatch):
    """Lightning keys callback states by the callback class and may keep hyper-parameters in an AttributeDict."""
    checkpoint = official_checkpoint()
    with monkeypatch.context() as patch:
        model_checkpoint = type("ModelCheckpoint", (), {})
        attribute_dict = type("AttributeDict", (dict,), {})
        read_only_dict = type("ReadOnlyDict", (dict,), {"__reduce__": lambda self: (type(self), (dict(self),))})
        _fake_module(patch, "pytorch_lightning.callbacks.model_checkpoint", ModelCheckpoint=model_checkpoint)
        _fake_module(patch, "pytorch_lightning.utilities.parsing", AttributeDict=attribute_dict)
        _fake_module(patch, "sacred.config.custom_containers", ReadOnlyDict=read_only_dict)
        checkpoint["callbacks"] = {model_checkpoint: {"best_model_score": torch.tensor(0.7), "dirpath": "x"}}
        config = read_only_dict({**checkpoint["hyper_parameters"]["config"], "max_text_len": 30})
        checkpoint["hyper_parameters"] = attribute_dict(config=config)
        path = save_variant(checkpoint, tmp_path / "lightning.ckpt")
    assert "pytorch_lightning.callbacks.model_checkpoint" not in sys.modules  # the classes are gone when loading
    report = import_meter_official(path, TEXT_ENCODER, tmp_path / "m")
    assert report.placed == 195 and not report.unplaced
    assert read_model_folder(tmp_path / "m").config.model.text.max_length == 30  # read from the hyper-parameters


def test_settings_the_saved_config_holds_as_null_are_the_official_defaults(tmp_path: Path):
    checkpoint = official_checkpoint()
    checkpoint["hyper_parameters"]["config"].update(drop_rate=None, max_text_len=None, num_heads=None)
    import_meter_official(save_variant(checkpoint, tmp_path / "x.ckpt"), TEXT_ENCODER, tmp_path / "m")
    config = read_model_folder(tmp_path / "m").config.model
    assert (config.fusion.dropout, config.text.max_length, config.fusion.heads) == (0.1, 40, 1)  # width 64 / 64


@pytest.mark.parametrize(("key", "value"), [("drop_rate", "0.1"), ("max_text_len", 40.5), ("num_heads", True),
                                            ("max_text_len", float("nan")), ("num_heads", float("inf"))])  # fmt: skip
def test_a_saved_setting_that_is_not_a_number_is_named(tmp_path: Path, key: str, value):
    checkpoint = official_checkpoint()
    checkpoint["hyper_parameters"]["config"][key] = value
    with pytest.raises(DataError, match=f"hyper_parameters config has {key} = {value!r}, expected a"):
        import_meter_official(save_variant(checkpoint, tmp_path / "x.ckpt"), TEXT_ENCODER, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_vqa_answers_name_the_classifier_rows(tmp_path: Path):
    answers = {f"answer {label}": label for label in (3, 0, 9, 1, 8, 2, 7, 4, 6, 5)}  # official ans2label
    (tmp_path / "ans2label.json").write_text(json.dumps(answers))
    import_meter_official(CKPT, TEXT_ENCODER, tmp_path / "m", vqa_answers=tmp_path / "ans2label.json")
    description = read_model_folder(tmp_path / "m")
    assert description.answers == [f"answer {row}" for row in range(10)]
    assert "10 of 10 classifier rows named" in (tmp_path / "m" / "README.md").read_text()
    (tmp_path / "short.json").write_text(json.dumps(list(answers)[:9]))
    with pytest.raises(DataError, match="9 answers, but the checkpoint's VQA classifier has 10 rows"):
        import_meter_official(CKPT, TEXT_ENCODER, tmp_path / "m2", vqa_answers=tmp_path / "short.json")


def _annotations(path: Path, consensus: list[str]) -> None:
    annotations = [{"question_id": n, "multiple_choice_answer": answer, "answers": []} for n, answer in
                   enumerate(consensus)]  # fmt: skip
    path.write_text(json.dumps({"annotations": annotations}))


def test_vqa_answers_rebuilds_the_official_numbering_from_the_annotations(tmp_path: Path):
    """write_vqa.py: train2014 then val2014 consensus answers in file order, in normal form, those given at least 9
    times, numbered in the order first met (not by frequency)."""
    first_met = ["owl", "2", "yes", "red", "cat", "dog", "no", "3", "blue", "left"]
    train = [answer for answer in first_met[:6] for _ in range(5)] + ["zebra"] * 8
    val = [answer for answer in first_met for _ in range(9 if first_met.index(answer) >= 6 else 4)] + ["Two", "The owl"]
    _annotations(tmp_path / "v2_mscoco_train2014_annotations.json", train)
    _annotations(tmp_path / "v2_mscoco_val2014_annotations.json", val)
    import_meter_official(CKPT, TEXT_ENCODER, tmp_path / "m", vqa_answers=tmp_path)
    assert read_model_folder(tmp_path / "m").answers == first_met  # zebra: 8; "Two" counts as "2", "The owl" as owl
    (tmp_path / "v2_mscoco_val2014_annotations.json").unlink()
    with pytest.raises(DataError, match=r"must hold the VQAv2 annotations .* not found: .*val2014_annotations"):
        import_meter_official(CKPT, TEXT_ENCODER, tmp_path / "m2", vqa_answers=tmp_path)


def _replace_heads(checkpoint: dict, heads: dict[str, torch.Tensor]) -> dict:
    weights = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("vqa_classifier.")}
    checkpoint["state_dict"] = {**weights, **heads}
    return checkpoint


def _classifier(prefix: str, inputs: int, hidden: int, classes: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(len(prefix))
    return {
        f"{prefix}.0.weight": torch.randn(hidden, inputs, generator=generator), f"{prefix}.0.bias": torch.randn(hidden),
        f"{prefix}.1.weight": torch.rand(hidden) + 0.5, f"{prefix}.1.bias": torch.randn(hidden),
        f"{prefix}.3.weight": torch.randn(classes, hidden), f"{prefix}.3.bias": torch.randn(classes),
    }  # fmt: skip


def test_nlvr2_checkpoint_maps_three_token_types_and_its_wide_classifier(tmp_path: Path):
    checkpoint = _replace_heads(official_checkpoint(), _classifier("nlvr2_classifier", 256, 128, 2))
    token_types = checkpoint["state_dict"]["token_type_embeddings.weight"]
    checkpoint["state_dict"]["token_type_embeddings.weight"] = torch.cat([token_types, token_types[1:]])
    import_meter_official(save_variant(checkpoint, tmp_path / "nlvr2.ckpt"), TEXT_ENCODER, tmp_path / "m")
    model, description = load_model(tmp_path / "m")
    assert description.heads == {"mlm": 1000, "itm": 2, "nlvr2": 2} and description.token_types == 3
    assert description.config.task == "nlvr2"
    weights = checkpoint["state_dict"]
    assert torch.equal(model.token_type.weight, weights["token_type_embeddings.weight"])
    for index in ("0", "1", "3"):
        assert torch.equal(
            model.heads["nlvr2"].get_submodule(index).weight, weights[f"nlvr2_classifier.{index}.weight"]
        )
    io = load_file(REFERENCE / "io.safetensors")
    with torch.no_grad():  # the official NLVR2 forward: image 1 with token type 1, image 2 with token type 2
        text = model.eval().encode_text(io["input_ids"], io["attention_mask"])
        image = model.encode_image(io["pixel_values"])
        first = model.fuse(text, io["attention_mask"], image, image_token_type=1).joint
        second = model.fuse(text, io["attention_mask"], image.flip(0), image_token_type=2).joint
        logits = model.heads["nlvr2"](torch.cat([first, second], dim=-1))
    assert logits.shape == (3, 2) and torch.isfinite(logits).all()
    assert not torch.equal(first, model.fuse(text, io["attention_mask"], image.flip(0), image_token_type=1).joint)


@pytest.mark.parametrize(
    ("heads", "kind", "task"),
    [
        (_classifier("snli_classifier", 128, 128, 3), "snli_ve", "snli_ve"),
        ({"rank_output.weight": torch.randn(1, 128), "rank_output.bias": torch.randn(1)}, "rank", "retrieval"),
    ],
)
def test_snli_ve_and_retrieval_checkpoints_map_their_heads(tmp_path: Path, heads, kind, task):
    checkpoint = _replace_heads(official_checkpoint(), heads)
    report = import_meter_official(save_variant(checkpoint, tmp_path / "x.ckpt"), TEXT_ENCODER, tmp_path / "m")
    assert not report.unplaced
    model, description = load_model(tmp_path / "m")
    assert description.config.task == task and kind in description.heads
    for name, value in heads.items():
        ours = "heads." + kind + "." + name.split(".", 1)[1]
        assert torch.equal(model.state_dict()[ours], value)


def test_another_resolution_resamples_the_position_embeddings(tmp_path: Path):
    report = import_meter_official(CKPT, TEXT_ENCODER, tmp_path / "m", image_size=96)
    assert any("resampled (bicubic, as METER) from 16 to 36 patches" in note for note in report.notes)
    model, description = load_model(tmp_path / "m")
    assert description.config.model.vision.image_size == 96
    pos_embed = model.vision.backbone.pos_embed
    official = official_checkpoint()["state_dict"]["vit_model.visual.positional_embedding"]
    assert pos_embed.shape == (1, 37, 128)
    assert torch.equal(pos_embed[0, 0], official[0])  # the class token's position is kept as it was
    expected = meter_resample_literal.adapt_position_encoding(official, 16, 96)  # official METER's resampling
    torch.testing.assert_close(pos_embed[0].detach(), expected, rtol=0, atol=1e-6)
    with torch.no_grad():
        fused = model.eval()(torch.randn(1, 3, 96, 96), torch.tensor([[0, 5, 6, 2]]), torch.ones(1, 4))
    assert fused.image.shape == (1, 37, 64)


def test_an_imported_model_evaluates_vqa_and_fine_tunes_like_any_model_folder(micro_config, tmp_path: Path, capsys):
    """The tiny checkpoint has a 64 px CLIP tower and a RoBERTa of 1000 tokens: with the shapes world's byte-level
    BPE tokenizer (300 tokens, RoBERTa's special ids) and 10 of its answers it runs on the shapes world."""
    root = Path(micro_config.data.root)
    answers = ["yes", "no", "red", "blue", "green", "circle", "square", "triangle", "1", "2"]
    (tmp_path / "answers.json").write_text(json.dumps({answer: label for label, answer in enumerate(answers)}))
    model_dir = tmp_path / "imported"
    assert main(["import", "meter-official", "--ckpt", str(CKPT), "--text-encoder", str(TEXT_ENCODER),
                 "--tokenizer", str(root / "tokenizers" / "bpe"), "--vqa-answers", str(tmp_path / "answers.json"),
                 "--out", str(model_dir)]) == 0  # fmt: skip
    assert (model_dir / "tokenizer.json").is_file()
    capsys.readouterr()
    assert main(["evaluate", "vqa", "--checkpoint", str(model_dir), "--out", str(tmp_path / "eval"),
                 f"data.root={root}", "train.progress=false"]) == 0  # fmt: skip
    accuracy = json.loads(capsys.readouterr().out)
    assert 0 <= accuracy["overall"] <= 100
    predicted = {p["answer"] for p in json.loads((tmp_path / "eval/vqa_predictions_val2014.json").read_text())}
    assert predicted <= set(answers)
    finetune = [
        "finetune",
        "task=vqa",
        f"data.root={root}",
        f"train.init_from={model_dir}",
        "train.max_steps=2",
        "train.batch_size=8",
        "train.progress=false",
        "vqa.min_answer_count=1",
        f"train.out={tmp_path / 'ft'}",
    ]
    assert main(finetune) == 0
    _, description = load_model(tmp_path / "ft" / "model")
    assert description.config.model.vision.timm_kwargs["embed_dim"] == 128 and description.token_types == 2


OFFICIAL_SNLI_VE = ("contradiction", "neutral", "entailment")  # label2id of the official meter/utils/write_snli.py


def _official_hidden(head: dict[str, torch.Tensor], prefix: str, joint: torch.Tensor) -> torch.Tensor:
    """The official classifier's first three layers (Linear, LayerNorm, GELU) in plain tensor operations."""
    hidden = F.linear(joint, head[f"{prefix}.0.weight"], head[f"{prefix}.0.bias"])
    return F.gelu(F.layer_norm(hidden, hidden.shape[-1:], head[f"{prefix}.1.weight"], head[f"{prefix}.1.bias"], 1e-5))


def _official_logits(head: dict[str, torch.Tensor], prefix: str, joint: torch.Tensor) -> torch.Tensor:
    return F.linear(_official_hidden(head, prefix, joint), head[f"{prefix}.3.weight"], head[f"{prefix}.3.bias"])


def test_an_official_snli_ve_checkpoint_predicts_the_official_labels(tmp_path: Path):
    """Row k of the last layer is reference input k's own hidden feature (unit length): by Cauchy-Schwarz the
    official model gives input k the official label index k. Meter must name the official label of each."""
    io = load_file(REFERENCE / "io.safetensors")
    head = _classifier("snli_classifier", 128, 128, 3)
    official_joint = io["cls_feats"]  # what the official code computed for the three inputs
    head["snli_classifier.3.weight"] = F.normalize(_official_hidden(head, "snli_classifier", official_joint), dim=-1)
    head["snli_classifier.3.bias"] = torch.zeros(3)
    official = _official_logits(head, "snli_classifier", official_joint).argmax(-1).tolist()
    assert official == [0, 1, 2]
    checkpoint = _replace_heads(official_checkpoint(), head)
    import_meter_official(save_variant(checkpoint, tmp_path / "snli.ckpt"), TEXT_ENCODER, tmp_path / "m")
    model, _ = load_model(tmp_path / "m")
    with torch.no_grad():
        joint = model.eval()(io["pixel_values"], io["input_ids"], io["attention_mask"]).joint
        ours = model.heads["snli_ve"](joint).argmax(-1).tolist()
    assert [SNLI_VE_LABELS[i] for i in ours] == [OFFICIAL_SNLI_VE[i] for i in official]


def test_predict_gives_an_imported_snli_ve_model_the_official_probabilities(micro_config, tmp_path: Path, capsys):
    """`meter predict --text` names each SNLI-VE probability by the official label of its row."""
    bias = torch.tensor([2.0, 0.0, -2.0])  # official rows: contradiction likely, entailment unlikely, for any input
    head = _classifier("snli_classifier", 128, 128, 3) | {
        "snli_classifier.3.weight": torch.zeros(3, 128), "snli_classifier.3.bias": bias,
    }  # fmt: skip
    checkpoint = _replace_heads(official_checkpoint(), head)
    root = Path(micro_config.data.root)
    assert main(["import", "meter-official", "--ckpt", str(save_variant(checkpoint, tmp_path / "snli.ckpt")),
                 "--text-encoder", str(TEXT_ENCODER), "--tokenizer", str(root / "tokenizers" / "bpe"),
                 "--out", str(tmp_path / "m")]) == 0  # fmt: skip
    capsys.readouterr()
    image = next((root / "images" / "val2014").glob("*.png"))
    assert main(["predict", "--checkpoint", str(tmp_path / "m"), "--image", str(image), "--text", "a red circle."]) == 0
    probabilities = json.loads(capsys.readouterr().out)["entailment"]
    expected = dict(zip(OFFICIAL_SNLI_VE, bias.softmax(-1).tolist(), strict=True))
    assert probabilities == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(
    ("answer", "official"),
    [("İstanbul", "i̇stanbul"), ("ΣΑΣ ΟΣ.", "σας ος"), ("yes\u180e", "yes\u180e"), ("٣,٤", "٣٤"), ("ǅ", "ǆ"),
     ("a red, blue", "red blue"), ("Two", "2"), ("dont", "don't"), ("x\x1cy", "x y")],
)  # fmt: skip
def test_the_official_numbering_normalises_answers_as_write_vqa_does_under_python_3(answer: str, official: str):
    """write_vqa.py runs under Python 3 (str.lower, Unicode \\d and whitespace), not Python 2 as the evaluation does:
    the Python 2 rules merged or split other answers than the official numbering. Expected: glossary.normalize_word's
    outputs, run under Python 3."""
    from meter.metrics.vqa import vocabulary_form

    assert vocabulary_form(answer) == official
