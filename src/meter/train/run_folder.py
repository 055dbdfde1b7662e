"""A run's folder (train.out): what a run writes there, and which folders a run may write into.

A run starts in a folder that is missing or empty; it goes on (`--resume`) in a folder that holds an unfinished run
of the same config. It refuses every other folder, saying why: one that holds someone else's files (it could
overwrite a `model/` of theirs), a run of another config, a finished run, or an unfinished run without `--resume`
(starting again would overwrite its checkpoints). So a run never writes over, or deletes, a file it did not write.

    meter-run.json   {"format": "meter-run", "id": ..., "config": {...}, "finished": false}   written first
    config.yaml      the resolved config, to read and to reuse (`meter pretrain --config RUN/config.yaml`)
    metrics.jsonl, tensorboard/, bad_samples.jsonl, loss_curves.png    logs
    checkpoints/     step_* folders (their progress.json names the run that wrote them: `keep_last` counts those)
    model/           the final model (`train.export`)
    best/, best.json, eval/    the best checkpoint on a validation split and its evaluations (`train.best_on`)

The record holds the config the run started with; a run of "the same config" is one whose config equals it except
for MAY_DIFFER_ON_RESUME. A folder a run wrote before runs were recorded (no meter-run.json, only a run's files and
checkpoints) is taken as that run when `--resume` is given.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

from meter.atomic_files import temporary_of, write_text_atomically
from meter.config import ADDED_SETTINGS, Config, at_current_defaults, save_config, to_dict
from meter.errors import ConfigError, DataError
from meter.models.folder import EXPORT
from meter.output_folder import WRITE_PROBE, lock_folder, release_folder
from meter.train.checkpoint import PROGRESS, Checkpoints
from meter.train.distributed import decided_on_main
from meter.train.runtime import Runtime

log = logging.getLogger(__name__)
RECORD = "meter-run.json"
CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"
LOCK = ".meter-run.lock"  # held by the process that trains in the folder (who: inside)
# what a run killed while writing its first record leaves (write_text_atomically's temporary file): the folder is
# still a new run's, the file is written again
RECORD_LEFT_HALF_WRITTEN = temporary_of(Path(RECORD)).name
# everything a training run writes at the top of its folder (evaluation adds its prediction and score files after)
RUN_FILES = frozenset(
    {RECORD, CONFIG, "metrics.jsonl", "tensorboard", CHECKPOINTS, EXPORT, f".{EXPORT}.tmp", f".{EXPORT}.replaced",
     "loss_curves.png", "bad_samples.jsonl", LOCK, "best", ".best.tmp", ".best.replaced", "best.json", "eval",
     RECORD_LEFT_HALF_WRITTEN}
)  # fmt: skip
# files other meter commands put into a run's folder before the run: `meter study` its plan of the run
PLANNED_BY_OTHERS = frozenset({"study_run.json"})
# settings that may differ when a run goes on (--resume): where and how it runs, its logs and budgets, which of its
# checkpoints is chosen as the best; not what it trains (compiled or deterministic kernels compute the same, to the
# last bits: a run whose compile failed goes on without)
MAY_DIFFER_ON_RESUME = frozenset(
    {"train.out", "train.stop_at", "train.progress", "train.log_every", "train.checkpoint_every", "train.keep_last",
     "train.export", "train.eval_batch_size", "train.max_nonfinite_steps", "data.num_workers", "data.image_cache_mb",
     "data.max_bad_samples", "data.worker_timeout", "data.max_image_pixels", "train.activation_checkpointing",
     "train.best_on", "train.best_every", "vqa.submission_splits", "train.compile", "train.compile_mode",
     "train.deterministic"}
)  # fmt: skip


# where the training data is read may change on resume (a requeued job's data copied to a node's own disk): the loop
# checks that it holds the same samples (meter.train.resumed_data), and counts a bad sample met at either place once
MOVES_ON_RESUME = "data.root"


# how a step's samples are split over micro-batches (and processes): may change on resume, when the samples a step
# stay the same (meter.train.loop.check_step_size): a job requeued on fewer GPUs keeps its global batch, and so does
# a run of a recipe that sets train.global_batch where it set train.grad_accum
SPLIT_OF_A_STEP = frozenset({"train.batch_size", "train.grad_accum", "train.global_batch"})


def flat_settings(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A config dict as {dotted key: value} (mappings inside, like timm_kwargs, are flattened too)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(flat_settings(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(saved: dict[str, Any], cfg: Config) -> list[str]:
    """`key: saved -> new` for each setting that differs, leaving out those that may differ on resume. Paths in a
    folder that moved with the run (a study or demo folder moved elsewhere) are read at their new place."""
    old = at_current_defaults(flat_settings(with_new_defaults(saved, Config())))
    new = flat_settings(json.loads(json.dumps(to_dict(cfg))))  # as the record holds it (JSON types)
    old = {key: _moved(value, old.get("train.out"), new.get("train.out")) for key, value in old.items()}
    if new.get("train.global_batch") and old.get("train.global_batch") == new["train.global_batch"]:
        # train.grad_accum follows from it on the run's processes: the record holds the run's, a config the recipe's
        old.pop("train.grad_accum", None)
        new.pop("train.grad_accum", None)
    return [
        f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key) and not _may_differ(key)
    ]


def _may_differ(key: str) -> bool:
    """The key, or the mapping it is an entry of (vqa.submission_splits.test-dev2015), may differ on resume."""
    return any(key == name or key.startswith(name + ".") for name in MAY_DIFFER_ON_RESUME)


def with_new_defaults(saved: dict[str, Any], defaults: Any, prefix: str = "") -> dict[str, Any]:
    """A config recorded before a setting existed, with that setting at what the run computed then (its default, or
    ADDED_SETTINGS' earlier behaviour): a meter that adds a setting does not make every earlier run "another
    config", and one that changes what an earlier run computed makes its resume one."""
    filled = dict(saved)
    for field in dataclasses.fields(defaults):
        default = getattr(defaults, field.name)
        key = f"{prefix}{field.name}"
        if field.name not in filled:
            filled[field.name] = ADDED_SETTINGS[key] if key in ADDED_SETTINGS else json.loads(
                json.dumps(to_dict(default) if dataclasses.is_dataclass(default) else default))  # fmt: skip
        elif dataclasses.is_dataclass(default) and isinstance(filled[field.name], dict):
            filled[field.name] = with_new_defaults(filled[field.name], default, f"{key}.")
    return filled


def listed_changes(changed: list[str]) -> str:
    """The first few of config_differences' lines, for a message."""
    return "; ".join(changed[:5]) + ("; ..." if len(changed) > 5 else "")


def _moved(value: Any, old_out: Any, new_out: Any) -> Any:
    """`value` with the folder the run moved out of (the common root of the old and new train.out, their shared
    ending taken off) replaced by the one it moved into."""
    if not (isinstance(value, str) and isinstance(old_out, str) and isinstance(new_out, str)) or old_out == new_out:
        return value
    old_parts, new_parts = Path(old_out).parts, Path(new_out).parts
    shared = 0
    while shared < min(len(old_parts), len(new_parts)) and old_parts[-1 - shared] == new_parts[-1 - shared]:
        shared += 1
    if shared == 0 or shared == len(old_parts):
        return value
    old_root, new_root = str(Path(*old_parts[:-shared])), str(Path(*new_parts[:-shared]))
    if value == old_root or value.startswith(old_root.rstrip("/") + "/"):
        return new_root + value[len(old_root) :]
    return value


def open_run_folder(cfg: Config, resume: str | None, runtime: Runtime) -> str:
    """Checks that train.out may take this run (see the module's doc), records the run, writes config.yaml; returns
    the run's id. Rank 0 decides and writes; every process gets its decision (a refusal raises on every one)."""
    return decided_on_main(lambda: _open(Path(cfg.train.out), cfg, resume), runtime)


def restarted_resume(cfg: Config, resume: str | None = None) -> str | None:
    """`latest` for a process that torchrun restarted (`--max-restarts`) in a folder with a checkpoint: it is given
    the command line it started with, and goes on where the run got to instead of being refused, or sent back to the
    `--resume PATH` that command line names. Not where the newest checkpoint is older than the attempt that resumed
    PATH (the run's record is written as each attempt opens the folder): that one is a continuation the user gave up
    by resuming an earlier checkpoint, whose attempt died before it set it aside."""
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) == 0:
        return None
    latest = Checkpoints(Path(cfg.train.out) / CHECKPOINTS).latest()
    if latest is None:
        return None
    record = Path(cfg.train.out) / RECORD
    if resume and resume != "latest" and record.is_file() and _written(latest) < record.stat().st_mtime:
        return None
    log.warning("restarted by torchrun: resuming %s from its latest checkpoint", cfg.train.out)
    return "latest"


