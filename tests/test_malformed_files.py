"""Malformed dataset files (VQAv2, NLVR2, SNLI-VE, Karpathy, COCO captions): each bad record is a DataError that
names the file, the record and the field; empty captions are skipped and counted; odd answer counts warned once."""

import json
import logging
import re
from pathlib import Path

import pytest

from meter.cli import main
from meter.data.formats.captions import read_coco_captions, read_karpathy
from meter.data.formats.nlvr2 import read_nlvr2
from meter.data.formats.snli_ve import read_snli_ve
from meter.data.formats.vqa import read_vqa
from meter.errors import DataError
from meter.metrics.vqa_files import score_files


def good_annotations() -> list[dict]:
    """Two annotations with ten answers each, as the official files hold them."""
    answers = [{"answer": "red", "answer_confidence": "yes", "answer_id": i} for i in range(1, 11)]
    return [{"question_id": q, "image_id": 9, "question_type": "what", "answer_type": "other",
             "multiple_choice_answer": "red", "answers": answers} for q in (90, 91)]  # fmt: skip


def vqa_files(tmp_path: Path, questions: list | None = None, annotations: list | None = None) -> tuple[Path, Path]:
    """Two questions and their annotations; `questions` / `annotations` replace the good ones."""
    good_questions = [{"image_id": 9, "question": "What colour?", "question_id": 90},
                      {"image_id": 9, "question": "How many?", "question_id": 91}]  # fmt: skip
    q_path, a_path = tmp_path / "questions.json", tmp_path / "annotations.json"
    q_path.write_text(json.dumps({"questions": good_questions if questions is None else questions}))
    a_path.write_text(json.dumps({"annotations": good_annotations() if annotations is None else annotations}))
    return q_path, a_path


def read(q_path: Path, a_path: Path | None):
    return read_vqa(q_path, a_path, q_path.parent, "{image_id}.png", "val2014")


def broken_annotation(**changes) -> list[dict]:
    """The good annotations with the second one changed (a value of None removes the key)."""
    annotations = good_annotations()
    for key, value in changes.items():
        annotations[1].pop(key) if value is None else annotations[1].update({key: value})
    return annotations


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"answers": "red"}, "'answers' should be a list, not the string 'red'"),
        ({"multiple_choice_answer": 2}, "'multiple_choice_answer' should be a string, not the number 2"),
        ({"image_id": "9"}, "'image_id' should be an integer, not the string '9'"),
        ({"question_type": None}, "missing 'question_type'"),
        ({"answers": []}, "'answers' is empty"),
        ({"answers": [{"answer": 3}] * 10}, r"answers\[0\]: 'answer' should be a string, not the number 3"),
        ({"answers": ["red"] * 10}, r"answers\[0\]: should be a JSON object, not the string 'red'"),
    ],
)
def test_a_malformed_vqa_annotation_names_the_file_the_annotation_and_the_field(tmp_path, changes, message):
    q_path, a_path = vqa_files(tmp_path, annotations=broken_annotation(**changes))
    with pytest.raises(DataError, match=rf"{re.escape(str(a_path))}: annotations\[1\] \(question_id 91\): {message}"):
        read(q_path, a_path)


def test_an_annotation_of_another_image_than_its_questions_is_refused_naming_both(tmp_path: Path):
    # files of two sets (abstract scenes and COCO) whose question ids meet: the answers were joined to the wrong image
    q_path, a_path = vqa_files(tmp_path, annotations=broken_annotation(image_id=42))
    message = rf"{re.escape(str(a_path))}: question 91 is annotated for image 42, but {re.escape(str(q_path))} asks it"
    with pytest.raises(DataError, match=message + " of image 9"):
        read(q_path, a_path)
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps([{"question_id": q, "answer": "red"} for q in (90, 91)]))
    with pytest.raises(DataError, match=message):
        score_files(q_path, a_path, predictions)
    assert score_files(None, a_path, predictions).overall == 100.0  # without the questions: nothing to compare
    q_path, a_path = vqa_files(tmp_path, annotations=broken_annotation(image_id=None))  # an annotation without one
    assert [r.image_id for r in read(q_path, a_path)] == [9, 9]


