"""Launching real training processes from tests: `meter` (or torchrun) with this checkout on the path, one thread."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import meter
from tests.conftest import MICRO

SOURCE = str(Path(meter.__file__).resolve().parents[1])
# for runs that must compute the same steps: no dropout (its draws depend on the batch layout); on the CPU in fp32,
# also where a GPU is present (gloo, tight tolerances)
EXACT = [
    "train.device=cpu",
    "model.fusion.dropout=0",
    "model.text.hf_kwargs={hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64,"
    " hidden_dropout_prob: 0.0, attention_probs_dropout_prob: 0.0}",
]
# with EXACT: two layers in every stack, so that activation checkpointing has layers to recompute
TWO_LAYERS = [
    "model.vision.timm_kwargs={embed_dim: 32, depth: 2, num_heads: 2, patch_size: 16}",
    "model.text.hf_kwargs={hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64,"
    " hidden_dropout_prob: 0.0, attention_probs_dropout_prob: 0.0}",
    "model.fusion.layers=2",
]


def environment() -> dict[str, str]:
    """This checkout's `meter` first; one thread per process, so that runs are bitwise repeatable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([SOURCE, *filter(None, [env.get("PYTHONPATH")])])
    env |= {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    return env


def pretrain_args(data: Path, out: Path, *overrides: str) -> list[str]:
    return ["pretrain", *MICRO, f"data.root={data}", f"train.out={out}", *overrides]


def run_meter(args: list[str], processes: int = 1, timeout: float = 120, torchrun: bool = False, check: bool = True
              ) -> subprocess.CompletedProcess:  # fmt: skip
    """`python -m meter ARGS`, or under `torchrun --standalone --nproc_per_node N` (gloo, CPU) when there are more
    processes than one or `torchrun` is asked; `check`: fail the test unless it exits 0."""
    launcher = [sys.executable, "-m", "meter"]
    if processes > 1 or torchrun:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                    "-m", "meter"]  # fmt: skip
    done = subprocess.run([*launcher, *args], env=environment(), capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"meter {' '.join(args[:1])} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return done
