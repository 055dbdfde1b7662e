import re
from pathlib import Path

import pytest
import yaml

from meter.config import Config, apply_override, load_config
from meter.errors import ConfigError
from meter.validate import validate


def test_override_sets_nested_value_with_its_type():
    cfg = load_config(None, ["train.max_steps=200", "train.lr=1e-4", "train.betas=[0.9, 0.99]"])
    assert cfg.train.max_steps == 200
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.train.betas == [0.9, 0.99]


def test_scientific_notation_is_a_number_in_free_form_settings_too(tmp_path: Path):
    """YAML 1.1 reads 1e-12 (no dot) as text: in hf_kwargs, typed by nobody, it reached transformers as a string (an
    internal error); in a split name it stays the name."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  vision:\n    timm_kwargs: {init_values: 1e-5}\nvqa: {eval_split: 1e5}\n")
    cfg = load_config(recipe, ["model.text.hf_kwargs={layer_norm_eps: 1e-12, hidden_size: 32}", "train.out=1e3"])
    assert cfg.model.text.hf_kwargs["layer_norm_eps"] == 1e-12 and cfg.model.vision.timm_kwargs["init_values"] == 1e-5
    assert cfg.vqa.eval_split == "1e5" and cfg.train.out == "1e3"


def test_section_shorthand_sets_its_name():
    cfg = load_config(None, ["model.vision=deit", "model.fusion=merged"])
    assert cfg.model.vision.name == "deit"
    assert cfg.model.fusion.name == "merged"


def test_a_value_given_to_a_section_without_a_name_is_refused_naming_its_settings(tmp_path: Path):
    """`model=merged` (meant as `model.fusion=merged`) set an attribute nothing saved: a study's "merged" row ran
    co-attention; in a recipe `model: vit` was an internal TypeError."""
    for overrides in (["model=merged"], ["train=fast"], ["vqa=foo"]):
        with pytest.raises(ConfigError, match=rf"{overrides[0].split('=')[0]} = '\w+': .* is a section of settings"):
            load_config(None, overrides)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: vit\n")
    with pytest.raises(ConfigError, match=r"model = 'vit': model is a section of settings \(vision, text, "):
        load_config(recipe, [])


def test_a_hash_after_a_space_in_a_command_line_value_is_part_of_it():
    """YAML read ` #` as a comment's start: `train.out='runs/vqa #2'` wrote into runs/vqa, silently."""
    cfg = load_config(None, ["train.out=runs/vqa #2", "data.root=/data/coco #1", "train.best_on=dev#1"])
    assert (cfg.train.out, cfg.data.root, cfg.train.best_on) == ("runs/vqa #2", "/data/coco #1", "dev#1")
    quoted = load_config(None, ["train.out='runs/vqa #2'", 'data.root="/data/coco #1"'])  # YAML's own way
    assert (quoted.train.out, quoted.data.root) == ("runs/vqa #2", "/data/coco #1")
    with pytest.raises(ConfigError, match=r"train.lr = '1e-4 #x' must be a number"):
        load_config(None, ["train.lr=1e-4 #x"])


def test_an_override_key_with_an_empty_part_is_named_as_written():
    """`.train.lr=1` said " is not a setting": a setting named ""."""
    for override in (".train.lr=1", "train..lr=1", "=1"):
        with pytest.raises(ConfigError, match=rf"override {re.escape(repr(override))}: the key .* has an empty part"):
            load_config(None, [override])


def test_unknown_key_names_the_key_and_the_allowed_ones():
    with pytest.raises(ConfigError) as error:
        load_config(None, ["train.max_step=3"])
    message = str(error.value)
    assert "train.max_step" in message and "max_steps" in message and "batch_size" in message


def test_wrong_type_names_the_key_and_the_expected_type():
    with pytest.raises(ConfigError, match=r"train\.max_steps = 'many' must be an integer"):
        load_config(None, ["train.max_steps=many"])


