"""Checkpoints: a model folder plus the training state, written atomically, the last N kept.

    checkpoints/step_00000100/
        model.safetensors, config.json, text_encoder/, tokenizer files   (a model folder: loads anywhere)
        task.safetensors    the task's own pretraining-only weights (the MIM pixel decoder), when it has any
        training_state.pt   optimizer (by parameter name), scheduler, every process's RNG states (tensors, numbers
                            and strings only: loads with weights_only)
        progress.json       step, batches seen (the data position), the global batch, the run that wrote it, and
                            whatever the task keeps
        checksums.json      the size and sha256 of every file above (`meter.models.checksums`)

Every process takes part in a save (under FSDP2 the weights are gathered from their shards; the RNG states of all
processes are collected) and rank 0 writes; the others wait for its outcome. A checkpoint is written to a hidden
temporary folder, synced, and renamed into place; only then are the run's old ones beyond `keep_last` renamed away
and deleted (never another run's). So a folder named step_* is always complete, whenever the run was killed, and a
write that fails (a full disk, no permission) removes its temporary folder and stops the run with a message naming
the path and the space it needed, the earlier checkpoints intact. `--resume latest` verifies the newest checkpoint's
checksums and falls back to the newest intact one, setting damaged ones aside (renamed damaged-step_*). A run
resumed from an older checkpoint than the newest sets the newer ones aside (renamed abandoned-step_*).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from meter.atomic_files import cannot_write, fsync_folder, with_usual_mode
from meter.errors import DataError, MeterError
from meter.models.checksums import CHECKSUMS, DamagedFolder, record_checksums, verify_checksums
from meter.models.class_rows import require_current_order
from meter.models.folder import (
    WEIGHTS,
    as_os_error,
    export_model_folder,
    read_model_folder,
    save_model_folder,
    tensor_bytes,
)
from meter.train.distributed import (
    decided_on_main,
    full_model_state,
    full_optimizer_state,
    gather_objects,
    load_full_state,
    stopped_status,
    told_by_main,
)
from meter.train.runtime import Runtime
from meter.train.stop_signals import RunStopped, signals_deferred

log = logging.getLogger(__name__)
TRAINING_STATE = "training_state.pt"
TASK_WEIGHTS = "task.safetensors"
PROGRESS = "progress.json"
PREFIX = "step_"
DAMAGED = "damaged-"  # a damaged checkpoint set aside by --resume latest: kept for a look, never loaded
ABANDONED = "abandoned-"  # newer than the checkpoint a run was resumed from: a continuation given up, kept
REPLACED = ".replaced"  # an earlier save of a step being saved again, until the new one is in place
MODEL = "model."  # the task's weights under this prefix are the model's


@dataclass
class Progress:
    step: int = 0  # optimizer steps done
    batches_seen: int = 0  # micro-batches drawn from the data stream (per process)
    nonfinite_in_a_row: int = 0
    global_batch: int = 0  # samples per micro-batch over all processes, when the checkpoint was written
    grad_accum: int = 0  # micro-batches a step, when the checkpoint was written (0: not recorded then)
    # each process's batches_seen (a batch of only unreadable samples makes one process draw one more than another)
    batches_per_process: list[int] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    # the steps since the last log line, summed over processes (loop.Window.state): the first log line after a resume
    # averages them too, as the run that was not stopped did
    log_window: dict[str, Any] = field(default_factory=dict)
    run: str = ""  # the id of the run that wrote it (its folder's meter-run.json); "" before runs were recorded
    corpus: str = ""  # what the place in the data is counted on (meter.train.resumed_data.corpus_fingerprint)
    # the samples the run's bad_samples.jsonl named at this checkpoint (-1: not recorded then): a resume from it lists
    # those alone, as it meets the later ones again (one read again fine, its mount back, no longer costs the budget)
    bad_samples: int = -1


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
    fsync_folder(folder)


class _Writes:
    """The file torch.save writes `path` through: it keeps the error of a failed write (torch reports a full disk as a
    bad position), and creates the file with its first bytes."""

    def __init__(self, path: Path) -> None:
        self.name = str(path)  # as a file object names its path
        self.file: Any = None
        self.error: OSError | None = None

    def __repr__(self) -> str:
        return f"<writes to {self.name}>"

    def write(self, data: bytes) -> int:
        try:
            if self.file is None:
                self.file = open(self.name, "wb")  # noqa: SIM115 (closed by `close`, after torch.save)
            return self.file.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        if self.file is not None:
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def save_state(state: dict[str, Any], path: Path) -> None:
    """torch.save, raising the operating system's error when a write fails (a full disk, a file-size limit)."""
    writes = _Writes(path)
    try:
        torch.save(state, writes)
    except Exception:
        if writes.error is not None:
            raise writes.error from None
        raise
    finally:
        writes.close()