def test_a_question_annotated_twice_is_refused(tmp_path: Path):
    q_path, a_path = vqa_files(tmp_path, annotations=broken_annotation(question_id=90))
    with pytest.raises(DataError, match=r"annotations\[1\] \(question_id 90\): annotated twice \(also annotations\[0]"):
        read(q_path, a_path)


@pytest.mark.parametrize(
    ("question", "message"),
    [
        ({"image_id": 9, "question": "Why?", "question_id": 161000.7}, "'question_id' .* not the number 161000.7"),
        ({"image_id": 9, "question": "Why?", "question_id": None}, "'question_id' should be an integer, not null"),
        (
            {"image_id": "COCO_9", "question": "Why?", "question_id": 92},
            r"\(question_id 92\): 'image_id' should be "
            "an integer, not the string 'COCO_9'",
        ),
        ({"image_id": 9, "question_id": 92}, r"\(question_id 92\): missing 'question'"),
        ({"image_id": 9, "question": "  ", "question_id": 92}, r"\(question_id 92\): 'question' is empty"),  # was read
        ("Why?", "should be a JSON object, not the string 'Why\\?'"),
    ],
)
def test_a_malformed_vqa_question_names_the_file_the_question_and_the_field(tmp_path, question, message):
    q_path, _ = vqa_files(tmp_path)
    questions = json.loads(q_path.read_text())["questions"] + [question]
    q_path, _ = vqa_files(tmp_path, questions=questions)
    with pytest.raises(DataError, match=rf"{re.escape(str(q_path))}: questions\[2\].*{message}"):
        read(q_path, None)


def test_a_vqa_file_that_is_not_an_object_with_its_list_says_what_it_should_hold(tmp_path: Path):
    q_path, a_path = vqa_files(tmp_path)
    a_path.write_text("[1, 2]")
    with pytest.raises(DataError, match="a VQAv2 annotation file is a JSON object with an? 'annotations' list"):
        read(q_path, a_path)
    q_path.write_text("5")
    with pytest.raises(DataError, match="a VQAv2 question file is a JSON object with an? 'questions' list"):
        read(q_path, None)


def test_answer_counts_other_than_ten_are_read_with_one_warning_giving_the_count(tmp_path: Path, caplog):
    annotations = broken_annotation()
    annotations[0]["answers"] = annotations[0]["answers"][:3]
    annotations[1]["answers"] = annotations[1]["answers"][:9]
    q_path, a_path = vqa_files(tmp_path, annotations=annotations)
    with caplog.at_level(logging.WARNING, logger="meter"):
        records = read(q_path, a_path)
    assert [len(r.answers) for r in records] == [3, 9]
    warnings = [r.getMessage() for r in caplog.records if "other than 10" in r.getMessage()]
    assert warnings == [f"{a_path}: 2 of 2 annotations have a number of answers other than 10 (question 90 has 3); "
                        "the accuracy averages over however many there are"]  # fmt: skip


def test_meter_evaluate_names_a_malformed_annotation_in_one_line(tmp_path: Path, capsys):
    _, a_path = vqa_files(tmp_path, annotations=broken_annotation(answers="red"))
    (tmp_path / "predictions.json").write_text(json.dumps([{"question_id": 90, "answer": "red"}]))
    code = main(["evaluate", "vqa", "--annotations", str(a_path), "--predictions", str(tmp_path / "predictions.json")])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert f"{a_path}: annotations[1] (question_id 91): 'answers' should be a list, not the string 'red'" in err