def _written(checkpoint: Path) -> float:
    return (checkpoint / PROGRESS).stat().st_mtime


def check_resumed_from(checkpoint: Path, cfg: Config) -> None:
    """Refuses a checkpoint of another run folder whose run had another config: resuming takes its optimizer, schedule
    and data position, which that config set (its learning rate would be applied, and this one's logged)."""
    folder = checkpoint.parent.parent
    if folder.resolve() == Path(cfg.train.out).resolve() or not (folder / RECORD).is_file():
        return
    changed = config_differences(read_record(folder)["config"], cfg)
    if changed:
        raise ConfigError(
            f"--resume {checkpoint}: a checkpoint of a run of another config ({listed_changes(changed)}); resuming "
            "takes its optimizer, schedule and place in the data. "
            f"To start from its weights with this config, use train.init_from={checkpoint}"
        )


def release_run_folder(out: str | Path) -> None:
    """Lets another process train in `out` (the run in this one has ended, or stopped)."""
    release_folder(out, LOCK)


def finish_run(out: str | Path) -> None:
    """Marks the run of `out` finished (rank 0, after its final model and plots): it is never trained again."""
    path = Path(out) / RECORD
    record = json.loads(path.read_text())
    write_text_atomically(path, json.dumps(record | {"finished": True}, indent=1))


