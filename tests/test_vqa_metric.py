import json
import math
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from meter.cli import main
from meter.config import VqaConfig, load_config
from meter.errors import ConfigError, DataError
from meter.metrics.vqa import (
    DEFAULT_VQA_METRIC,
    PYTHON2_LOWER,
    normalize_answer,
    python2_lower,
    question_accuracy,
    round_as_python2,
    soft_score,
    sum_in_order,
    vqa_accuracy,
)
from meter.metrics.vqa_files import score_files
from meter.tasks.vqa import evaluate_vqa, setup_vqa
from tests.reference import vqa_eval_2017_literal, vqa_eval_2021_literal

OFFICIAL = {"official-2021": vqa_eval_2021_literal, "official-2017": vqa_eval_2017_literal}


def answers(*given: str) -> list[dict]:
    return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(given)]


def both(prediction: str, given: list[dict]) -> tuple[float, float]:
    """(2021 accuracy, 2017 accuracy) of one question."""
    return question_accuracy(prediction, given, "official-2021"), question_accuracy(prediction, given, "official-2017")


def test_the_current_official_code_is_the_default():
    assert DEFAULT_VQA_METRIC == "official-2021" == VqaConfig().metric
    assert question_accuracy("Yes", answers(*["yes"] * 10)) == 0.0  # 2021: unanimous answers, nothing normalised


def test_unanimous_annotators_leave_everything_unnormalised_in_2021_but_not_the_prediction_in_2017():
    assert both("Yes", answers(*["yes"] * 10)) == (0.0, 1.0)
    assert both("yes.", answers(*["yes"] * 10)) == (0.0, 1.0)
    assert both("two", answers(*["2"] * 10)) == (0.0, 1.0)
    assert both("the dog", answers(*["dog"] * 10)) == (0.0, 1.0)
    assert both("dont", answers(*["don't"] * 10)) == (0.0, 1.0)
    assert both("two", answers(*["two"] * 10)) == (1.0, 0.0)  # 2017 turns the prediction into "2"
    assert both("Yes", answers(*["Yes"] * 10)) == (1.0, 0.0)


def test_disagreeing_annotators_are_fully_normalised_in_2021_and_only_punctuation_processed_in_2017():
    assert both("two", answers(*["Two"] * 5, *["two"] * 5)) == (1.0, 0.0)
    assert both("dog", answers(*["a dog"] * 6, *["The Dog!"] * 4)) == (1.0, 0.0)
    assert both("yes", answers(*["yes."] * 5, *["yes"] * 5)) == (1.0, 1.0)
    assert both("cant", answers(*["can't"] * 5, *["cant"] * 5)) == (1.0, 1.0)


def test_every_answer_is_stripped_in_2021_but_only_the_prediction_in_2017():
    assert both(" yes\n", answers(*["yes"] * 10)) == (1.0, 1.0)
    assert both("red", answers(*["red\n"] * 10)) == (1.0, 0.0)
    assert both("red", answers(*["\tred"] * 5, *["red"] * 5)) == (1.0, 1.0)  # 2021 strips: then unanimous
    assert both("blue", answers(*["\tred"] * 5, *["red"] * 5)) == (0.0, 0.0)


def test_normal_form_maps_numbers_drops_articles_restores_contractions():
    assert normalize_answer("Two") == "2"
    assert normalize_answer("none") == "0"
    assert normalize_answer("the red one") == "red 1"  # sic: number words map anywhere
    assert normalize_answer("dont") == "don't"
    assert normalize_answer("Im") == "im"  # sic: the table's capitalised keys never match after lower-casing
    assert normalize_answer("1,000") == "1000"
    assert normalize_answer("3.5") == "3.5"
    assert normalize_answer("(red)") == "red"


@pytest.mark.parametrize("metric", ["official-2021", "official-2017"])
def test_annotator_disagreement_averages_leave_one_out(metric: str):
    given = answers(*["red"] * 7, *["blue"] * 3)
    assert question_accuracy("red", given, metric) == 1.0
    assert question_accuracy("blue", given, metric) == pytest.approx((7 * 1 + 3 * 2 / 3) / 10)
    assert question_accuracy("green", given, metric) == 0.0
    assert question_accuracy("blue", answers(*["red"] * 8, *["blue"] * 2), metric) == pytest.approx(0.6)
    assert question_accuracy("blue", answers(*["red"] * 9, "blue"), metric) == pytest.approx(0.3)


