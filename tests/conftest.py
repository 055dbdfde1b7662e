"""Shared fixtures: a small shapes world on disk (with its trained tokenizers) and a micro model config."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from meter.config import Config, load_config
from meter.data.shapes import WorldSpec, generate, generate_tasks

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# cuBLAS reads it once, when a process makes its first handle: the deterministic CUDA tests run after others
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
if os.environ.get("PYTEST_XDIST_WORKER"):  # one of several test processes (pytest -n): a core each, not all of them
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)

MICRO = [
    "model.vision.timm_kwargs={embed_dim: 32, depth: 1, num_heads: 2, patch_size: 16}",
    "model.text.hf_kwargs={hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64}",
    "model.fusion.layers=1",
    "model.fusion.width=32",
    "model.fusion.heads=2",
    "train.batch_size=8",
    "train.progress=false",
    "train.log_every=1",
]


SHAPES_SPEC = WorldSpec(images=60, seed=3, questions_per_image=3, vocab_size=300)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--include-slow", action="store_true", help="also run tests marked slow (CI does)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--include-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --include-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shapes_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 images (48 train, 6 val, 6 test), 3 questions each; read-only for tests: copy before changing it."""
    out = tmp_path_factory.mktemp("shapes")
    generate(out, SHAPES_SPEC, progress=False)
    return out


@pytest.fixture(scope="session")
def shapes_tasks_world(shapes_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small world plus its downstream-task files (Flickr30k-style split, SNLI-VE, NLVR2); read-only."""
    out = tmp_path_factory.mktemp("shapes_tasks") / "world"
    shutil.copytree(shapes_world, out)
    generate_tasks(out, SHAPES_SPEC, progress=False)
    return out


@pytest.fixture
def micro_config(shapes_world: Path, tmp_path: Path) -> Config:
    """A model of a few thousand parameters on the small world: seconds per run."""
    return load_config(
        None, [f"data.root={shapes_world}", f"train.out={tmp_path / 'run'}", "vqa.min_answer_count=1", *MICRO]
    )


@pytest.fixture(scope="session")
def micro_checkpoints(shapes_tasks_world: Path, tmp_path_factory: pytest.TempPathFactory):
    """`get(task)`: the final checkpoint of a micro model pretrained (task "pretrain") or fine-tuned from that for a
    few steps on the small world; each is trained once per session, on first use."""
    from meter.runs import run_finetune, run_pretrain

    root = tmp_path_factory.mktemp("micro_checkpoints")
    base = load_config(None, [f"data.root={shapes_tasks_world}", "vqa.min_answer_count=1", *MICRO])
    made: dict[str, Path] = {}

    def get(task: str) -> Path:
        if task not in made:
            out = root / task
            if task == "pretrain":
                made[task] = run_pretrain(load_config(None, [f"train.out={out}", "train.max_steps=2"], base=base))
            else:
                cfg = load_config(None, [f"task={task}", f"train.out={out}", "train.max_steps=2",
                                         f"train.init_from={get('pretrain')}"], base=base)  # fmt: skip
                run_finetune(cfg)
                made[task] = out / "checkpoints" / "step_00000002"
        return made[task]

    return get