def _open(out: Path, cfg: Config, resume: str | None) -> str:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"train.out = {out} is a file; give a folder for the run")
    # another command's probe of whether the folder is writable (removed at once) is none of the folder's entries
    entries = sorted(p.name for p in out.iterdir() if p.name != LOCK and not p.name.startswith(WRITE_PROBE)) \
        if out.is_dir() else []  # fmt: skip
    # one run at a time: a second (the same command twice, a requeued job while the first still writes) would
    # delete the first one's checkpoint being written and log its steps twice. A run's folder is locked before it is
    # checked (a live run is named as such); any other folder after (a folder of the user's gets no lock file)
    in_use = "another run (`train.out` takes one at a time)"
    recorded = (out / RECORD).is_file()
    if recorded:
        lock_folder(out, LOCK, in_use)
    try:
        if recorded:
            run = read_record(out)
            if _started_anew(out, cfg, resume, run):
                run = {"format": "meter-run", "id": uuid.uuid4().hex, "config": to_dict(cfg), "finished": False}
            else:
                _check_same_run(out, cfg, resume, run)
        elif set(entries) <= PLANNED_BY_OTHERS | {RECORD_LEFT_HALF_WRITTEN}:
            run = {"format": "meter-run", "id": uuid.uuid4().hex, "config": to_dict(cfg), "finished": False}
        else:
            run = _earlier_run(out, entries, cfg, resume)
        lock_folder(out, LOCK, in_use)
        write_text_atomically(out / RECORD, json.dumps(run, indent=1))
        save_config(cfg, out / CONFIG)  # written whole, a failed write named (atomic_files)
    except BaseException:
        release_run_folder(out)
        raise
    return run["id"]


def _started_anew(out: Path, cfg: Config, resume: str | None, run: dict[str, Any]) -> bool:
    """Whether a run of another config takes the folder of one that stopped before its first checkpoint (a loss that
    diverged, a wrong batch size): nothing of that one can be continued, and fixing a setting and running the same
    command again was refused, the folder locked to the config that failed. Its logs are replaced, as a rerun's of
    the same config are."""
    changed = config_differences(run["config"], cfg)
    if resume or not changed or run.get("finished") or Checkpoints(out / CHECKPOINTS).all():
        return False
    log.warning("train.out = %s: the run there stopped before its first checkpoint, with another config (%s); this "
                "one starts there anew", out, listed_changes(changed))  # fmt: skip
    return True


