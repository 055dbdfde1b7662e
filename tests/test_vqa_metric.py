import random

import pytest

from meter.errors import DataError
from meter.metrics.vqa import normalize_answer, question_accuracy, soft_score, vqa_accuracy
from tests.reference import vqa_eval_literal


def answers(*given: str) -> list[dict]:
    return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(given)]


def test_prediction_punctuation_is_removed():
    assert question_accuracy("yes.", answers(*["yes"] * 10)) == 1.0
    assert question_accuracy("Yes!", answers(*["yes"] * 10)) == 1.0
    assert question_accuracy("(red)", answers(*["red"] * 10)) == 1.0


def test_number_words_become_digits_and_articles_go():
    assert normalize_answer("Two") == "2"
    assert normalize_answer("none") == "0"
    assert question_accuracy("two", answers(*["2"] * 10)) == 1.0
    assert question_accuracy("a circle", answers(*["circle"] * 10)) == 1.0
    assert question_accuracy("the red square", answers(*["red square"] * 10)) == 1.0
    assert normalize_answer("the red one") == "red 1"  # sic: number words map anywhere


def test_unanimous_ground_truth_is_not_normalised():
    # the official code normalises ground truth only when annotators disagree, and never lower-cases it
    assert question_accuracy("two", answers(*["two"] * 10)) == 0.0
    assert question_accuracy("red", answers(*["red."] * 10)) == 0.0
    assert question_accuracy("red", answers(*["red."] * 5, *["red"] * 5)) == 1.0


def test_contractions_are_restored():
    assert normalize_answer("dont") == "don't"
    assert question_accuracy("dont know", answers(*["don't know"] * 10)) == 1.0
    assert normalize_answer("Im") == "im"  # sic: the table's capitalised keys never match after lower-casing


def test_digits_with_commas_keep_together():
    assert normalize_answer("1,000") == "1000"
    assert normalize_answer("3.5") == "3.5"


def test_annotator_disagreement_averages_leave_one_out():
    given = answers(*["red"] * 7, *["blue"] * 3)
    assert question_accuracy("red", given) == 1.0
    assert question_accuracy("blue", given) == pytest.approx((7 * 1 + 3 * 2 / 3) / 10)
    assert question_accuracy("green", given) == 0.0
    assert question_accuracy("blue", answers(*["red"] * 8, *["blue"] * 2)) == pytest.approx(0.6)
    assert question_accuracy("blue", answers(*["red"] * 9, "blue")) == pytest.approx(0.3)


def test_totals_per_type_are_means_rounded_to_two_decimals():
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


def test_missing_or_extra_predictions_are_refused_like_the_official_tool():
    annotations = [{"question_id": 1, "question_type": "t", "answer_type": "other", "answers": answers(*["a"] * 10)}]
    with pytest.raises(DataError, match="no prediction"):
        vqa_accuracy(annotations, {})
    with pytest.raises(DataError, match="unknown questions"):
        vqa_accuracy(annotations, {1: "a", 2: "b"})


def test_soft_scores_follow_meter():
    assert [soft_score(n) for n in range(6)] == [0.0, 0.3, 0.6, 0.9, 1.0, 1.0]


def test_matches_a_literal_port_of_the_official_loop_on_random_answers():
    rng = random.Random(0)
    pool = ["yes", "Yes", "yes.", "no", "2", "two", "a dog", "dog", "the dog!", "dont", "don't", "1,000", "1000",
            "red / blue", "red/blue", "3.5", "it's", "its", "  white\n", "(none)", "0", "bird?", "bird ?"]  # fmt: skip
    annotations, predictions = [], {}
    for qid in range(400):
        core = rng.sample(pool, rng.randint(1, 3))
        given = [rng.choice(core) for _ in range(10)]
        annotations.append(
            {
                "question_id": qid,
                "question_type": rng.choice(["what is", "how many", "is the"]),
                "answer_type": rng.choice(["other", "number", "yes/no"]),
                "answers": answers(*given),
            }
        )
        predictions[qid] = rng.choice(pool)
    ours = vqa_accuracy(annotations, predictions)
    official = vqa_eval_literal.evaluate(annotations, predictions)
    assert ours.overall == official["overall"]
    assert ours.per_question_type == official["perQuestionType"]
    assert ours.per_answer_type == official["perAnswerType"]
