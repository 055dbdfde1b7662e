import json
import logging
import os
import shutil
from pathlib import Path

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

from meter.errors import ConfigError, DataError
from meter.metrics.caption import caption_scores, ptb_tokenize, resolved_tokenizer, tokenize_captions

CORPUS = Path(__file__).parent / "data" / "caption_corpus.txt"
needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="the official PTBTokenizer needs java")


def _corpus(shapes_tasks_world: Path) -> list[str]:
    lines = [line for line in CORPUS.read_text().splitlines() if line.strip()]
    karpathy = json.loads((shapes_tasks_world / "karpathy/dataset_flickr30k.json").read_text())
    return lines + [s["raw"] for image in karpathy["images"] for s in image["sentences"]]


def test_tokenizer_splits_clitics_quotes_brackets_and_final_periods():
    assert ptb_tokenize("A man's dog doesn't \"like\" (brown) grey.") == (
        "a man 's dog does n't `` like '' -lrb- brown -rrb- grey ."
    )
    assert ptb_tokenize("The U.S. flag, 3.5 km at 5 p.m. near Mr. Smith's.") == (
        "the u.s. flag , 3.5 km at 5 p.m. near mr. smith 's ."
    )


@needs_java
def test_python_tokenizer_equals_the_official_ptbtokenizer_on_caption_text(shapes_tasks_world: Path):
    captions = {str(i): [line] for i, line in enumerate(_corpus(shapes_tasks_world))}
    assert tokenize_captions(captions, "python") == tokenize_captions(captions, "ptb")


# inputs where meter's Python tokenizer differed from Java's PTBTokenizer (a differential fuzz found them)
FUZZ_FOUND = [
    "A sign that says 'Stop.'", "'A dog on a couch.'", "She said 'goodbye.' and left", "A man who is 5'10 walking",
    "a 4'11 girl", "a 1'23 record",
    "a dog\u200bruns on the grass", "a\u200cdog\u200druns", "a dog\u2060runs", "\ufeffa dog runs", "a dog\u200eruns",
    "a dog\u180eruns", "a dog\x07runs", "a dog\ue000runs", "a dog\ufffdruns", "a dog runs on the gr\u00adass",
    "a dog\U0001f600runs", "a black& white photo", "a black &white photo", "a salt&pepper shaker", "m&m's on a table",
    "an AT&T phone booth", "approx. 5 dogs on the grass", "a dog -a cat", "a red@ bus", "a double decker# bus",
    "a red#bus", "a _dog_ on a mat", "a dog\\cat", "a dog´s bone", "the u.s.'s flag", "the a.m.'s news", "+5 degrees",
    "5+5 dogs", "A+B blood", "about ,3.5 dogs", "a '5 sign", "fish 'n chips", "an ol' man", "1 1/2 cups of flour",
    "(10 1/2 inches)", "1½ cups", "a © sign", "a ™ logo", "a • bullet", "a ★ star", "5¢ candy", "a 5'6\" man",
    "y'all come", "a dog :) here", "a happy dog:D", "3 sq. feet", "in fig. 5", "the nos. 5", "a dog .red ball",
    "ab!cd", "dog__cat", "@_dog", "a @ sign",
]  # fmt: skip


@needs_java
def test_python_tokenizer_equals_the_official_ptbtokenizer_where_the_fuzz_found_them_apart():
    captions = {str(i): [line] for i, line in enumerate(FUZZ_FOUND)}
    python, ptb = tokenize_captions(captions, "python"), tokenize_captions(captions, "ptb")
    assert {k: (FUZZ_FOUND[int(k)], v) for k, v in python.items() if v != ptb[k]} == {}


# inputs the module docstring names as still tokenised otherwise than by Java's PTBTokenizer: the list stays true
DOCUMENTED_DIFFERENCES = [
    "a dog in Mass. today", "No.5 bus", "aB&C shop", "a c++ book", "a <dog> here", "toys'r'us store", "’stop’ sign",
    "a table.! here", "the no.$ sign", "kid's-meal box", "’Tis a dog", "1 1/2cup", "a 3.5mm jack", "a 1.5kg bag",
    "at 10:30p.m. a dog", "see www.dog.com? yes", "#can't", "it'sjalapeño",
]  # fmt: skip


@needs_java
def test_the_differences_the_docstring_names_are_differences_still():
    captions = {str(i): [line] for i, line in enumerate(DOCUMENTED_DIFFERENCES)}
    python, ptb = tokenize_captions(captions, "python"), tokenize_captions(captions, "ptb")
    assert [DOCUMENTED_DIFFERENCES[int(k)] for k in python if python[k] == ptb[k]] == []


def test_scores_equal_pycocoevalcaps_scorers_on_the_same_input():
    references = {
        "1": ["a red circle on a plain background", "a picture of a red circle", "one shape a red circle"],
        "2": ["two blue squares at the top", "a picture of two blue squares", "two squares both blue"],
        "3": ["a green triangle and a yellow diamond", "an image showing a green triangle and a yellow diamond"],
    }
    candidates = {"1": "a picture of a red circle", "2": "two blue squares", "3": "a green triangle"}
    scores = caption_scores(references, candidates)  # already tokenised: the tokenizer changes nothing
    bleu, _ = Bleu(4).compute_score(references, {k: [v] for k, v in candidates.items()}, verbose=0)
    cider, _ = Cider().compute_score(references, {k: [v] for k, v in candidates.items()})
    assert scores.bleu == tuple(bleu) and scores.cider == cider
    assert scores.to_dict()["bleu4"] == 100 * bleu[3] and scores.to_dict()["cider"] == 100 * cider


