import json
import random
from pathlib import Path

import pytest

from meter.errors import DataError
from meter.metrics.nlvr2 import (
    consistency_group,
    nlvr2_score,
    read_nlvr2_predictions,
    score_nlvr2_files,
    write_nlvr2_predictions,
)
from tests.reference.nlvr2_eval_literal import official_nlvr2


def _write_labels(path: Path, labels: dict[str, str]) -> Path:
    path.write_text("".join(json.dumps({"identifier": i, "sentence": "s.", "label": v}) + "\n"
                            for i, v in labels.items()))  # fmt: skip
    return path


def test_consistency_groups_one_sentence_across_its_image_pairs():
    assert consistency_group("dev-850-0-1") == consistency_group("dev-850-3-1") == "dev-850--1"
    assert consistency_group("dev-850-0-1") != consistency_group("dev-850-0-0")


def test_a_sentence_is_consistent_only_when_every_pair_is_right():
    labels = {"dev-1-0-0": "True", "dev-1-1-0": "False", "dev-2-0-0": "True", "dev-2-1-0": "True"}
    predictions = {"dev-1-0-0": "true", "dev-1-1-0": "FALSE", "dev-2-0-0": "True", "dev-2-1-0": "False"}
    score = nlvr2_score(labels, predictions)
    assert score.accuracy == 75.0 and score.consistency == 50.0
    assert (score.examples, score.sentences) == (4, 2)


@pytest.mark.parametrize("seed", range(5))
def test_scores_equal_the_official_script_on_random_files(tmp_path: Path, seed: int):
    rng = random.Random(seed)
    labels = {}
    for set_id in range(rng.randint(1, 30)):
        for sentence in range(rng.randint(1, 3)):
            for pair in range(rng.randint(1, 4)):
                labels[f"{rng.choice(['dev', 'test1'])}-{set_id}-{pair}-{sentence}"] = rng.choice(["True", "False"])
    predictions = {i: rng.choice(["True", "False", "true", "false"]) for i in labels}
    predictions[f"dev-999-0-{seed}"] = "True"  # an extra prediction: ignored by both
    csv = tmp_path / "predictions.csv"
    write_nlvr2_predictions(predictions, csv)
    accuracy, consistency = official_nlvr2(str(csv), str(_write_labels(tmp_path / "dev.json", labels)))
    ours = score_nlvr2_files(tmp_path / "dev.json", csv)
    assert ours.accuracy == 100 * accuracy and ours.consistency == 100 * consistency


def test_perfect_and_inverted_predictions_bound_the_scores():
    labels = {"dev-1-0-0": "True", "dev-1-1-0": "False"}
    assert nlvr2_score(labels, dict(labels)).to_dict() == {"accuracy": 100.0, "consistency": 100.0, "examples": 2,
                                                           "sentences": 1}  # fmt: skip
    inverted = {i: "False" if v == "True" else "True" for i, v in labels.items()}
    assert (nlvr2_score(labels, inverted).accuracy, nlvr2_score(labels, inverted).consistency) == (0.0, 0.0)


def test_missing_predictions_are_an_error_as_in_the_official_script(tmp_path: Path):
    labels = {"dev-1-0-0": "True", "dev-1-1-0": "False"}
    csv = tmp_path / "p.csv"
    write_nlvr2_predictions({"dev-1-0-0": "True"}, csv)
    assert official_nlvr2(str(csv), str(_write_labels(tmp_path / "dev.json", labels))) is None
    with pytest.raises(DataError, match="1 of 2 examples have no prediction, e.g. 'dev-1-1-0'"):
        score_nlvr2_files(tmp_path / "dev.json", csv)


def test_no_labelled_examples_is_an_error_not_a_division_by_zero():
    with pytest.raises(DataError, match="no labelled examples"):
        nlvr2_score({}, {"dev-1-0-0": "True"})


def test_predictions_csv_round_trips_and_names_a_bad_line(tmp_path: Path):
    write_nlvr2_predictions({"dev-1-0-0": "True", "dev-1-1-0": "False"}, tmp_path / "p.csv")
    assert (tmp_path / "p.csv").read_text() == "dev-1-0-0,True\ndev-1-1-0,False\n"
    assert read_nlvr2_predictions(tmp_path / "p.csv") == {"dev-1-0-0": "True", "dev-1-1-0": "False"}
    (tmp_path / "bad.csv").write_text("dev-1-0-0,True\ndev-1-1-0\n")
    with pytest.raises(DataError, match=r"bad.csv:2: expected identifier,prediction"):
        read_nlvr2_predictions(tmp_path / "bad.csv")


def test_a_labels_file_listing_an_identifier_twice_is_refused(tmp_path: Path):
    labels = tmp_path / "dev.json"
    row = {"identifier": "dev-1-0-0", "sentence": "s.", "label": "True"}
    labels.write_text(json.dumps(row) + "\n" + json.dumps(row | {"label": "False"}) + "\n")
    csv = tmp_path / "predictions.csv"
    write_nlvr2_predictions({"dev-1-0-0": "True"}, csv)
    with pytest.raises(DataError, match=r"dev.json:2: example 2: identifier dev-1-0-0 is listed again \(first on line"):
        score_nlvr2_files(labels, csv)


def test_a_line_splits_only_where_the_official_script_splits_it(tmp_path):
    """A file separator (\\x1c) or U+2028 inside a line is not a line end for the official script's readlines(): the
    line is one bad prediction there, not two predictions."""
    labels = tmp_path / "dev.json"
    labels.write_text('{"identifier": "dev-1-0-0", "label": "True"}\n{"identifier": "dev-1-1-0", "label": "False"}\n')
    for separator in ("\x1c", "\u2028"):
        predictions = tmp_path / "predictions.csv"
        predictions.write_text(f"dev-1-0-0,True{separator},False\ndev-1-1-0,False\n", encoding="utf-8")
        with pytest.raises(DataError, match=r"predictions.csv:1: prediction .* must be True or False"):
            score_nlvr2_files(labels, predictions)
    predictions.write_bytes(b"dev-1-0-0,True\rdev-1-1-0,False\r")  # old Mac line ends: lines, as for the official
    assert score_nlvr2_files(labels, predictions).accuracy == 100.0


def test_scoring_files_names_the_predictions_that_miss_examples_and_a_byte_order_mark(tmp_path):
    labels = tmp_path / "dev.json"
    labels.write_text('{"identifier": "dev-1-0-0", "label": "True"}\n{"identifier": "dev-1-1-0", "label": "False"}\n')
    predictions = tmp_path / "predictions.csv"
    predictions.write_text("dev-1-0-0,True\n")
    with pytest.raises(DataError, match=r"scoring .*predictions.csv against .*dev.json: NLVR2: 1 of 2 examples"):
        score_nlvr2_files(labels, predictions)
    predictions.write_text("dev-1-0-0,True\ndev-1-1-0,False\n", encoding="utf-8-sig")
    with pytest.raises(DataError, match="predictions.csv: the file starts with a byte-order mark"):
        score_nlvr2_files(labels, predictions)


def test_a_predictions_file_that_is_not_utf8_names_the_line(tmp_path: Path):
    """It was an internal error (UnicodeDecodeError); the labels file already said so."""
    (tmp_path / "p.csv").write_bytes(b"dev-1-0-0,True\ndev-1-1-0,False\xff\n")
    with pytest.raises(DataError, match=r"p\.csv:2: not valid UTF-8 \(byte 0xff\)"):
        read_nlvr2_predictions(tmp_path / "p.csv")