@pytest.mark.parametrize(
    ("argv", "whole"),
    [
        (["vqa.train_splits=[train2014,", "val2014]"], "vqa.train_splits=[train2014, val2014]"),  # refused at its start
        (["train.out=[a,", "b]", "train.lr=1"], "train.out=[a, b]"),  # its start taken as text: refused at its rest
        (["model.text.hf_kwargs={hidden_size:", "32,", "num_hidden_layers:", "1}"],
         "model.text.hf_kwargs={hidden_size: 32, num_hidden_layers: 1}"),
    ],
)  # fmt: skip
def test_an_override_the_shell_split_at_its_spaces_says_to_quote_it_whole(argv: list[str], whole: str):
    with pytest.raises(ConfigError, match=re.escape(f"the shell split an unquoted value at its spaces: quote it whole, "
                                                    f"'{whole}'")):  # fmt: skip
        load_config(None, argv)
    with pytest.raises(ConfigError, match=r"override 'b\]' must look like key.sub=value \(e.g. [^;]*\)$"):
        load_config(None, ["b]"])  # nothing before it: no override split


def test_integer_is_accepted_where_a_float_is_expected():
    cfg = Config()
    apply_override(cfg, "train.lr=1")
    assert isinstance(cfg.train.lr, float)


def test_null_clears_an_optional_path():
    cfg = load_config(None, ["train.init_from=runs/x", "train.init_from=null"])
    assert cfg.train.init_from is None