def _check_same_run(out: Path, cfg: Config, resume: str | None, run: dict[str, Any]) -> None:
    changed = config_differences(run["config"], cfg)
    if resume:  # how a step's samples are split may change, when a step keeps its number (checked once it is loaded)
        changed = [change for change in changed if change.split(":")[0] not in SPLIT_OF_A_STEP]
        moved = [change for change in changed if change.split(":")[0] == MOVES_ON_RESUME]
        changed = [change for change in changed if change not in moved]
        if moved and not changed:
            log.warning("%s: the run goes on reading its data there (a resume checks that it holds the samples the "
                        "run counted its place on)", moved[0])  # fmt: skip
    new_folder = f"train.out={out.parent / (out.name + '-2')}"
    if changed:
        latest = Checkpoints(out / CHECKPOINTS).latest()
        recorded_steps = run["config"].get("train", {}).get("max_steps")
        longer = latest is not None and isinstance(recorded_steps, int) and cfg.train.max_steps > recorded_steps
        raise ConfigError(
            f"train.out = {out} holds a run of another config ({listed_changes(changed)}): give the new run a folder "
            f"of its own ({new_folder}"
            + (f", with train.init_from={latest} to go on from its weights: its learning rate decays to 0 at its own "
               "train.max_steps, so a longer run is another run" if longer else "")
            + f"), or continue that run with its own config ({out / CONFIG})"
        )  # fmt: skip
    if run.get("finished"):
        raise ConfigError(
            f"train.out = {out} holds a finished run of this config (its model: {out / EXPORT}): evaluate it with "
            f"`meter evaluate`, or train again in a new folder ({new_folder})"
        )
    latest = Checkpoints(out / CHECKPOINTS).latest()
    if latest is not None and not resume:
        raise ConfigError(
            f"train.out = {out} holds an unfinished run of this config, with a checkpoint at {latest.name}: continue "
            f"it with --resume latest, or start again in a new folder ({new_folder})"
        )


def _earlier_run(out: Path, entries: list[str], cfg: Config, resume: str | None) -> dict[str, Any]:
    """A folder without a record: a run from before runs were recorded is taken with --resume; nothing else is."""
    others = [name for name in entries if name not in RUN_FILES | PLANNED_BY_OTHERS]
    listed = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
    if others or not Checkpoints(out / CHECKPOINTS).latest():
        raise ConfigError(
            f"train.out = {out} is not empty ({listed}) and holds no meter run: a run writes only into a new or "
            f"empty folder, so that it never overwrites files of yours; choose another (train.out=...)"
        )
    if not resume:
        raise ConfigError(
            f"train.out = {out} holds a run written before meter recorded its runs ({listed}): continue it with "
            f"--resume latest, or choose a new folder (train.out=...)"
        )
    saved = saved_config(out / CONFIG)
    changed = config_differences(saved, cfg) if saved is not None else []
    if changed:
        raise ConfigError(f"train.out = {out} holds a run of another config ({listed_changes(changed)}): give the new "
                          f"run a folder of its own")  # fmt: skip
    return {"format": "meter-run", "id": uuid.uuid4().hex, "config": to_dict(cfg), "finished": False}


def saved_config(path: Path) -> dict[str, Any] | None:
    """A run's config.yaml as a dict (None: unreadable or missing)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def first_data_root(out: Path) -> str:
    """The data.root the run in `out` started with (a resume may read its data elsewhere: see MOVES_ON_RESUME)."""
    return str(read_record(out)["config"].get("data", {}).get("root", ""))


def read_record(out: Path) -> dict[str, Any]:
    path = out / RECORD
    try:
        run = json.loads(path.read_text())
        if run.get("format") != "meter-run" or not isinstance(run.get("config"), dict):
            raise ValueError("not a meter run record")
        return run
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as error:
        raise DataError(f"{path}: unreadable run record ({error}); choose a new folder (train.out=...)") from None