def test_punctuation_and_case_do_not_change_the_scores():
    references = {"1": ["A red circle.", "A picture of a red circle!"], "2": ["Two blue squares, side by side."]}
    plain = {"1": ["a red circle", "a picture of a red circle"], "2": ["two blue squares side by side"]}
    candidates = {"1": "A RED circle.", "2": "two blue squares; side by side"}
    assert caption_scores(references, candidates) == caption_scores(
        plain, {"1": "a red circle", "2": "two blue squares side by side"}
    )


def test_a_perfect_caption_scores_full_bleu_and_an_empty_one_zero():
    references = {"1": ["a red circle on a plain background"], "2": ["two blue squares at the top left"]}
    assert caption_scores(references, {k: v[0] for k, v in references.items()}).bleu[3] == pytest.approx(1.0)
    empty = caption_scores(references, {"1": "", "2": ""})
    assert empty.bleu == (0.0, 0.0, 0.0, 0.0) and empty.cider == 0.0


def test_empty_and_incomplete_inputs_are_errors():
    with pytest.raises(DataError, match="no images to score"):
        caption_scores({}, {})
    with pytest.raises(DataError, match="1 of 2 images have no caption, e.g. '2'"):
        caption_scores({"1": ["a"], "2": ["b"]}, {"1": "a"})
    with pytest.raises(DataError, match="no reference caption"):
        caption_scores({"1": []}, {"1": "a"})
    with pytest.raises(ConfigError, match="choose one of: auto, python, ptb"):
        tokenize_captions({"1": ["a"]}, "nltk")


@needs_java
def test_a_line_break_inside_a_caption_scores_as_a_space_and_does_not_shift_the_others():
    """pycocoevalcap's wrapper joins the captions with newlines after replacing only \\n; Java's tokenizer ends a line
    at \\r, U+2028 and others too, which put every later caption on another image's line."""
    references = {"1": ["a dog runs on the grass", "a brown dog running"], "2": ["two cats sleep on a red sofa"]}
    candidates = {"1": "a dog runs on grass", "2": "two cats on a sofa"}
    plain = caption_scores(references, candidates, "ptb")
    for line_break in ("\r", "\u2028", "\x0c"):
        broken = {"1": ["a dog runs" + line_break + "on the grass", "a brown dog running"], "2": references["2"]}
        assert caption_scores(broken, candidates, "ptb") == plain
        assert caption_scores(broken, candidates, "python") == caption_scores(references, candidates, "python")


def test_auto_runs_the_official_tokenizer_where_there_is_java_and_says_so_where_there_is_not(
    tmp_path, monkeypatch, caplog
):
    java = shutil.which("java")
    assert resolved_tokenizer("auto") == ("ptb" if java else "python")
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH without java
    with caplog.at_level(logging.WARNING, logger="meter.metrics.caption"):
        assert resolved_tokenizer("auto") == "python"
    assert "no java on the PATH" in caplog.text
    assert resolved_tokenizer("python") == "python" and resolved_tokenizer("ptb") == "ptb"


@needs_java
def test_the_ptb_tokenizer_gives_what_pycocoevalcaps_own_wrapper_gives(shapes_tasks_world: Path):
    """meter runs the jar itself (from a temporary folder, its failures named) with the wrapper's arguments."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    captions = {str(i): [line, line.upper()] for i, line in enumerate([*_corpus(shapes_tasks_world), *FUZZ_FOUND])}
    official = PTBTokenizer().tokenize({key: [{"caption": c} for c in texts] for key, texts in captions.items()})
    assert tokenize_captions(captions, "ptb") == official


def _fake_java(folder: Path, tokenizer_exit: int) -> Path:
    """A `java` that answers -version and exits `tokenizer_exit` when asked to tokenise (0: prints nothing)."""
    folder.mkdir()
    java = folder / "java"
    java.write_text(f'#!/bin/sh\n[ "$1" = -version ] && exit {0 if tokenizer_exit else 1}\nexit {tokenizer_exit}\n')
    java.chmod(0o755)
    return folder


def test_a_java_that_does_not_run_is_named_and_auto_falls_back_to_python(tmp_path, monkeypatch, caplog):
    """A `java` stub without a runtime (`java -version` fails): "auto" tokenised with it and failed deep inside the
    CIDEr scorer (max() of an empty sequence); a java that fails while tokenising is named, not scored."""
    references, candidates = {"1": ["a dog runs on the grass"]}, {"1": "a dog runs"}
    python = caption_scores(references, candidates, "python")
    monkeypatch.setenv("PATH", f"{_fake_java(tmp_path / 'stub', tokenizer_exit=0)}:{os.environ['PATH']}")
    with caplog.at_level(logging.WARNING, logger="meter.metrics.caption"):
        assert caption_scores(references, candidates, "auto") == python
    assert "java on the PATH does not run" in caplog.text
    with pytest.raises(ConfigError, match="needs java: java on the PATH does not run"):
        caption_scores(references, candidates, "ptb")
    monkeypatch.setenv("PATH", f"{_fake_java(tmp_path / 'failing', tokenizer_exit=3)}:{os.environ['PATH']}")
    with pytest.raises(DataError, match="PTBTokenizer .* failed with exit code 3"):
        caption_scores(references, candidates, "auto")
