"""Recipe files that cannot be read as intended are a one-line config error naming the file (and the line), never a
YAML traceback, and never a run of the defaults."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from meter.config import load_config
from meter.errors import ConfigError


def _refused(path: Path, text: str | bytes, message: str) -> str:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError, match=message) as raised:
        load_config(path)
    assert "\n" not in str(raised.value)
    return str(raised.value)


@pytest.mark.parametrize(
    "text", ["", "\n\n", "# a recipe, to be written\n", "{}\n"], ids=["empty", "blank", "comment", "braces"]
)
def test_a_recipe_with_no_settings_is_an_error_not_a_run_of_the_defaults(tmp_path: Path, text: str):
    _refused(tmp_path / "recipe.yaml", text, re.escape(f"{tmp_path / 'recipe.yaml'} holds no settings"))


def test_a_python_tag_is_refused_with_its_line_and_never_run(tmp_path: Path):
    marker = tmp_path / "ran"
    text = f"task: vqa\ntrain:\n  out: !!python/object/apply:os.system ['touch {marker}']\n"
    message = _refused(tmp_path / "evil.yaml", text, re.escape(f"{tmp_path / 'evil.yaml'}:3:8: "))
    assert "python/object/apply:os.system" in message and "plain YAML" in message
    assert not marker.exists()


def test_a_syntax_error_names_the_file_and_the_line(tmp_path: Path):
    text = "task: vqa\ntrain:\n  lr: [1, 2\n  out: runs/x\n"  # an unclosed list
    message = _refused(tmp_path / "broken.yaml", text, re.escape(f"{tmp_path / 'broken.yaml'}:4:6: "))
    assert "line 3" in message  # where the list that is not closed starts


def test_a_key_set_twice_in_one_section_is_refused_with_its_line(tmp_path: Path):
    text = "train:\n  lr: 1.0e-4\n  max_steps: 10\n  lr: 5.0e-5\n"  # the second lr would silently win
    _refused(tmp_path / "twice.yaml", text, re.escape(f"{tmp_path / 'twice.yaml'}:4:3: 'lr' is set twice"))


def test_a_recipe_that_is_not_utf8_is_named(tmp_path: Path):
    _refused(tmp_path / "latin1.yaml", "train:\n  out: runs/café\n".encode("latin-1"), "latin1.yaml: not UTF-8 text")


def test_the_same_settings_written_well_still_load(tmp_path: Path):
    (tmp_path / "good.yaml").write_text("task: vqa\ntrain:\n  lr: 1.0e-4\n  out: runs/café\n")
    cfg = load_config(tmp_path / "good.yaml")
    assert (cfg.task, cfg.train.lr, cfg.train.out) == ("vqa", 1e-4, "runs/café")


def test_a_shipped_recipe_is_found_by_its_name_from_any_folder_and_a_bad_key_in_a_file_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """`--config shapes-tiny.yaml` outside the repository was "config file not found" (`meter study` found shipped
    recipes by name); `max_step:` in a recipe named the key but not the file."""
    monkeypatch.chdir(tmp_path)
    assert load_config("shapes-tiny.yaml").model.vision.size == "tiny"
    not_shipped = r"\(nor a recipe of that name shipped in meter/configs\) \(did you mean 'shapes-tiny.yaml'\?\)"
    with pytest.raises(ConfigError, match=rf"config file not found: shapes-tinny.yaml {not_shipped}"):
        load_config("shapes-tinny.yaml")
    # ./ names a file here, and the README's configs/X.yaml a file of the repository: the shipped one is named
    for given in ("./shapes-tiny.yaml", "configs/shapes-tiny.yaml"):
        with pytest.raises(ConfigError, match=rf"config file not found: {given.removeprefix('./')} \(a recipe of that "
                                              r"name is shipped with meter: --config shapes-tiny.yaml\)$"):  # fmt: skip
            load_config(given)
    with pytest.raises(ConfigError, match=r"config file not found: shapes-vqa \(.*\) \(did you mean 'shapes-vqa.yaml"):
        load_config("shapes-vqa")
    with pytest.raises(ConfigError, match=rf"config file {tmp_path} is a folder: give a recipe file"):
        load_config(tmp_path)
    (tmp_path / "mine.yaml").write_text("train:\n  max_step: 5\n")
    with pytest.raises(ConfigError, match=r"mine.yaml: train.max_step is not a setting \(did you mean 'max_steps'\?\)"):
        load_config(tmp_path / "mine.yaml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train.lr: 1e-4\n", "r.yaml: train.lr: a recipe nests its settings .*: write train: then lr: ..., each on its "
                             r"own line .*, or train: \{lr: ...\}; the keys here: task, model, data, train"),
        ("model.text.name: roberta\n", r"write model: then text: then name: ...,.* or model: \{text: \{name: ...\}\}"),
        ("train:\n  lr.x: 1\n", r"train.lr.x: a recipe nests .*; the keys here: out, init_from, .*, lr, "),
    ],
    ids=["top-level", "two-dots", "in-a-section"],
)  # fmt: skip
def test_a_dotted_key_in_a_recipe_says_to_nest_it(tmp_path: Path, text: str, message: str):
    """`train.lr: 1e-4` (an override's form) is one YAML key named "train.lr": it was "train.lr is not a setting",
    of a setting the command line takes under that very name."""
    _refused(tmp_path / "r.yaml", text, message)