def test_totals_per_type_are_means_rounded_to_two_decimals_and_name_the_metric():
    annotations = [
        {"question_id": 1, "question_type": "what color", "answer_type": "other", "answers": answers(*["red"] * 10)},
        {"question_id": 2, "question_type": "what color", "answer_type": "other",
         "answers": answers(*["red"] * 9, "blue")},
        {"question_id": 3, "question_type": "is there", "answer_type": "yes/no", "answers": answers(*["no"] * 10)},
    ]  # fmt: skip
    result = vqa_accuracy(annotations, {1: "red", 2: "blue", 3: "yes"})
    assert result.per_question_type == {"what color": round(100 * (1 + 0.3) / 2, 2), "is there": 0.0}
    assert result.per_answer_type == {"other": 65.0, "yes/no": 0.0}
    assert result.overall == round(100 * 1.3 / 3, 2)
    assert result.to_dict()["metric"] == "official-2021"
    older = vqa_accuracy(annotations, {1: "Red", 2: "blue", 3: "yes"}, "official-2017").to_dict()
    assert older == {**result.to_dict(), "metric": "official-2017"}


@pytest.mark.parametrize("metric", list(OFFICIAL))
def test_a_half_at_the_third_decimal_rounds_away_from_zero_as_the_official_python_2_code_does(metric: str):
    # 1 right of 32 is 3.125 exactly: Python 2's round (the official code's) gives 3.13, Python 3's 3.12
    annotations = [{"question_id": q, "question_type": "what color", "answer_type": "other",
                    "answers": answers(*["red"] * 10)} for q in range(32)]  # fmt: skip
    predictions = {q: "red" if q == 0 else "blue" for q in range(32)}
    result = vqa_accuracy(annotations, predictions, metric)
    assert result.overall == 3.13 and result.per_question_type == {"what color": 3.13}
    official = OFFICIAL[metric].evaluate(annotations, predictions)
    assert official["overall"] == 3.13


# 400 questions' accuracies 0, 0.3, 0.6, 0.9, 1 (0-4 annotators agreeing) in an order where adding left to right, as
# the official Python 2 code does, and Python 3.12's compensated sum() round to different totals
LEFT_TO_RIGHT_MATTERS = (
    "23320401331301332410410414432231033423212134324322300232414211121303311001343124320210322340101433002220230224"
    "12212424001132231202044403430443004403031240334210133234033442003121032044201421120124403434332443110121111131"
    "03443343443323113024131133021124432140430000001420132221130203324000134110134024221300210420120124331012011114"
    "4300142120021324121240240133003302332113414411312310102001323333443201"
)


def test_the_overall_mean_adds_left_to_right_as_the_official_code_does():
    """The official code (run unchanged under Python 2.7.18 on these 400 questions) gives 55.18; Python 3.12's sum()
    gave 55.17."""
    annotations = [{"question_id": q, "question_type": "is it", "answer_type": "yes/no",
                    "answers": answers(*["yes"] * int(k), *["no"] * (10 - int(k)))}  # 0-4 of 10 say yes
                   for q, k in enumerate(LEFT_TO_RIGHT_MATTERS)]  # fmt: skip
    result = vqa_accuracy(annotations, dict.fromkeys(range(len(annotations)), "yes"))
    assert len(annotations) == 400 and result.overall == 55.18
    values = [question_accuracy("yes", annotation["answers"]) for annotation in annotations]
    assert round_as_python2(100 * math.fsum(values) / 400, 2) == 55.17  # compensated, as 3.12's sum(): the case tells
    assert sum_in_order([1e16, 1.0, -1e16]) == 0.0  # no compensation (fsum and 3.12's sum give 1.0)


def test_digits_are_ascii_digits_as_in_the_official_python_2_code():
    """Python 3's \\d matches any Unicode digit: a full-width "１.５" kept its period (read as a decimal point)."""
    assert normalize_answer("１.５") == "１５"
    assert question_accuracy("１.５", answers(*["１５"] * 4, *["2"] * 6)) == 1.0


