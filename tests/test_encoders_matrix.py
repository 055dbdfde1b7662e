"""Every vision encoder x text encoder x fusion, and the encoder-decoder: builds tiny, trains, saves and reloads.

The full matrix is slow (seconds per combination); a representative subset, which still reaches every vision
encoder, every text encoder and both fusions, runs by default.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from meter.cli import main as meter_main
from meter.config import Config
from meter.models.folder import ModelFolder, load_model_folder, save_model_folder
from meter.models.fusion import FUSIONS
from meter.models.meter import build_meter
from meter.models.text import TEXT
from meter.models.tokenizer_folder import load_tokenizer
from meter.models.vision import VISION
from meter.objectives.span import add_sentinels
from meter.tasks.build import tokenizer_path

VISIONS, TEXTS, FUSION_NAMES = VISION.names(), TEXT.names(), FUSIONS.names()
ALL = list(itertools.product(VISIONS, TEXTS, FUSION_NAMES))
# each vision encoder once, each text encoder at least once, both fusions
SUBSET = [(v, TEXTS[i % len(TEXTS)], FUSION_NAMES[i % 2]) for i, v in enumerate(VISIONS)]
ENCODER_DECODER = [(v, TEXTS[(i + 3) % len(TEXTS)], FUSION_NAMES[(i + 1) % 2]) for i, v in enumerate(VISIONS)]
CONFIGS = Path(__file__).parents[1] / "configs"


def _configure(cfg: Config, vision: str, text: str, fusion: str, architecture: str = "encoder") -> Config:
    cfg.model.vision.name, cfg.model.text.name, cfg.model.fusion.name = vision, text, fusion
    cfg.model.vision.timm_kwargs = {}  # the micro config's kwargs are ViT's; every encoder's tiny preset is small
    cfg.model.vision.image_size = 32
    cfg.model.architecture = architecture
    cfg.model.decoder.max_length = 16
    return cfg


def _check_combination(cfg: Config, tmp_path: Path) -> None:
    tokenizer = load_tokenizer(tokenizer_path(cfg))
    if cfg.model.architecture == "encoder-decoder":
        add_sentinels(tokenizer)
    heads = {"mlm": len(tokenizer), "itm": 2}
    model = build_meter(cfg.model, len(tokenizer), tokenizer.pad_token_id, heads)
    encoded = tokenizer(["a red circle left of a square", "two blue triangles"], padding=True, return_tensors="pt")
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 32, 32)

    def outputs(m):
        fused = m(pixels, ids, mask)
        result = [m.heads["itm"](fused.joint), m.heads["mlm"](fused.text)]
        if m.decoder is not None:
            result.append(m.decoder.logits(m.decode(fused, ids[:, :-1])))
        return result

    loss = sum(o.float().square().mean() for o in outputs(model))
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == [], no_grad
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())

    model.eval()
    save_model_folder(tmp_path / "model", model, tokenizer, ModelFolder(cfg, heads))
    loaded, _, _ = load_model_folder(tmp_path / "model")
    loaded.eval()
    with torch.no_grad():
        for before, after in zip(outputs(model), outputs(loaded), strict=True):
            assert torch.equal(before, after)


@pytest.mark.parametrize(("vision", "text", "fusion"), SUBSET)
def test_a_combination_trains_and_survives_a_save_and_load(micro_config, tmp_path, vision, text, fusion):
    _check_combination(_configure(micro_config, vision, text, fusion), tmp_path)


@pytest.mark.parametrize(("vision", "text", "fusion"), ENCODER_DECODER)
def test_an_encoder_decoder_trains_and_survives_a_save_and_load(micro_config, tmp_path, vision, text, fusion):
    _check_combination(_configure(micro_config, vision, text, fusion, "encoder-decoder"), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(("vision", "text", "fusion"), [c for c in ALL if c not in SUBSET])
def test_every_combination_trains_and_survives_a_save_and_load(micro_config, tmp_path, vision, text, fusion):
    _check_combination(_configure(micro_config, vision, text, fusion), tmp_path)


def _pretrain_through_the_cli(shapes_world: Path, out: Path, *overrides: str) -> None:
    code = meter_main([
        "pretrain", "--config", str(CONFIGS / "shapes-tiny.yaml"), *overrides, "train.max_steps=2",
        f"data.root={shapes_world}", f"train.out={out}", "train.batch_size=4", "train.progress=false",
    ])  # fmt: skip
    assert code == 0
    assert (out / "checkpoints" / "step_00000002" / "model.safetensors").is_file()


@pytest.mark.parametrize(("vision", "text", "fusion"), SUBSET[:2])
def test_the_cli_pretrains_a_combination(shapes_world, tmp_path, vision, text, fusion):
    _pretrain_through_the_cli(shapes_world, tmp_path / "run", f"model.vision={vision}", f"model.text={text}",
                              f"model.fusion={fusion}")  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(("vision", "text", "fusion"), ALL)
def test_the_cli_pretrains_every_combination(shapes_world, tmp_path, vision, text, fusion):
    _pretrain_through_the_cli(shapes_world, tmp_path / "run", f"model.vision={vision}", f"model.text={text}",
                              f"model.fusion={fusion}")  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(("vision", "text", "fusion"), ENCODER_DECODER)
def test_the_cli_pretrains_every_encoder_decoder_with_span_and_prefix_lm(shapes_world, tmp_path, vision, text, fusion):
    _pretrain_through_the_cli(shapes_world, tmp_path / "run", f"model.vision={vision}", f"model.text={text}",
                              f"model.fusion={fusion}", "model.architecture=encoder-decoder", "objectives.span=1",
                              "objectives.prefix_lm=1")  # fmt: skip


def test_meter_models_lists_every_part_and_architecture(capsys: pytest.CaptureFixture[str]):
    assert meter_main(["models"]) == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    assert {*VISIONS, *TEXTS, *FUSION_NAMES, "encoder", "encoder-decoder", "timm:<name>"} <= listed
