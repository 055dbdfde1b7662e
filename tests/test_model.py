from pathlib import Path

import pytest
import torch

from meter.config import Config
from meter.data.collate import Collate
from meter.models.folder import ModelFolder, load_model_folder, save_model_folder
from meter.models.meter import build_meter
from meter.models.tokenizer_folder import load_tokenizer
from meter.tasks.build import tokenizer_path


def _inputs(tokenizer, image_size=64, batch=3):
    encoded = tokenizer(["a red circle", "what shape is the blue object?", "two"], padding=True, return_tensors="pt")
    torch.manual_seed(0)
    return torch.randn(batch, 3, image_size, image_size), encoded["input_ids"], encoded["attention_mask"]


@pytest.mark.parametrize("fusion", ["co-attention", "merged"])
@pytest.mark.parametrize(("vision", "text"), [("vit", "bert"), ("clip-vit", "roberta"), ("deit", "bert")])
def test_forward_and_backward_reach_every_parameter(micro_config: Config, vision: str, text: str, fusion: str):
    cfg = micro_config.model
    cfg.vision.name, cfg.text.name, cfg.fusion.name = vision, text, fusion
    tokenizer = load_tokenizer(tokenizer_path(micro_config))
    model = build_meter(cfg, len(tokenizer), tokenizer.pad_token_id, {"itm": 2, "vqa": 5})
    pixels, ids, mask = _inputs(tokenizer)
    fused = model(pixels, ids, mask)
    assert fused.text.shape == (3, ids.shape[1], cfg.fusion.width)
    assert fused.image.shape[0] == 3 and fused.image.shape[2] == cfg.fusion.width
    assert fused.joint.shape == (3, 2 * cfg.fusion.width)
    loss = model.heads["itm"](fused.joint).sum() + model.heads["vqa"](fused.joint).sum()
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == [], no_grad
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_padding_does_not_change_the_fused_features(micro_config: Config):
    tokenizer = load_tokenizer(tokenizer_path(micro_config))
    model = build_meter(micro_config.model, len(tokenizer), tokenizer.pad_token_id, {}).eval()
    pixels, _, _ = _inputs(tokenizer, batch=1)
    short = tokenizer(["a red circle"], return_tensors="pt")
    padded = tokenizer(["a red circle"], padding="max_length", max_length=12, return_tensors="pt")
    with torch.no_grad():
        a = model(pixels, short["input_ids"], short["attention_mask"])
        b = model(pixels, padded["input_ids"], padded["attention_mask"])
    n = short["input_ids"].shape[1]
    torch.testing.assert_close(a.joint, b.joint, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.text, b.text[:, :n], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("texts", "max_length", "padded_to"), [
    (["a red circle", "what shape is the blue object?"], 40, 16),  # 9 tokens -> 16
    (["a red circle " * 6], 20, 20),  # cut at 20, a multiple of 8 would be 24: max_length caps it
])  # fmt: skip
def test_text_padded_to_a_multiple_adds_only_padding(micro_config: Config, texts, max_length, padded_to):
    """With CUDA graphs the loop pads text to a multiple of 8 tokens (one graph per length met); the tokens, mask
    and word ids of the text itself are those of the plain batch, the rest padding (which the masks keep out: see
    the test above)."""
    tokenizer = load_tokenizer(tokenizer_path(micro_config))
    samples = [{"text": text, "pixels": torch.zeros(3, 8, 8)} for text in texts]
    plain = Collate(tokenizer, max_length)(samples)
    bucketed = Collate(tokenizer, max_length).bucketed(8)(samples)
    n = plain["input_ids"].shape[1]
    assert bucketed["input_ids"].shape == (len(texts), padded_to) and n <= padded_to
    for key, pad in (("input_ids", tokenizer.pad_token_id), ("attention_mask", 0), ("word_ids", -1)):
        assert torch.equal(bucketed[key][:, :n], plain[key]), key
        assert (bucketed[key][:, n:] == pad).all(), key


def test_model_folder_round_trip_gives_identical_outputs(micro_config: Config, tmp_path: Path):
    tokenizer = load_tokenizer(tokenizer_path(micro_config))
    model = build_meter(micro_config.model, len(tokenizer), tokenizer.pad_token_id, {"mlm": len(tokenizer)}).eval()
    save_model_folder(tmp_path / "m", model, tokenizer, ModelFolder(micro_config, {"mlm": len(tokenizer)}))
    loaded, loaded_tokenizer, description = load_model_folder(tmp_path / "m")
    loaded.eval()
    assert description.heads == {"mlm": len(tokenizer)}
    pixels, ids, mask = _inputs(loaded_tokenizer)
    with torch.no_grad():
        a, b = model(pixels, ids, mask), loaded(pixels, ids, mask)
        assert torch.equal(a.joint, b.joint)
        assert torch.equal(model.heads["mlm"](a.text), loaded.heads["mlm"](b.text))


def test_a_batch_of_one_shared_image_is_encoded_once_with_the_same_result(micro_config: Config):
    """The blind baseline's batches are one constant image expanded (a stride-0 view): encoding it once must give
    the outputs and gradients of encoding every copy."""
    tokenizer = load_tokenizer(tokenizer_path(micro_config))
    model = build_meter(micro_config.model, len(tokenizer), tokenizer.pad_token_id, {"vqa": 5}).eval()  # no dropout
    collate = Collate(tokenizer, max_length=16)
    image = torch.randn(3, 64, 64)
    batch = collate([{"pixels": image, "text": t} for t in ("a red circle", "what shape is it?", "two")])
    assert batch["pixels"].stride(0) == 0
    results = []
    for pixels in (batch["pixels"], batch["pixels"].contiguous()):
        model.zero_grad()
        joint = model(pixels, batch["input_ids"], batch["attention_mask"]).joint
        model.heads["vqa"](joint).square().sum().backward()
        results.append((joint.detach(), [p.grad.clone() for p in model.vision.parameters()]))
    (shared, shared_grads), (copies, copies_grads) = results
    torch.testing.assert_close(shared, copies, atol=1e-5, rtol=1e-5)
    for a, b in zip(shared_grads, copies_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    distinct = collate([{"pixels": torch.randn(3, 64, 64), "text": "two"} for _ in range(2)])
    assert distinct["pixels"].stride(0) != 0


def test_fresh_heads_start_as_the_official_code_initialises_them(micro_config: Config):
    """Every new part and every head: Linear and Embedding weights ~ N(0, init_std), biases 0, LayerNorm 1 and 0."""
    model = build_meter(micro_config.model, 1000, 0, {"mlm": 1000, "itm": 2, "vqa": 500})
    linears = [m for m in model.heads.modules() if isinstance(m, torch.nn.Linear)]
    weights = torch.cat([m.weight.flatten() for m in linears])
    assert weights.std().item() == pytest.approx(micro_config.model.init_std, rel=0.05)
    assert all(m.bias is None or not m.bias.any() for m in linears)
    norms = [m for m in model.heads.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(bool((n.weight == 1).all() and (n.bias == 0).all()) for n in norms)
    assert not model.heads["mlm"].bias.any()