def write_lines(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


NLVR2_GOOD = {"identifier": "dev-850-0-0", "sentence": "There are two dogs.", "label": "True"}


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"identifier": 850, "sentence": "s."}, "'identifier' should be a string, not the number 850"),
        ({"identifier": "dev-850-0-1"}, r"\(dev-850-0-1\): missing 'sentence'"),
        ({"identifier": "dev-850-0-1", "sentence": ["a"]}, r"\(dev-850-0-1\): 'sentence' should be a string, not a"),
        ({"identifier": "dev-850-0-1", "sentence": "  "}, r"\(dev-850-0-1\): 'sentence' is empty"),
        (
            {"identifier": "dev-850-0-1", "sentence": "s.", "directory": [1]},
            r"\(dev-850-0-1\): 'directory' should be "
            "an integer or a string, not a list of 1",
        ),
    ],
)
def test_a_malformed_nlvr2_line_names_the_file_the_line_the_example_and_the_field(tmp_path, row, message):
    path = write_lines(tmp_path / "dev.json", [NLVR2_GOOD, "", row])  # a blank line: the example is on line 3
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:3: example 2:? ?{message}"):
        read_nlvr2(path, tmp_path)


SNLI_GOOD = {"Flickr30K_ID": "1000092795", "pairID": "p0", "sentence2": "A dog runs.", "gold_label": "entailment"}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"Flickr30K_ID": None}, "'Flickr30K_ID' should be a string or an integer, not null"),
        ({"gold_label": 2}, "'gold_label' should be a string, not the number 2"),
        ({"sentence2": ""}, r"'sentence2' \(the hypothesis\) is empty"),
        ({"sentence2": {"text": "x"}}, "'sentence2' should be a string, not an object"),
    ],
)
def test_a_malformed_snli_ve_line_names_the_file_the_line_the_pair_and_the_field(tmp_path, changes, message):
    path = write_lines(tmp_path / "ve.jsonl", [SNLI_GOOD, SNLI_GOOD | {"pairID": "p1"} | changes])
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:2: example 2 \(pairID p1\): {message}"):
        read_snli_ve(path, tmp_path)


def test_an_snli_ve_pair_listed_twice_is_refused_naming_both_lines(tmp_path: Path):
    # its predictions file names each example by pairID: two rows of one id could not be told apart
    path = write_lines(
        tmp_path / "ve.jsonl", [SNLI_GOOD, SNLI_GOOD | {"pairID": "p1"}, SNLI_GOOD | {"gold_label": "-"}]
    )
    with pytest.raises(
        DataError, match=r"ve.jsonl:3: example 3 \(pairID p0\): pairID p0 is listed again \(first on line 1"
    ):
        read_snli_ve(path, tmp_path)


def test_a_json_lines_file_with_a_line_that_is_not_utf8_names_the_line(tmp_path: Path):
    path = tmp_path / "ve.jsonl"
    path.write_bytes(json.dumps(SNLI_GOOD).encode() + b'\n{"sentence2": "caf\xe9"}\n')
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:2: not valid UTF-8"):
        read_snli_ve(path, tmp_path)


def karpathy_entry(index: int, captions: list, **changes) -> dict:
    entry = {"filepath": "val2014", "filename": f"img{index}.jpg", "imgid": index, "split": "test",
             "sentences": [{"raw": c, "tokens": [], "imgid": index, "sentid": k} for k, c in enumerate(captions)],
             "cocoid": 100 + index}  # fmt: skip
    return entry | changes


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sentences": "A dog."}, "'sentences' should be a list, not the string 'A dog.'"),
        ({"sentences": [{"tokens": ["a"]}]}, r"sentences\[0\]: missing 'raw'"),
        ({"cocoid": "101"}, "'cocoid' should be an integer, not the string '101'"),
        ({"split": None}, "'split' should be a string, not null"),
    ],
)
def test_a_malformed_karpathy_entry_names_the_file_the_image_and_the_field(tmp_path, changes, message):
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": [karpathy_entry(0, ["A cat."]), karpathy_entry(1, ["A dog."], **changes)]}))
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: images\[1\] \(img1.jpg\): {message}"):
        read_karpathy(path, tmp_path)


