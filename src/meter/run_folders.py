"""Run folders that are reused: a packaged recipe laid over a run folder, whether that run finished, and the one
call that trains a fine-tuning run or, when it finished before, only evaluates it again. The demos (and anything
else that re-runs a set of runs into the same folders) build on these."""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from meter.config import Config, load_config
from meter.errors import ConfigError
from meter.models.init_from import set_by_the_run
from meter.runs import run_finetune
from meter.tasks.best_checkpoint import evaluated_weights
from meter.train.checkpoint import Checkpoints, samples_a_step
from meter.train.run_folder import (
    CONFIG,
    RECORD,
    SPLIT_OF_A_STEP,
    config_differences,
    listed_changes,
    read_record,
    saved_config,
)


def recipe(name: str) -> Path:
    """A recipe shipped with the package (src/meter/configs/NAME)."""
    return Path(str(resources.files("meter.configs").joinpath(name)))


def recipe_config(name: str, out: Path, data: Path, run: str, overrides: list[str]) -> Config:
    """The packaged recipe `name` on the data at `data`, writing to the run folder `out / run`."""
    return load_config(recipe(name), [f"data.root={data}", f"train.out={out / run}", *overrides])


def finished_checkpoint(cfg: Config) -> Path | None:
    """The final checkpoint of the run `cfg` describes, when the run finished (its record says so: a run killed after
    its last step, while it exported its model or scored that step for train.best_on, resumes to finish). A finished
    run of another config in the folder is refused, naming what differs: its scores are not this config's (a demo
    run again with another seed)."""
    out = Path(cfg.train.out)
    final = Checkpoints(out / "checkpoints").path(cfg.train.max_steps)
    if not final.is_dir():
        return None
    if (out / RECORD).is_file():
        record = read_record(out)
        saved, finished = record["config"], record.get("finished")
    else:  # a folder written before runs were recorded: the config.yaml it saved
        saved, finished = saved_config(out / CONFIG), True
    if saved is not None:
        changed = config_differences(saved, cfg)
        if _as_many_samples_a_step(final, cfg):  # a run requeued on fewer GPUs split its steps another way
            changed = [change for change in changed if change.split(":")[0] not in SPLIT_OF_A_STEP]
        if cfg.train.init_from:  # the model's settings are the init_from folder's (resolved when the run built it),
            changed = [change for change in changed  # but for those the run sets (resolution, dropout, text length)
                       if not change.startswith("model.") or asked_by_the_run(cfg, change.split(":")[0])]  # fmt: skip
        if changed:
            raise ConfigError(
                f"train.out = {out} holds a finished run of another config ({listed_changes(changed)}): its model is "
                "not this config's; give this run another folder (another --out)"
            )
    if not finished:  # killed after its last step: exporting, or scoring it for train.best_on
        return None
    return final


def _as_many_samples_a_step(final: Path, cfg: Config) -> bool:
    """Whether the final checkpoint's steps took the samples this config's would (on torchrun's WORLD_SIZE
    processes): then train.batch_size, train.grad_accum and train.global_batch only split them, as a resume may."""
    try:
        samples = samples_a_step(final)
    except (OSError, ValueError, TypeError):  # no progress file, or a damaged one: the settings are compared
        return False
    train, world = cfg.train, int(os.environ.get("WORLD_SIZE", "1") or 1)
    return samples == (train.global_batch or train.batch_size * world * train.grad_accum)


def asked_by_the_run(cfg: Config, key: str) -> bool:
    """Whether a `model.*` setting that differs from the saved run's is one this fine-tuning config sets: one the run
    sets itself, and for a timm or text keyword the config names (one it leaves out is the folder's: a dropout of 0
    from the demo's pretraining is the saved run's too, and its recipe's silence asks for nothing)."""
    if not set_by_the_run(key):
        return False
    setting = key.removeprefix("model.")
    for mapping, given in (("vision.timm_kwargs.", cfg.model.vision.timm_kwargs),
                           ("text.hf_kwargs.", cfg.model.text.hf_kwargs)):  # fmt: skip
        if setting.startswith(mapping):
            return setting.removeprefix(mapping) in given
    return True


def resume_arg(cfg: Config) -> str | None:
    """`--resume latest` when the run folder holds a checkpoint to resume from."""
    return "latest" if Checkpoints(Path(cfg.train.out) / "checkpoints").latest() else None


def finetune_once(
    cfg: Config, evaluate: Callable[[Config, Path, Path], dict[str, Any]], resume: str | None = None
) -> dict[str, Any]:
    """Fine-tunes and evaluates; a run that finished before is only evaluated again (cheap), never retrained, and an
    interrupted one resumes from `resume` (default: its last checkpoint, when it has one)."""
    final = finished_checkpoint(cfg)
    if final is not None:
        return evaluate(cfg, evaluated_weights(cfg, final), Path(cfg.train.out))
    return run_finetune(cfg, resume=resume or resume_arg(cfg))