def _verify(path: Path, parts: tuple[str, ...] | None = None) -> bool:
    """Verifies a checkpoint against its checksums; False for one without them (written before checkpoints
    recorded them) that is not complete either. A damaged one raises DamagedFolder naming the file."""
    if verify_checksums(path, parts):
        return True
    if (path / PROGRESS).is_file():
        if _written_by(path):  # the run id came with the checksums: this one's checksums.json is lost, not missing
            raise DamagedFolder(f"{path / CHECKSUMS}: missing (checkpoints of this version record their checksums)")
        log.warning("%s: written before checkpoints recorded checksums; loaded unverified", path)
        return True
    return False


def free_name(folder: Path, name: str) -> Path:
    """folder/name, or with a number (-2, -3, ...) when one of that name is there already."""
    path = folder / name
    for again in range(2, 10_000):
        if not path.exists():
            break
        path = folder / f"{name}-{again}"
    return path


def _written_by(path: Path) -> str:
    try:
        return str(json.loads((path / PROGRESS).read_text()).get("run", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def rng_state() -> dict[str, Any]:
    """This process's generators: the CPU's and its own GPU's (the current device's; not every visible GPU's, so
    that a job requeued with another view of the devices, one per task instead of eight, resumes all the same)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    # a process that has not used its GPU has no GPU randomness to keep: asking for it would start CUDA (0.5 GiB on
    # GPU 0 for every CPU process of a GPU machine, and a refusal where GPUs are exclusive to one process)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if isinstance(cuda, list):  # written before 2026-11-30: every visible device's, indexed by device
            cuda = cuda[min(torch.cuda.current_device(), len(cuda) - 1)]
        torch.cuda.set_rng_state(cuda)


def split_weights(weights: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """A task's weights as (the model's, under their names in the model; the task's own)."""
    model = {k.removeprefix(MODEL): v for k, v in weights.items() if k.startswith(MODEL)}
    return model, {k: v for k, v in weights.items() if not k.startswith(MODEL)}


def export_final_model(
    task: nn.Module, tokenizer: PreTrainedTokenizerBase, path: Path, source: str, runtime: Runtime
) -> None:
    """Every process calls this (under FSDP2 the weights are gathered); rank 0 writes the model folder."""
    weights, _ = split_weights(full_model_state(task))
    if runtime.is_main:
        description = dataclasses.replace(task.describe(), source=source)
        export_model_folder(path, task.model, tokenizer, description, weights)


def samples_a_step(path: Path) -> int:
    """The samples each step of the checkpoint at `path` took, over all processes (0: not recorded then)."""
    progress = Progress(**json.loads((path / PROGRESS).read_text()))
    return progress.global_batch * progress.grad_accum


def _require_same_answers(recorded: list[str], answers: list[str] | None, where: str) -> None:
    """A VQA run resumes only with the vocabulary its checkpoint trained: its head's rows, and their optimizer state,
    are the recorded answers' row by row (a vocabulary built again from changed data, or by another meter, would
    load them under other answers, or fail on the head's size)."""
    if answers is None or not recorded or list(recorded) == list(answers):
        return
    row = next((i for i, (old, new) in enumerate(zip(recorded, answers, strict=False)) if old != new),
               min(len(recorded), len(answers)))  # fmt: skip
    anew = f"start anew from its weights with train.init_from={where} (a folder's rows load by answer)"
    if set(answers) - set(recorded) == {""} and [a for a in answers if a != ""] == list(recorded):
        raise DataError(
            f'{where}: written by a meter from before the VQA vocabulary kept the empty answer "" (as the official '
            f"vocabulary does): its head has {len(recorded)} answers, the vocabulary built now {len(answers)}, with "
            f'"" at row {row}; finish the run with the meter that began it, or {anew}'
        )
    raise DataError(
        f"{where}: its VQA head was trained on another answer vocabulary than the one built now ({len(recorded)} "
        f"answers there, {len(answers)} now; the first to differ is row {row}: {_answer_at(recorded, row)} there, "
        f"{_answer_at(answers, row)} now: were the annotations, vqa.answer_splits or vqa.min_answer_count changed, "
        f"or was it written by an earlier meter, which counted answers in another form?); a run cannot resume across "
        f"that: {anew}"
    )


def _answer_at(answers: list[str], row: int) -> str:
    return repr(answers[row]) if row < len(answers) else "none"


class Checkpoints:
    """The checkpoints of a run folder. `run`: the id of the run that writes (its progress.json records it, and
    `keep_last` counts only its own)."""

    def __init__(self, folder: str | Path, keep_last: int = 2, run: str = "") -> None:
        self.folder = Path(folder)
        self.keep_last = keep_last
        self.run = run

    def path(self, step: int) -> Path:
        return self.folder / f"{PREFIX}{step:08d}"

    def steps(self) -> list[Path]:
        """Every step_* folder, oldest first (complete or not: see `all`)."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if p.is_dir() and re.fullmatch(rf"{PREFIX}\d+", p.name))

    def all(self) -> list[Path]:
        """The complete checkpoints (with their progress.json), oldest first."""
        return [p for p in self.steps() if (p / PROGRESS).is_file()]

    def latest(self) -> Path | None:
        found = self.all()
        return found[-1] if found else None

    def save(
        self,
        task: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        progress: Progress,
        runtime: Runtime,
    ) -> Path:
        """Every process calls this; rank 0 writes, the others wait for it. Returns the checkpoint's folder; raises
        DataError on every process when it could not be written."""
        weights = full_model_state(task)
        optimizer_state = full_optimizer_state(task, optimizer)
        rngs = gather_objects(rng_state())
        seen = gather_objects(progress.batches_seen)
        final = self.path(progress.step)
        failed: MeterError | int | None = None  # int: the status of a stop
        what = f"the checkpoint of step {progress.step}"
        if runtime.is_main:
            training_state = {"optimizer": optimizer_state, "scheduler": scheduler.state_dict(), "rng": rngs}
            mine = dataclasses.replace(progress, run=self.run, batches_per_process=seen)
            try:
                self._write(final, weights, task, tokenizer, training_state, mine)
            except DataError as error:
                failed = error
            except BaseException as error:  # a second stop signal (exit at once), Ctrl-C, a bug: the others were
                # left waiting for the write until rank 0's store went
                failure = MeterError(f"the first process failed while it wrote {what}: {type(error).__name__}: {error}")
                told_by_main(stopped_status(error) or failure, what)
                error.told = True  # type: ignore[attr-defined]  # the others stop too: they are waited for
                raise
        # the others wait while rank 0 writes and checks every file (slow disks: long)
        with signals_deferred() as deferred:  # a signal to a waiting process alone must not leave rank 0 unheard
            failed = told_by_main(failed, what)
        if isinstance(failed, int):
            raise RunStopped(f"the first process was stopped at once while it wrote {what}, so this one stops too "
                             "(the checkpoint was dropped)", failed)  # fmt: skip
        if failed is not None:
            raise failed
        for signum in deferred:  # now to the handler of the moment: training notes it and stops after this step
            signal.raise_signal(signum)
        return final

    def _write(
        self, final: Path, weights: dict[str, Tensor], task: nn.Module, tokenizer: PreTrainedTokenizerBase,
        training_state: dict[str, Any], progress: Progress,
    ) -> None:  # fmt: skip
        temporary = self.folder / f".{final.name}.tmp"
        try:
            self._remove_leftovers()
            model_weights, task_weights = split_weights(weights)
            save_model_folder(temporary, task.model, tokenizer, task.describe(), model_weights)
            if task_weights:
                save_file({k: v.contiguous() for k, v in task_weights.items()}, str(temporary / TASK_WEIGHTS))
                with_usual_mode(temporary / TASK_WEIGHTS)
            save_state(training_state, temporary / TRAINING_STATE)
            (temporary / PROGRESS).write_text(json.dumps(asdict(progress)))
            record_checksums(temporary, "training")
            _fsync_tree(temporary)
        except BaseException as error:  # a full disk, or a signal: no temporary folder stays behind
            shutil.rmtree(temporary, ignore_errors=True)
            failed = as_os_error(error)
            if failed is None:
                raise
            needed = tensor_bytes(weights) + tensor_bytes(training_state)
            earlier = self.latest()
            kept = f"; the run's earlier checkpoint {earlier} is intact" if earlier else ""
            raise DataError(f"checkpoint not written: {cannot_write(final, failed, needed)}{kept}") from None
        replaced = self.folder / f".{final.name}{REPLACED}"
        if final.exists():  # a step saved before: renamed away, deleted only once the new one is in its place (a
            os.replace(final, replaced)  # kill in between leaves the earlier one to restore, see _remove_leftovers)
        os.replace(temporary, final)
        fsync_folder(self.folder)
        shutil.rmtree(replaced, ignore_errors=True)
        self._prune(keep=final)

    def _prune(self, keep: Path) -> None:
        """Deletes this run's checkpoints beyond the newest `keep_last` (0: keeps all); never another run's."""
        if self.keep_last <= 0:
            return
        own = [p for p in self.all() if p == keep or _written_by(p) == self.run]
        for old in own[: -self.keep_last]:
            if old != keep:
                self._delete(old)

    def _delete(self, path: Path) -> None:
        """Renamed away first, so that a kill during the deletion leaves no half-deleted step_* folder."""
        doomed = self.folder / f".{path.name}.deleting"
        os.replace(path, doomed)
        shutil.rmtree(doomed)

    def _remove_leftovers(self) -> None:
        """Temporary and half-deleted folders of a run that was killed while writing or pruning."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._restore_replaced()
        for path in self.folder.iterdir():
            if path.name.startswith(f".{PREFIX}"):
                shutil.rmtree(path, ignore_errors=True)

    def _restore_replaced(self) -> None:
        """A kill between renaming a step's earlier save away and renaming its new save in: the earlier one (whole:
        its deletion starts only once the new one is in place) goes back to its name."""
        if not self.folder.is_dir():
            return
        for path in self.folder.glob(f".{PREFIX}*{REPLACED}"):
            step = self.folder / path.name[1 : -len(REPLACED)]
            if not step.exists():
                os.replace(path, step)
                log.warning("checkpoint %s restored: the run was killed while saving that step again", step.name)

    def _finish_deletions(self) -> None:
        """A kill while `keep_last` deleted a checkpoint after the run's last one (no later save cleans up): the
        half-deleted folder, renamed away before its deletion began, goes now."""
        for path in self.folder.glob(f".{PREFIX}*.deleting"):
            shutil.rmtree(path, ignore_errors=True)

    def set_aside_after(self, step: int) -> None:
        """A run resumed from a checkpoint older than its newest: the newer ones, a continuation now given up, are
        renamed abandoned-step_* (kept, never counted by `keep_last` or taken by `--resume latest`: a crash later
        would have resumed the abandoned continuation). Another run's checkpoints are left as they are."""
        newer = [path for path in self.all() if int(path.name[len(PREFIX) :]) > step and _written_by(path) == self.run]
        for path in newer:
            aside = free_name(self.folder, f"{ABANDONED}{path.name}")
            os.replace(path, aside)
            log.warning("checkpoint %s is newer than step %d, where this run resumes: set aside as %s (delete it "
                        "if it is not wanted)", path.name, step, aside)  # fmt: skip

    def resolve(self, which: str, set_aside: bool = False, parts: tuple[str, ...] | None = None) -> Path:
        """'latest' (the newest intact checkpoint: damaged ones are skipped with a warning, and with `set_aside`
        renamed damaged-step_*) or a path to a checkpoint folder (verified: a damaged one is an error). `parts`: the
        parts of the checksums to verify (default all; the model's alone to predict with it)."""
        if set_aside:
            self._restore_replaced()
            self._finish_deletions()
        if which != "latest":
            path = Path(which)
            if not path.exists():  # `--resume last`: a misspelt `latest` read as a path
                raise DataError(f"--resume {which}: no such checkpoint folder; give `latest` or a checkpoint folder "
                                "(RUN/checkpoints/step_N)")  # fmt: skip
            if not (path / TRAINING_STATE).is_file():
                raise DataError(f"{path}: not a checkpoint folder (no {TRAINING_STATE})")
            _verify(path, parts)
            return path
        damaged: list[str] = []
        for path in reversed(self.steps()):
            try:
                if not _verify(path, parts):
                    continue  # written before checkpoints recorded checksums, and incomplete
            except DamagedFolder as damage:
                aside = free_name(self.folder, f"{DAMAGED}{path.name}")
                if set_aside:
                    os.replace(path, aside)
                named = f"{path.name} ({damage.args[0]})"
                damaged.append(f"{named}, set aside as {aside.name}" if set_aside else named)
                log.warning("checkpoint %s is damaged (%s)%s; trying the one before", path.name, damage.args[0],
                            f", set aside as {aside}" if set_aside else "")  # fmt: skip
                continue
            return path
        found = f"; damaged: {'; '.join(damaged)}" if damaged else ""
        raise DataError(f"no intact checkpoint to resume from in {self.folder}{found}")

    def resolve_everywhere(self, which: str, runtime: Runtime) -> Path:
        """`resolve` on rank 0 (it reads and verifies the files, and sets damaged ones aside); every process gets
        its answer."""
        return decided_on_main(lambda: self.resolve(which, set_aside=True), runtime)

    @staticmethod
    def load(
        path: Path,
        task: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        runtime: Runtime,
    ) -> Progress:
        """Every process calls this: it loads the whole state, keeps its shard, and takes its own RNG states."""
        saved = read_model_folder(path)
        require_current_order(saved.classes, str(path))
        _require_same_answers(saved.answers, getattr(task, "answers", None), str(path))
        weights = {MODEL + k: v for k, v in load_file(str(path / WEIGHTS)).items()}
        if (path / TASK_WEIGHTS).is_file():
            weights |= load_file(str(path / TASK_WEIGHTS))
        expected = list(task.state_dict())  # in the module's order: loading shards is collective, key by key
        missing = [k for k in expected if k not in weights]
        if missing:
            raise DataError(f"{path}: checkpoint lacks {len(missing)} weights of this model, e.g. {missing[:3]}")
        state = torch.load(path / TRAINING_STATE, weights_only=True, map_location="cpu")
        load_full_state(task, optimizer, {k: weights[k] for k in expected}, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rngs = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
        if len(rngs) == runtime.world:
            set_rng_state(rngs[runtime.rank])
        else:
            log.warning("%s was written by %d processes, this run has %d: dropout and other RNG draws restart "
                        "from fresh seeds (masks and the order of a corpus's samples do not depend on them)", path,
                        len(rngs), runtime.world)  # fmt: skip
        progress = Progress(**json.loads((path / PROGRESS).read_text()))
        if len(progress.batches_per_process) == runtime.world:
            progress.batches_seen = progress.batches_per_process[runtime.rank]  # this process's own place
        return progress