def test_empty_karpathy_captions_are_skipped_and_counted_and_an_image_left_without_one_is_left_out(
    tmp_path: Path, caplog
):
    path = tmp_path / "dataset_coco.json"
    entries = [karpathy_entry(0, ["A cat.", "  ", "A small cat."]), karpathy_entry(1, ["", " "]),
               karpathy_entry(2, ["A dog."])]  # fmt: skip
    path.write_text(json.dumps({"images": entries}))
    with caplog.at_level(logging.WARNING, logger="meter"):
        records = read_karpathy(path, tmp_path)
    assert [(r.image_id, r.captions) for r in records] == [(100, ("A cat.", "A small cat.")), (102, ("A dog.",))]
    (warning,) = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert warning.startswith(f"data: skipped 4 empty captions and images without one in {path}: ")
    assert f"{path}: images[0] (img0.jpg): sentences[1] is empty" in warning
    assert f"{path}: images[1] (img1.jpg): no caption left; the image is left out" in warning


def test_coco_captions_name_a_malformed_annotation_and_skip_empty_captions(tmp_path: Path, caplog):
    path = tmp_path / "captions_val2014.json"
    images = [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}]
    annotations = [{"image_id": 1, "caption": "A cat."}, {"image_id": 2, "caption": " "}]
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    with caplog.at_level(logging.WARNING, logger="meter"):
        records = read_coco_captions(path, tmp_path)
    assert [(r.image_id, r.captions) for r in records] == [(1, ("A cat.",))]
    named = f"{path}: annotations[1] (image_id 2): the caption is empty"
    assert f"data: skipped 1 empty captions and captions of unlisted images in {path}: {named}" in caplog.text
    path.write_text(json.dumps({"images": images, "annotations": [{"image_id": 1, "caption": 7}]}))
    with pytest.raises(DataError, match=r"annotations\[0\] \(image_id 1\): 'caption' should be a string, not the num"):
        read_coco_captions(path, tmp_path)


def test_an_nlvr2_identifier_listed_twice_is_refused_naming_both_lines(tmp_path: Path):
    # scoring is by identifier: the second line would replace the first, and the example be counted once
    path = write_lines(tmp_path / "dev.json", [NLVR2_GOOD, NLVR2_GOOD | {"label": "False"}])
    identifier = NLVR2_GOOD["identifier"]
    with pytest.raises(DataError, match=rf"dev.json:2: example 2: identifier {identifier} is listed again \(first on "
                                        r"line 1\)"):  # fmt: skip
        read_nlvr2(path, tmp_path)


def test_an_image_listed_twice_in_a_karpathy_split_is_refused(tmp_path: Path):
    # rankings and captions are keyed by image id: the copy's captions could never be hits, its references dropped
    path = tmp_path / "dataset_coco.json"
    entries = [karpathy_entry(0, ["A cat."]), karpathy_entry(1, ["A dog."]), karpathy_entry(0, ["A cat again."])]
    path.write_text(json.dumps({"images": entries}))
    with pytest.raises(DataError, match=r"images\[2\] \(img0.jpg\): image id 100 is listed again \(first at images\[0"):
        read_karpathy(path, tmp_path)


def test_coco_captions_refuse_an_image_listed_twice_and_count_captions_of_unlisted_images(tmp_path: Path, caplog):
    path = tmp_path / "captions_val2014.json"
    images = [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}]
    annotations = [{"image_id": 1, "caption": "A cat."}, {"image_id": 2, "caption": "A dog."},
                   {"image_id": 3, "caption": "A bird."}, {"image_id": 3, "caption": "A small bird."}]  # fmt: skip
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    with caplog.at_level(logging.WARNING, logger="meter"):
        records = read_coco_captions(path, tmp_path)
    assert [(r.image_id, r.captions) for r in records] == [(1, ("A cat.",)), (2, ("A dog.",))]
    assert f"skipped 2 empty captions and captions of unlisted images in {path}" in caplog.text
    assert "a caption of image_id 3, which is not among its images" in caplog.text
    path.write_text(json.dumps({"images": [*images, {"id": 1, "file_name": "a2.jpg"}], "annotations": annotations}))
    with pytest.raises(DataError, match=r"images\[2\] \(a2.jpg\): image id 1 is listed again \(first at images\[0\]\)"):
        read_coco_captions(path, tmp_path)
