import hashlib
import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from meter.data.formats.captions import read_karpathy
from meter.data.formats.nlvr2 import read_nlvr2
from meter.data.formats.snli_ve import SNLI_VE_LABELS, read_snli_ve
from meter.data.shapes import WorldSpec, generate, generate_tasks, tasks_generated
from meter.data.shapes.statements import MATERIALS, PROPERTIES
from meter.errors import DataError
from meter.models.tokenizer_folder import load_tokenizer


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def test_task_files_are_byte_identical_per_seed_and_leave_the_world_untouched(tmp_path: Path):
    spec = WorldSpec(images=16, seed=5, questions_per_image=2, vocab_size=200)
    for name in ("a", "b"):
        generate(tmp_path / name, spec, progress=False)
    world = _digest(tmp_path / "a")
    for name in ("a", "b"):
        generate_tasks(tmp_path / name, spec, progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    after = _digest(tmp_path / "a")
    assert {k: after[k] for k in world} == world  # the VQA world's files did not change
    assert tasks_generated(tmp_path / "a", spec) and not tasks_generated(tmp_path / "a", WorldSpec(images=17))


def test_nlvr2_files_follow_the_official_layout(shapes_tasks_world: Path):
    rows = [json.loads(line) for line in (shapes_tasks_world / "nlvr2/data/train.json").read_text().splitlines()]
    assert rows and all(set(r) >= {"identifier", "sentence", "label", "directory"} for r in rows)
    assert {r["label"] for r in rows} == {"True", "False"}
    for split in ("train", "dev", "test1"):
        folder = shapes_tasks_world / ("nlvr2/images/train" if split == "train" else f"nlvr2/{split}")
        records = read_nlvr2(shapes_tasks_world / f"nlvr2/data/{split}.json", folder)
        assert records and all(r.identifier.startswith(f"{split}-") for r in records)
        assert all(r.left.is_file() and r.right.is_file() for r in records)
        assert all(r.left.name == r.identifier.rsplit("-", 1)[0] + "-img0.png" for r in records)


def test_each_nlvr2_sentence_is_true_of_half_its_image_pairs(shapes_tasks_world: Path):
    records = read_nlvr2(shapes_tasks_world / "nlvr2/data/train.json", shapes_tasks_world / "nlvr2/images/train")
    by_sentence = defaultdict(list)
    for r in records:
        _split, set_id, _pair, sentence = r.identifier.split("-")
        by_sentence[(set_id, sentence)].append(r)
    assert all(len({r.sentence for r in group}) == 1 for group in by_sentence.values())
    truths = Counter(sum(r.label for r in group) for group in by_sentence.values())
    assert truths[2] >= 0.8 * len(by_sentence)  # 2 of 4 pairs true, so the sentence alone tells nothing


def test_snli_ve_balances_labels_and_neutral_speaks_of_what_images_cannot_show(shapes_tasks_world: Path):
    folder = shapes_tasks_world / "images/flickr30k-images"
    records = read_snli_ve(shapes_tasks_world / "snli_ve/snli_ve_train.jsonl", folder)
    assert records and all(r.image.is_file() for r in records)
    counts = Counter(r.label for r in records)
    assert counts[0] == counts[1] == counts[2]
    unseen = set(MATERIALS) | set(PROPERTIES)
    neutral = [r for r in records if SNLI_VE_LABELS[r.label] == "neutral"]
    assert all(unseen & set(r.hypothesis.rstrip(".").split()) for r in neutral)
    contradicted = [r for r in records if SNLI_VE_LABELS[r.label] == "contradiction"]
    assert any(unseen & set(r.hypothesis.rstrip(".").split()) for r in contradicted)  # the same words, absent object
    line = json.loads((shapes_tasks_world / "snli_ve/snli_ve_train.jsonl").read_text().splitlines()[0])
    assert line["pairID"].startswith(f"{line['Flickr30K_ID']}.jpg#") and line["gold_label"] in SNLI_VE_LABELS


def test_flickr30k_split_has_five_distinct_captions_per_image(shapes_tasks_world: Path):
    records = read_karpathy(shapes_tasks_world / "karpathy/dataset_flickr30k.json",
                            shapes_tasks_world / "images/flickr30k-images")  # fmt: skip
    assert Counter(r.split for r in records) == {"train": 11, "val": 2, "test": 2}
    assert all(r.image.is_file() and r.image.suffix == ".jpg" and len(set(r.captions)) == 5 for r in records)


def test_task_texts_need_no_unknown_tokens(shapes_tasks_world: Path):
    tokenizer = load_tokenizer(shapes_tasks_world / "tokenizers/wordpiece")
    texts = [json.loads(line)["sentence"] for line in (shapes_tasks_world / "nlvr2/data/train.json").open()]
    texts += [json.loads(line)["sentence2"] for line in (shapes_tasks_world / "snli_ve/snli_ve_train.jsonl").open()]
    texts += [" ".join(MATERIALS + PROPERTIES)]
    assert not [t for t in texts if tokenizer.unk_token_id in tokenizer(t)["input_ids"]]


def test_malformed_lines_are_named(tmp_path: Path):
    (tmp_path / "dev.json").write_text('{"identifier": "dev-1-0-0", "sentence": "s.", "label": "True"}\n{oops\n')
    with pytest.raises(DataError, match=r"dev.json:2: not valid JSON"):
        read_nlvr2(tmp_path / "dev.json", tmp_path)
    (tmp_path / "dev.json").write_text('{"identifier": "dev-1-0-0", "sentence": "s.", "label": "maybe"}\n')
    with pytest.raises(DataError, match="label 'maybe' must be 'True' or 'False'"):
        read_nlvr2(tmp_path / "dev.json", tmp_path)
    (tmp_path / "ve.jsonl").write_text('{"Flickr30K_ID": "1", "gold_label": "neutral"}\n')
    with pytest.raises(DataError, match="example 1: missing 'sentence2'"):
        read_snli_ve(tmp_path / "ve.jsonl", tmp_path)


def test_snli_ve_lines_without_a_gold_label_are_left_out(tmp_path: Path):
    lines = [
        {"Flickr30K_ID": "7", "sentence2": "a.", "gold_label": "-"},
        {"Flickr30K_ID": "7", "sentence2": "b.", "gold_label": "contradiction", "pairID": "7.jpg#0r1c"},
    ]
    (tmp_path / "ve.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    (record,) = read_snli_ve(tmp_path / "ve.jsonl", tmp_path / "imgs")
    assert (record.pair_id, record.label, record.image) == ("7.jpg#0r1c", 0, tmp_path / "imgs/7.jpg")  # official