def test_case_and_whitespace_are_python_2s_as_in_the_official_code():
    """Python 3 lowers `İ` to `i` plus a combining dot (the official Python 2 code: `i`), lowers a final sigma
    contextually, and does not split at U+180E: "İstanbul" predicted for "istanbul" scored 0."""
    assert normalize_answer("İSTANBUL") == "istanbul"
    assert normalize_answer("ΟΔΟΣ") == "οδοσ"  # Python 2 has no final-sigma rule
    assert normalize_answer("Ꭰ") == "Ꭰ"  # Cherokee: no lower case in Python 2's Unicode 5.2
    assert normalize_answer("two\u180edogs\u180e") == "2 dogs"
    assert question_accuracy("İstanbul", answers(*["istanbul"] * 4, *["rome"] * 6)) == 1.0


@pytest.mark.skipif(shutil.which("python2") is None, reason="compares with the Python 2 that the official code needs")
def test_lower_case_equals_python_2s_on_every_code_point_that_differs_and_on_mixed_text(tmp_path: Path):
    texts = ["".join(chr(c) for c in range(start, start + 64)) for start in range(0, 0x3000, 64)]
    texts += [chr(code) for code in PYTHON2_LOWER] + ["İSTANBUL ΟΔΟΣ Ꭰ Ⴧ Ϳ", "Straße ǅ ΐ"]
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    script = "import io, json; t = json.load(io.open('texts.json')); print(json.dumps([s.lower() for s in t]))"
    done = subprocess.run(["python2", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYENV_VERSION": "2.7.18"})  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"python2 does not run here: {done.stderr[-200:]}")
    assert [python2_lower(text) for text in texts] == json.loads(done.stdout)


def test_missing_or_extra_predictions_are_refused_like_the_official_tool():
    annotations = [{"question_id": 1, "question_type": "t", "answer_type": "other", "answers": answers(*["a"] * 10)}]
    with pytest.raises(DataError, match="no prediction"):
        vqa_accuracy(annotations, {})
    with pytest.raises(DataError, match="unknown questions"):
        vqa_accuracy(annotations, {1: "a", 2: "b"})


def test_an_unknown_metric_is_an_error_naming_the_key_and_the_versions():
    annotations = [{"question_id": 1, "question_type": "t", "answer_type": "other", "answers": answers(*["a"] * 10)}]
    with pytest.raises(ConfigError, match=r"vqa.metric = 'official' is not a VQA metric \(did you mean "
                                          r"'official-2021'\?\); choose one of: official-2021, "
                                          r"official-2017"):  # fmt: skip
        vqa_accuracy(annotations, {1: "a"}, metric="official")


def test_soft_scores_follow_meter():
    assert [soft_score(n) for n in range(6)] == [0.0, 0.3, 0.6, 0.9, 1.0, 1.0]


def test_soft_targets_count_the_answers_as_written_as_the_official_recipe_does():
    """write_vqa.py counts each annotator's answer string against the (normalised) vocabulary: "Two" and "two." do
    not count for "2"; vqa.normalize_targets=true counts them in their normal form."""
    from meter.data.formats.vqa import VqaRecord
    from meter.tasks.vqa import soft_targets

    given = ["2", "2", "Two", "two.", "2", "3", "three", "yes", "2", "2"]
    record = VqaRecord(1, 1, "how many?", Path("x.png"), tuple({"answer": a, "answer_id": i} for i, a in
                                                             enumerate(given)))  # fmt: skip
    index = {"2": 0, "3": 1, "yes": 2}
    official = {}  # the official loop, restated: raw strings, counted, kept where the vocabulary has them
    for answer in given:
        official[answer] = official.get(answer, 0) + 1
    expected = sorted((index[a], soft_score(n)) for a, n in official.items() if a in index)
    assert sorted(soft_targets(record, index)) == expected == [(0, 1.0), (1, 0.3), (2, 0.3)]
    assert sorted(soft_targets(record, index, normalize=True)) == [(0, 1.0), (1, 0.6), (2, 0.3)]


# Random answers as annotators and models type them: one of a few meanings, rendered with mixed case, number words
# or digits, articles, contractions with or without the apostrophe, punctuation and stray whitespace.
MEANINGS = [["yes"], ["no"], ["2"], ["0"], ["10"], ["red", "car"], ["dog"], ["don't", "know"], ["isn't"], ["1,000"],
            ["3.5"], ["it's"], ["i'm"], ["blue/green"], ["man's", "hat"], ["t-shirt"], ["left"],
            ["5", "o'clock"]]  # fmt: skip
NUMBER_WORDS = {"2": ["two", "Two"], "0": ["none", "zero", "None"], "10": ["ten", "TEN"], "5": ["five"]}


def render(rng: random.Random, meaning: list[str], mess: float = 0.25) -> str:
    """`meaning` as someone types it: each kind of variation with probability `mess`."""
    words = []
    for word in meaning:
        if word in NUMBER_WORDS and rng.random() < mess:
            word = rng.choice(NUMBER_WORDS[word])
        if "'" in word and rng.random() < mess:
            word = word.replace("'", "")
        if "/" in word and rng.random() < mess:
            word = word.replace("/", rng.choice([" / ", "-", " "]))
        if rng.random() < mess:
            word = rng.choice([word.capitalize(), word.upper()])
        words.append(word)
    text = " ".join(words)
    if rng.random() < mess:
        text = rng.choice(["a ", "an ", "the ", "The "]) + text
    if rng.random() < mess:
        text = rng.choice(["(", '"', ""]) + text + rng.choice([".", "!", "?", " ?", ")", ",", "..."])
    if rng.random() < mess:
        text = rng.choice([" ", "\n", ""]) + text + rng.choice([" ", "\t", "\n"])
    return text


def random_questions(seed: int, count: int) -> tuple[list[dict], dict[int, str]]:
    rng = random.Random(seed)
    annotations, predictions = [], {}
    for qid in range(count):
        meanings = rng.sample(MEANINGS, rng.randint(1, 3))
        if rng.random() < 0.3:  # unanimous annotators (the 2021 code then normalises nothing)
            given = [render(rng, meanings[0])] * 10
        else:
            typed = [render(rng, m) for m in meanings for _ in range(2)]
            given = [rng.choice(typed) if rng.random() < 0.6 else render(rng, rng.choice(meanings)) for _ in range(10)]
        rows = answers(*given)
        if rng.random() < 0.05:  # without ids, identical answers are equal dicts (the official leave-one-out quirk)
            rows = [{"answer": a} for a in given]
        annotations.append({"question_id": 1000 + qid, "question_type": rng.choice(["what is", "how many", "is the"]),
                            "answer_type": rng.choice(["other", "number", "yes/no"]), "answers": rows})  # fmt: skip
        choice = rng.random()
        if choice < 0.3:
            predictions[1000 + qid] = rng.choice(given)
        elif choice < 0.7:
            predictions[1000 + qid] = render(rng, rng.choice(meanings))
        else:
            predictions[1000 + qid] = render(rng, rng.choice(MEANINGS))
    return annotations, predictions


@pytest.mark.parametrize("metric", ["official-2021", "official-2017"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_a_literal_restatement_of_its_official_version_on_random_answers(metric: str, seed: int):
    annotations, predictions = random_questions(seed, 600)
    ours = vqa_accuracy(annotations, predictions, metric)
    official = OFFICIAL[metric].evaluate(annotations, predictions)
    assert ours.overall == official["overall"]
    assert ours.per_question_type == official["perQuestionType"]
    assert ours.per_answer_type == official["perAnswerType"]
    assert ours.per_question == official["evalQA"]


def test_the_random_answers_tell_the_two_versions_apart():
    annotations, predictions = random_questions(0, 600)
    official_2021 = vqa_eval_2021_literal.evaluate(annotations, predictions)
    official_2017 = vqa_eval_2017_literal.evaluate(annotations, predictions)
    assert abs(official_2021["overall"] - official_2017["overall"]) > 5
    assert 5 < official_2021["overall"] < 95 and 5 < official_2017["overall"] < 95


def test_scoring_leaves_the_annotations_as_they_were():
    annotations, predictions = random_questions(3, 50)
    before = json.dumps(annotations)
    for metric in OFFICIAL:
        vqa_accuracy(annotations, predictions, metric)
    assert json.dumps(annotations) == before


def write_files(tmp_path: Path) -> tuple[Path, Path]:
    annotations, predictions = random_questions(4, 100)
    (tmp_path / "annotations.json").write_text(json.dumps({"annotations": annotations}))
    rows = [{"question_id": q, "answer": a} for q, a in predictions.items()]
    (tmp_path / "predictions.json").write_text(json.dumps(rows))
    return tmp_path / "annotations.json", tmp_path / "predictions.json"


@pytest.mark.parametrize("metric", ["official-2021", "official-2017"])
def test_evaluate_vqa_scores_a_file_with_the_metric_it_is_given(tmp_path: Path, capsys, metric: str):
    annotations, predictions = write_files(tmp_path)
    assert main(["evaluate", "vqa", "--annotations", str(annotations), "--predictions", str(predictions),
                 "--metric", metric]) == 0  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    answered = {r["question_id"]: r["answer"] for r in json.loads(predictions.read_text())}
    official = OFFICIAL[metric].evaluate(json.loads(annotations.read_text())["annotations"], answered)
    assert printed["metric"] == metric
    assert (printed["overall"], printed["per_answer_type"]) == (official["overall"], official["perAnswerType"])
    assert printed == score_files(None, annotations, predictions, metric).to_dict()


def test_identical_answer_records_are_scored_as_officially_with_a_warning(tmp_path: Path, capsys, caplog):
    """A converted file without answer_id: the official leave-one-out compares whole records, so ten identical ones
    are left out together (both questions right scores 15.00, where ids give 100). The number stays the official
    one; the warning says why it is low and what to add."""
    annotations = [{"question_id": q, "image_id": 1, "question_type": "is", "answer_type": "yes/no",
                    "answers": [{"answer": a, "answer_confidence": "yes"} for a in given]}
                   for q, given in ((1, ["yes"] * 10), (2, ["yes"] * 7 + ["no"] * 3))]  # fmt: skip
    (tmp_path / "annotations.json").write_text(json.dumps({"annotations": annotations}))
    (tmp_path / "predictions.json").write_text(json.dumps([{"question_id": q, "answer": "yes"} for q in (1, 2)]))
    assert main(["evaluate", "vqa", "--annotations", str(tmp_path / "annotations.json"), "--predictions",
                 str(tmp_path / "predictions.json")]) == 0  # fmt: skip
    official = vqa_eval_2021_literal.evaluate(annotations, {1: "yes", 2: "yes"})["overall"]
    assert json.loads(capsys.readouterr().out)["overall"] == official == 15.0
    assert "2 of 2 annotations have identical answer records (question 1; no answer_id?)" in caplog.text


def test_evaluate_vqa_without_a_metric_uses_the_current_official_code(tmp_path: Path, capsys):
    annotations, predictions = write_files(tmp_path)
    assert main(["evaluate", "vqa", "--annotations", str(annotations), "--predictions", str(predictions)]) == 0
    assert json.loads(capsys.readouterr().out)["metric"] == "official-2021"


def test_evaluate_vqa_refuses_an_unknown_metric_naming_the_choices(tmp_path: Path, capsys):
    annotations, predictions = write_files(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        main(["evaluate", "vqa", "--annotations", str(annotations), "--predictions", str(predictions),
              "--metric", "2021"])  # fmt: skip
    assert stopped.value.code == 2
    assert "--metric: invalid choice: '2021' (choose from 'official-2021', 'official-2017')" in capsys.readouterr().err


def test_a_checkpoint_is_scored_with_the_metric_given_and_the_score_file_names_it(
    micro_checkpoints, shapes_world: Path, tmp_path: Path, capsys
):
    out = tmp_path / "eval"
    assert main(["evaluate", "vqa", "--checkpoint", str(micro_checkpoints("vqa")), "--out", str(out),
                 "--metric", "official-2017", f"data.root={shapes_world}", "train.progress=false"]) == 0  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "vqa_accuracy_val2014.json").read_text())
    assert printed == saved and saved["metric"] == "official-2017"
    rows = json.loads((out / "vqa_predictions_val2014.json").read_text())
    predictions = {r["question_id"]: r["answer"] for r in rows}
    annotations = json.loads((shapes_world / "vqa/v2_mscoco_val2014_annotations.json").read_text())["annotations"]
    assert saved["overall"] == vqa_eval_2017_literal.evaluate(annotations, predictions)["overall"]


def test_a_misspelt_metric_fails_before_training_or_predicting(micro_config, tmp_path: Path):
    cfg = load_config(None, ["task=vqa", "vqa.metric=official-2022", f"data.root={tmp_path / 'absent'}"],
                      base=micro_config)  # fmt: skip
    with pytest.raises(ConfigError, match="vqa.metric = 'official-2022' is not a VQA metric"):
        setup_vqa(cfg)
    with pytest.raises(ConfigError, match="vqa.metric = 'official-2022' is not a VQA metric"):
        evaluate_vqa(cfg, tmp_path / "no-checkpoint", tmp_path / "eval")