def test_yaml_file_with_unknown_section_is_an_error(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("modle:\n  vision: vit\n")
    with pytest.raises(ConfigError, match="modle is not a setting.*did you mean 'model'"):
        load_config(path)


def test_yaml_file_overrides_then_command_line_overrides(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  max_steps: 7\n  lr: 0.5\nmodel:\n  text: roberta\n")
    cfg = load_config(path, ["train.max_steps=9"])
    assert (cfg.train.max_steps, cfg.train.lr, cfg.model.text.name) == (9, 0.5, "roberta")
    assert cfg.train.batch_size == Config().train.batch_size


def test_missing_config_file_names_the_path(tmp_path: Path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_unknown_registry_name_lists_the_choices(micro_config: Config):
    from meter.models.fusion import build_fusion

    micro_config.model.fusion.name = "cross"
    with pytest.raises(
        ConfigError, match="model.fusion = 'cross' is not a fusion; choose one of: co-attention, merged"
    ):
        build_fusion(micro_config.model.fusion)


def test_a_negative_image_cache_is_an_error_naming_the_key(micro_config: Config):
    from meter.validate import validate

    validate(micro_config)
    micro_config.data.image_cache_mb = -1
    with pytest.raises(ConfigError, match="data.image_cache_mb = -1 must be at least 0"):
        validate(micro_config)


def test_a_string_setting_takes_text_that_is_not_yaml_as_written():
    cfg = load_config(None, ["vqa.image_pattern={split}/{image_id}.png", "snli_ve.image_pattern={image_id}"])
    assert cfg.vqa.image_pattern == "{split}/{image_id}.png"  # YAML: a broken flow mapping
    assert cfg.snli_ve.image_pattern == "{image_id}"  # YAML: the mapping {image_id: null}


def test_a_string_setting_takes_a_value_with_a_colon_as_written():
    cfg = load_config(None, ["train.out=runs/exp: 2", "train.init_from=runs/a: b: c", "vqa.eval_split=yes"])
    assert cfg.train.out == "runs/exp: 2"  # YAML: a mapping
    assert cfg.train.init_from == "runs/a: b: c"  # YAML: an error; the setting is optional text
    assert cfg.vqa.eval_split == "yes"  # YAML 1.1: true


def test_a_value_that_is_not_yaml_is_an_error_naming_the_key_where_text_does_not_fit():
    with pytest.raises(ConfigError, match=r"train\.max_steps = 'abc' must be an integer"):
        load_config(None, ["train.max_steps=abc"])
    with pytest.raises(ConfigError, match=r"train\.max_steps = '\{3' must be an integer \(it does not parse as YAML"):
        load_config(None, ["train.max_steps={3"])
    with pytest.raises(ConfigError, match=r"train\.betas = '\[0\.9' must be a list of numbers"):
        load_config(None, ["train.betas=[0.9"])


def test_a_mapping_for_a_section_keeps_its_key_errors():
    with pytest.raises(ConfigError, match=r"model\.vision\.nme is not a setting \(did you mean 'name'\?\)"):
        load_config(None, ["model.vision={nme: swin}"])


def test_a_mapping_for_a_section_is_laid_over_it_as_a_recipe_is(tmp_path: Path):
    """`model.fusion={layers: 1}` on the command line reset the recipe's fusion dropout to the default (a recipe's
    section merges; the command line replaced it)."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "model:\n  fusion: {layers: 2, dropout: 0.0}\n  vision: {conv_stem: true, timm_kwargs: {patch_size: 16}}\n"
    )
    cfg = load_config(recipe, ["model.fusion={layers: 1}", "model.vision={name: vit}"])
    assert (cfg.model.fusion.layers, cfg.model.fusion.dropout) == (1, 0.0)
    assert (cfg.model.vision.name, cfg.model.vision.conv_stem, cfg.model.vision.timm_kwargs) == (
        "vit",
        True,
        {"patch_size": 16},
    )
    assert load_config(recipe, ["model.fusion={layers: 1}"]) == load_config(recipe, ["model.fusion.layers=1"])


@pytest.mark.parametrize(("override", "reads_as"), [("train.batch_size=032", 26), ("train.max_steps=1:30", 90)])
def test_a_number_yaml_would_read_in_another_base_is_refused(tmp_path: Path, override: str, reads_as: int):
    """YAML 1.1 reads 032 as octal (26) and 1:30 in base 60 (90): the run used another number than the one typed."""
    key, value = override.split("=")
    assert yaml.safe_load(value) == reads_as  # what the plain reading gave
    with pytest.raises(ConfigError, match=rf"{re.escape(key)} = '{value}' must be an integer .*octal or base-60"):
        load_config(None, [override])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"train:\n  {key.split('.')[1]}: {value}\n")
    with pytest.raises(ConfigError, match=r"r.yaml:2:.*is read by YAML as an octal or base-60 number"):
        load_config(recipe)
    assert load_config(None, ["vqa.eval_split=032"]).vqa.eval_split == "032", "text stays text"
    assert load_config(None, ["train.max_steps=1_000", "train.lr=0.0001"]).train.max_steps == 1000


def test_the_entries_of_a_mapping_setting_are_checked_against_its_types():
    """`nlvr2.image_dirs={train: 5}` was an internal error (a path joined with an int) once the data was read;
    `vqa.image_splits={train2014: [a]}` made folders named ['a']."""
    with pytest.raises(ConfigError, match=r"nlvr2\.image_dirs\.train = 5 must be a string"):
        load_config(None, ["nlvr2.image_dirs={train: 5}"])
    with pytest.raises(ConfigError, match=r"vqa\.image_splits\.train2014 = \['a'\] must be a string"):
        load_config(None, ["vqa.image_splits={train2014: [a]}"])
    assert load_config(None, ["model.text.hf_kwargs={hidden_size: 32}"]).model.text.hf_kwargs == {"hidden_size": 32}


def test_a_misspelt_part_name_gets_a_suggestion():
    with pytest.raises(ConfigError, match=r"model.vision = 'vitt' is not a vision encoder \(did you mean 'vit'\?\); "
                                          r"choose one of: vit, "):  # fmt: skip
        validate(load_config(None, ["model.vision=vitt"]))


def test_a_single_value_for_a_list_shows_the_list_it_needs():
    with pytest.raises(ConfigError, match=r"vqa.train_splits = 'train2014' must be a list of strings, e\.g\. "
                                          r"\[train2014\]"):  # fmt: skip
        load_config(None, ["vqa.train_splits=train2014"])
