"""A study expanded into cells and runs: every (protocol, row, seed) is a cell; a cell's runs are its pretraining
(protocol vlp) and each task fine-tuned from it, once with the recipe's settings and once per search point; a
zero-shot task is the pretraining evaluated as it is (no search point).

    OUT/cells/vlp/roberta/seed-0/pretrain           a run folder (train.out)
    OUT/cells/vlp/roberta/seed-0/vqa                the task with the recipe's settings (the uniform table)
    OUT/cells/vlp/roberta/seed-0/vqa@lr=5e-05       a search point (the tuned table picks among these)
    OUT/cells/vlp/roberta/seed-0/f30k-zs            a zero-shot task's evaluation

Each run is a recipe and its overrides, so it is also the `meter pretrain|finetune|evaluate` command that
reproduces it.
Runs are identified by their resolved config: two cells whose pretraining resolves to the same config share one run
(`OUT/pretraining.json` remembers which folder holds it), and a run folder that already holds a run of another
config is an error, never silently resumed or overwritten (a study file edited after a run: rename the row, or
delete the folder).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
import shlex
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from meter.atomic_files import write_text_atomically
from meter.config import Config, at_current_defaults, closest_recipe_hint, load_config, to_dict
from meter.data.seen_images import coco_images_seen
from meter.errors import ConfigError, DataError
from meter.output_folder import waiting_for_folder
from meter.plan.tasks import task_plan
from meter.study.holdout import Holdout, vqa_holdout
from meter.study.spec import CELL_RECORD, NOT_IN_A_STUDY, Change, Row, StudySpec, slug, study_rows, world_spec
from meter.study.unseen import vqa_unseen
from meter.train.checkpoint import Checkpoints
from meter.validate import validate

PLAN = "plan.json"
CELL = CELL_RECORD
WORLD_LOCK = ".shapes-world.lock"  # held while the study's shapes world is made
RUN = "study_run.json"  # in each run folder: the config it was planned with and the command that reproduces it
SHARED_PRETRAINING = "pretraining.json"
# settings that do not change what a run computes (left out of its identity)
NOT_IDENTITY = {("train", "out"), ("train", "progress"), ("train", "log_every"), ("data", "num_workers")}
# settings that change no result either, but are part of identities already recorded: a run whose config differs
# from its record in these alone is the same run (a smaller evaluation batch after an out-of-memory error,
# checkpoints more often), and so is a fine-tuning whose pretraining differs so
NOT_RESULT = {("train", "eval_batch_size"), ("train", "checkpoint_every"), ("train", "keep_last"),
              ("train", "activation_checkpointing"), ("data", "image_cache_mb"),
              ("data", "worker_timeout")}  # fmt: skip
# the number a task's table shows by default (a key of its scores)
DEFAULT_METRICS = {
    "vqa": ["overall"],
    "nlvr2": ["accuracy"],
    "snli_ve": ["accuracy"],
    "retrieval": ["t2i_r1", "i2t_r1"],  # the paper's IR@1 and TR@1
    "captioning": ["cider"],
}


@dataclass
class RunPlan:
    name: str  # in its cell: pretrain, vqa, vqa@lr=5e-05
    kind: str  # pretrain, finetune, or evaluate (a zero-shot task: the pretraining evaluated as it is)
    task: str  # the study's name of the task ("" for pretraining)
    point: str  # the search point ("" : the recipe's settings)
    recipe: str
    overrides: list[str]
    folder: str
    owner: str  # the cell that runs it (a pretraining shared by cells runs in one of them)
    identity: str
    select: list[str] = field(default_factory=list)  # overrides of its evaluation on the selection split
    task_kind: str = ""  # the recipe's task (vqa, nlvr2, ...)
    # what shapes its result beyond its config, whose files keep their paths when it changes: the pretraining it
    # starts from (its identity), the shapes world (its spec), the held-out fraction of its training split
    inputs: dict[str, Any] = field(default_factory=dict)

    def config(self) -> Config:
        return load_config(self.recipe, self.overrides)

    def command(self) -> str:
        if self.kind == "evaluate":
            return shlex.join(["meter", "evaluate", self.task_kind, "--checkpoint", str(self.config().train.init_from),
                               "--config", self.recipe, *self.overrides, "--out", self.folder])  # fmt: skip
        return shlex.join(["meter", self.kind, "--config", self.recipe, *self.overrides])  # pretrain or finetune

    def select_command(self, checkpoint: str) -> str:
        return shlex.join(["meter", "evaluate", self.task_kind, "--checkpoint", checkpoint, "--config", self.recipe,
                           *self.overrides, *self.select, "--out", str(Path(self.folder) / "select")])  # fmt: skip


@dataclass
class CellPlan:
    name: str  # vlp/roberta/seed-0
    protocol: str
    row: str
    seed: int
    folder: str
    runs: list[RunPlan]
    depends_on: list[str] = field(default_factory=list)  # cells whose pretraining it fine-tunes from

    def own_runs(self) -> list[RunPlan]:
        return [run for run in self.runs if run.owner == self.name]


# the settings that the VQA split files a study writes are made from
SPLIT_SETTINGS = (("data", "root"), ("vqa", "questions"), ("vqa", "annotations"), ("vqa", "image_splits"),
                  ("vqa", "train_splits"), ("vqa", "eval_split"))  # fmt: skip


@dataclass(frozen=True)
class Unseen:
    overrides: list[str]  # for every run of the task: report on the unseen split
    corpora: str  # a digest of the pretraining corpora it leaves out, recorded by each run as an input


@dataclass
class TaskColumns:
    kind: str
    metrics: list[str]
    zero_shot: bool = False  # evaluated from the pretraining, not fine-tuned: no search point to choose


@dataclass
class StudyPlan:
    name: str
    title: str
    description: str
    protocols: list[str]
    rows: list[str]  # display names, the base first
    seeds: list[int]
    tasks: dict[str, TaskColumns]
    points: list[str]  # search points ([] : no search, no tuned table)
    cells: list[CellPlan]
    slurm: dict[str, Any]
    study_file: str = ""

    def cell(self, name: str) -> CellPlan:
        for cell in self.cells:
            if cell.name == name:
                return cell
        raise ConfigError(f"no cell {name!r} in this study; its cells: {', '.join(c.name for c in self.cells)}")


def recipe_path(name: str, folder: str | Path, setting: str = "") -> Path:
    """A recipe named by a study (at `setting` of the study file): a path relative to the study file, else one
    shipped in meter/configs."""
    beside = Path(folder) / name
    if beside.is_file():
        return beside.resolve()
    shipped = Path(str(resources.files("meter.configs").joinpath(name)))
    if Path(name).name == name and shipped.is_file():
        return shipped
    where = f"{setting}: " if setting else ""
    raise ConfigError(f"{where}recipe {name!r} not found{closest_recipe_hint(name)}: not at {beside}, nor shipped in "
                      "meter/configs")  # fmt: skip


def identity(cfg: Config, out: Path) -> str:
    """A hash of what the run computes: its resolved config, less where it writes and how it logs, with the study's
    folder as a placeholder (a study folder moved elsewhere keeps its runs)."""
    data = to_dict(cfg)
    for section, key in NOT_IDENTITY:
        data[section].pop(key, None)
    text = in_study(json.dumps(data, sort_keys=True, default=str), str(out))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def result_identity(config: dict[str, Any], out: str) -> str:
    """A hash of what a run's config computes, less the NOT_RESULT settings too: equal for a run recorded with
    checkpoints less often, a larger evaluation batch."""
    data = json.loads(json.dumps(config, default=str))
    for section, key in NOT_IDENTITY | NOT_RESULT:
        data.get(section, {}).pop(key, None)
    return hashlib.sha256(in_study(json.dumps(data, sort_keys=True), out).encode()).hexdigest()[:16]


def in_study(text: str, out: str) -> str:
    """`text` with the study's folder `out` written as <study>: the folder itself and paths inside it, not a folder
    beside it whose name starts alike (/x/s1 in /x/s10, which would change when the study moved)."""
    return re.sub(re.escape(out) + r'(?=[/"]|$)', "<study>", text)


def _value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def search_points(search: dict[str, list[Any]]) -> list[tuple[str, list[str]]]:
    """(name, overrides) of every combination of the search's values; a name uses each key's last part unless two
    keys share it (`lr=5e-05,fusion.dropout=0.1`)."""
    if not search:
        return []
    lasts = [key.rsplit(".", 1)[-1] for key in search]
    short = {key: last if lasts.count(last) == 1 else key for key, last in zip(search, lasts, strict=True)}
    points = []
    for values in itertools.product(*search.values()):
        pairs = list(zip(search, values, strict=True))
        name = ",".join(f"{short[key]}={_value(value)}" for key, value in pairs)
        points.append((name, [f"{key}={_value(value)}" for key, value in pairs]))
    return points


def _row_overrides(changes: list[Change], part: str) -> list[str]:
    return [o for change in changes for o in [*change.overrides, *getattr(change, part)]]


def _pretrain_recipe(spec: StudySpec, row: Row) -> str:
    recipes = [change.pretrain_recipe for change in row.changes if change.pretrain_recipe]
    if len(set(recipes)) > 1:
        raise ConfigError(f"row {row.name!r}: its changes name different pretraining recipes: {', '.join(recipes)}")
    return recipes[0] if recipes else spec.base.pretrain.recipe


def _resolved(recipe: Path, overrides: list[str], where: str) -> Config:
    try:
        cfg = load_config(recipe, overrides)
        validate(cfg)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error.args[0]}") from None
    if cfg.train.stop_at:  # a recipe's own: the study's overrides are refused with it (spec.NOT_IN_A_STUDY)
        why = NOT_IN_A_STUDY["train.stop_at"]
        raise ConfigError(f"{where}: train.stop_at = {cfg.train.stop_at} in {recipe}: {why}")
    return cfg


# how a task's column is scored, beside the split and its files: a row or search point that changed one would be
# reported in the same column as the others, scored otherwise (the task's section's, where it has the setting)
SCORING = (("task", "max_eval_images"), ("task", "metric"), ("task", "tokenizer"), ("train", "best_on"))


FILES = "the files it is read from"


def scoring(cfg: Config) -> dict[str, object]:
    """The settings that decide how a run's reported number is computed, by name."""
    section = cfg.task
    split, files = _evaluated_split(cfg)
    found: dict[str, object] = {f"{section}.eval_split": split, FILES: files}
    for part, key in SCORING:
        settings = getattr(cfg, section if part == "task" else part)
        if hasattr(settings, key):
            found[f"{section if part == 'task' else part}.{key}"] = getattr(settings, key)
    return found


class Planner:
    """Builds the plan of a study into `out`; with `prepare`, makes its data (shapes world, held-out splits)."""

    def __init__(self, spec: StudySpec, out: Path, prepare: bool) -> None:
        self.spec, self.out, self.prepare = spec, out.resolve(), prepare
        self.shared: dict[str, str] = {}  # pretraining identity -> its folder, relative to out
        index = self.out / SHARED_PRETRAINING
        if index.is_file():
            self.shared = _study_file(index)
        self.owners: dict[str, str] = {}  # pretraining identity -> the cell that runs it in this plan
        self.claimed: dict[str, str] = {}  # pretraining folder -> the identity this plan runs there
        self.planned: set[str] = set()  # the pretraining identities of this plan
        # pretraining identity -> the identity its folder records of the same run (one that differed in NOT_RESULT
        # settings alone): what its fine-tunings record as their input, however many such edits came between
        self.recorded: dict[str, str] = {}
        self.data = self._data_overrides()
        self.kinds = {name: self._task_kind(name) for name in spec.base.tasks}
        self._prepare_world()
        self.holdouts = self._holdouts()
        self.unseen = self._unseen()
        self.points = search_points(spec.search)
        world = world_spec(spec)
        self.world = {"world": dataclasses.asdict(world)} if world is not None else {}

    def _data_overrides(self) -> list[str]:
        if self.spec.data.shapes:
            return [f"data.root={self.out / 'shapes'}"]
        if self.spec.data.root:
            return [f"data.root={(Path(self.spec.folder) / self.spec.data.root).resolve()}"]
        return []

    def _recipe(self, name: str, setting: str = "") -> Path:
        return recipe_path(name, self.spec.folder, setting)

    def _task_config(self, name: str, more: tuple[str, ...] = ()) -> Config:
        task = self.spec.base.tasks[name]
        overrides = [*self.data, *self.spec.base.overrides, *task.overrides, *more]
        return _resolved(self._recipe(task.recipe, f"base.tasks.{name}.recipe"), overrides, f"base.tasks.{name}")

    def _task_kind(self, name: str) -> str:
        kind = self._task_config(name).task
        if kind == "pretrain":
            raise ConfigError(f"base.tasks.{name}.recipe {self.spec.base.tasks[name].recipe!r} is a pretraining recipe")
        return kind

    def _prepare_world(self) -> None:
        world = world_spec(self.spec)
        if world is None or not self.prepare:
            return
        from meter.data.shapes import generate, generate_tasks, is_generated, tasks_generated

        root = self.out / "shapes"
        with waiting_for_folder(self.out, WORLD_LOCK):  # two study runs started at once: one makes it, one waits
            if not is_generated(root, world):
                generate(root, world)
            if any(kind != "vqa" for kind in self.kinds.values()) and not tasks_generated(root, world):
                generate_tasks(root, world)

    def _holdouts(self) -> dict[str, Holdout]:
        holdouts = {}
        for name, task in self.spec.base.tasks.items():
            if self.spec.search and task.select.holdout:
                holdouts[name] = vqa_holdout(self._task_config(name), task.select.holdout, self.out / "holdout" / name,
                                             f"base.tasks.{name}", write=self.prepare)  # fmt: skip
        return holdouts

    def _unseen(self) -> dict[str, Unseen]:
        """How the tasks with `unseen` report on the images that no pretraining of the study saw (their files are
        written after the held-out training split's, whose files they link to)."""
        tasks = [name for name, task in self.spec.base.tasks.items() if task.unseen]
        if not tasks:
            return {}
        corpora = self._pretraining_corpora()
        # the runs record which corpora the split leaves out, known without reading them: a study whose corpora
        # changed is refused before its split is written again
        digest = hashlib.sha256(json.dumps(sorted(corpora)).encode()).hexdigest()[:16]
        seen = set().union(*(coco_images_seen(cfg) for cfg in corpora.values())) if self.prepare else None
        unseen = {}
        for name in tasks:
            holdout = self.holdouts.get(name)
            cfg = self._task_config(name, tuple(holdout.train) if holdout else ())
            unseen[name] = Unseen(vqa_unseen(cfg, seen, self.out / "unseen" / name, f"base.tasks.{name}"), digest)
        return unseen

    def _pretraining_corpora(self) -> dict[str, Config]:
        """Every row's pretraining corpus (the seed changes none), by what names it (paths inside the study as
        <study>: a moved study keeps it), with a config that reads it."""
        corpora: dict[str, Config] = {}
        for row in study_rows(self.spec):
            recipe, overrides, *_ = self._pretraining(f"vlp/{row.slug}", row, [])
            cfg = _resolved(recipe, overrides, f"vlp/{row.slug} pretraining")
            data = to_dict(cfg)["data"]
            corpus = json.dumps([data[key] for key in ("root", "karpathy", "images", "sources")], sort_keys=True)
            corpora.setdefault(in_study(corpus, str(self.out)), cfg)
        return corpora

    def plan(self) -> StudyPlan:
        spec = self.spec
        rows = study_rows(spec)
        self.planned = {self._pretraining(f"vlp/{row.slug}/seed-{seed}", row, [f"train.seed={seed}"])[2]
                        for row in rows for seed in spec.seeds if "vlp" in spec.protocol}  # fmt: skip
        cells = [self._cell(protocol, row, seed) for protocol in spec.protocol for row in rows for seed in spec.seeds]
        tasks = {name: TaskColumns(self.kinds[name], task.metrics or DEFAULT_METRICS.get(self.kinds[name], []),
                                   task.zero_shot) for name, task in spec.base.tasks.items()}  # fmt: skip
        slurm = dataclasses.asdict(spec.slurm)
        return StudyPlan(spec.name, spec.title or spec.name, spec.description, spec.protocol, [r.name for r in rows],
                         spec.seeds, tasks, [name for name, _ in self.points], cells, slurm)  # fmt: skip

    def _cell(self, protocol: str, row: Row, seed: int) -> CellPlan:
        name = f"{protocol}/{row.slug}/seed-{seed}"
        folder = self.out / "cells" / name
        common = [f"train.seed={seed}"]
        runs, depends = [], []
        init_from = "train.init_from=null"
        ranks_pairs = False  # its pretraining has an ITM head: a zero-shot task has something to rank pairs with
        if protocol == "vlp":
            pretrain = self._pretrain_run(name, folder, row, common)
            runs.append(pretrain)
            if pretrain.owner != name:
                depends.append(pretrain.owner)
            pretraining = pretrain.config()
            final = Checkpoints(Path(pretrain.folder) / "checkpoints").path(pretraining.train.max_steps)
            init_from = f"train.init_from={final}"
            ranks_pairs = pretraining.objectives.itm > 0
        upstream = {"pretraining": self.recorded[runs[0].identity]} if runs else {}
        for task in self.spec.base.tasks:
            if self.spec.base.tasks[task].zero_shot and not ranks_pairs:
                continue  # pretrained without ITM (the MLM row): nothing scores a pair; its column shows a dash
            runs += self._task_runs(name, folder, row, task, [*common, init_from], upstream)
        return CellPlan(name, protocol, row.name, seed, str(folder), runs, depends)

    def _pretraining(self, cell: str, row: Row, common: list[str]) -> tuple[Path, list[str], str, Config]:
        """The recipe, overrides, identity and config of a cell's pretraining."""
        base = self.spec.base.pretrain
        recipe = self._recipe(_pretrain_recipe(self.spec, row), f"the pretraining recipe of row {row.name!r}")
        steps = [f"train.max_steps={base.steps}"] if base.steps else []
        overrides = [*self.data, *self.spec.base.overrides, *base.overrides, *_row_overrides(row.changes, "pretrain"),
                     *common, *steps]  # fmt: skip
        cfg = _resolved(recipe, overrides, f"{cell} pretraining")
        if cfg.task != "pretrain":
            raise ConfigError(f"{cell}: the pretraining recipe {recipe} has task = {cfg.task!r}, not pretrain")
        return recipe, overrides, identity(cfg, self.out), cfg

    def _pretrain_run(self, cell: str, folder: Path, row: Row, common: list[str]) -> RunPlan:
        recipe, overrides, key, cfg = self._pretraining(cell, row, common)
        owner = self.owners.setdefault(key, cell)
        default = str((folder / "pretrain").relative_to(self.out))
        if key not in self.shared:  # a pretraining recorded before, its checkpoints more often now, is the same run
            earlier = self._same_result(result_identity(to_dict(cfg), str(self.out)), default)
            if earlier is not None:
                self.shared[key] = self.shared[earlier]
        run_folder = str(self.out / self._pretraining_folder(key, default))
        if key not in self.recorded:  # a pretraining several cells share: its record read once
            self.recorded[key] = self._recorded_identity(Path(run_folder), key, cfg)
        overrides.append(f"train.out={run_folder}")
        return RunPlan("pretrain", "pretrain", "", "", str(recipe), overrides, run_folder, owner, key,
                       inputs=dict(self.world))  # fmt: skip

    def _recorded_identity(self, folder: Path, key: str, cfg: Config) -> str:
        """The identity `folder`'s record holds when it ran the pretraining `key` or one that differs from it in
        NOT_RESULT settings alone (the record keeps the first: a folder with output is not planned again); else
        `key`."""
        record = folder / RUN
        if not record.is_file() or not has_output(folder):
            return key
        before = _study_file(record)
        if before["identity"] == key:
            return key
        same = result_identity(before["config"], str(before.get("study", self.out))) == result_identity(
            to_dict(cfg), str(self.out)
        )
        return before["identity"] if same else key

    def _same_result(self, result: str, default: str) -> str | None:
        """The identity recorded for a pretraining folder whose run differs from `result` in NOT_RESULT settings
        alone (its folder kept: a row renamed since, a `pretrain-<id>` folder), of no pretraining of this plan; the
        cell's own folder first (two rows alike but for such settings each keep theirs)."""
        taken = {folder for key, folder in self.shared.items() if key in self.planned} | set(self.claimed)
        found = []
        for key, folder in self.shared.items():
            record = self.out / folder / RUN
            if key in self.planned or folder in taken or not record.is_file():
                continue
            before = _study_file(record)
            if result_identity(before["config"], str(before.get("study", self.out))) == result:
                found.append((folder != default, key))
        return min(found)[1] if found else None

    def _pretraining_folder(self, key: str, default: str) -> str:
        """The folder of the pretraining `key` (relative to out): where it ran before, else the cell's own `pretrain`
        unless another pretraining of the plan ran there (an earlier setting of the row, which another row keeps):
        then `pretrain-<key>`. Never a folder of another pretraining of the plan."""
        folder = self.shared.get(key)
        if folder is None or self.claimed.get(folder, key) != key:
            planned = {f for k, f in self.shared.items() if k != key and k in self.planned} | set(self.claimed)
            folder = default if default not in planned else f"{default}-{key[:8]}"
            self.shared[key] = folder
        self.claimed[folder] = key
        return folder

    def _task_runs(self, cell: str, folder: Path, row: Row, task: str, common: list[str], upstream: dict[str, Any]
                   ) -> list[RunPlan]:  # fmt: skip
        spec = self.spec.base.tasks[task]
        recipe = self._recipe(spec.recipe, f"base.tasks.{task}.recipe")
        holdout, unseen = self.holdouts.get(task), self.unseen.get(task)
        steps = [f"train.max_steps={spec.steps}"] if spec.steps else []
        own = [*self.data, *self.spec.base.overrides, *spec.overrides, *self.spec.base.finetune,
               *_row_overrides(row.changes, "finetune")]  # fmt: skip
        if holdout or unseen:
            self._check_split_settings(f"{cell} {task}", recipe, own, task)
        splits = [*(holdout.train if holdout else []), *(unseen.overrides if unseen else [])]
        base = [*own, *splits]
        # how the base row's run of this cell is scored: every row's and search point's must be scored alike
        base_row = [*self.data, *self.spec.base.overrides, *spec.overrides, *self.spec.base.finetune, *splits]
        study = scoring(_resolved(recipe, [*base_row, *common, *steps], f"{cell} {task} (the base row's)"))
        select = (holdout.select if holdout else spec.select.overrides) if self.spec.search else []
        inputs = {**upstream, **self.world, **({"holdout": spec.select.holdout} if holdout else {}),
                  **({"unseen": unseen.corpora} if unseen else {})}  # fmt: skip
        if spec.zero_shot:
            run = self._zero_shot_run(cell, folder, task, recipe, [*base, *common], inputs)
            self._check_scoring(f"{cell} {task}", scoring(run.config()), study, task)
            return [run]
        runs: list[RunPlan] = []
        seen: set[str] = set()
        for point, point_overrides in [("", []), *self.points]:
            name = f"{task}@{slug_point(point)}" if point else task
            overrides = [*base, *point_overrides, *common, *steps]
            cfg = _resolved(recipe, overrides, f"{cell} {name}")
            self._check_scoring(f"{cell} {name}", scoring(cfg), study, task)
            key = identity(cfg, self.out)
            if key in seen:  # a search value equal to the recipe's: the same run
                continue
            seen.add(key)
            if select:
                self._check_selection(cfg, recipe, [*overrides, *select], f"{cell} {name}")
            overrides.append(f"train.out={folder / name}")
            runs.append(RunPlan(name, "finetune", task, point, str(recipe), overrides, str(folder / name), cell, key,
                                select, self.kinds[task], inputs))  # fmt: skip
        return runs

    @staticmethod
    def _check_scoring(where: str, mine: dict[str, object], study: dict[str, object], task: str) -> None:
        """Every row and search point of a column is scored alike (a row on test1 beside the others on dev was
        bolded as the best, the report naming dev)."""
        changed = [key if key == FILES else f"{key} = {mine[key]!r}" for key in study if mine.get(key) != study[key]]
        if changed:
            shown = ", ".join(changed)
            raise ConfigError(f"{where}: sets {shown}, unlike the base row's run of {task}: a column compares runs "
                              f"scored alike; set it in base.tasks.{task}.overrides (for every row), not in a row or "
                              "a search")  # fmt: skip

    def _check_split_settings(self, where: str, recipe: Path, overrides: list[str], task: str) -> None:
        """The split files the study writes (select.holdout, unseen) are made from the task's own settings, for every
        row: a row or base.finetune that changed one would be overruled by them without a word."""
        mine, study = _resolved(recipe, overrides, where), self._task_config(task)
        changed = [f"{section}.{key}" for section, key in SPLIT_SETTINGS
                   if getattr(getattr(mine, section), key) != getattr(getattr(study, section), key)]  # fmt: skip
        if changed:
            raise ConfigError(f"{where}: sets {', '.join(changed)}, from which the study writes the split files of "
                              f"every row (select.holdout, unseen); set it in base.tasks.{task}.overrides")  # fmt: skip

    def _zero_shot_run(self, cell: str, folder: Path, task: str, recipe: Path, overrides: list[str],
                       inputs: dict[str, Any]) -> RunPlan:  # fmt: skip
        """The cell's pretraining (train.init_from) evaluated on the task's evaluation split, not fine-tuned."""
        if self.kinds[task] != "retrieval":
            raise ConfigError(f"base.tasks.{task}.zero_shot: a {self.kinds[task]} recipe; only retrieval is scored "
                              "without fine-tuning (the pretraining's ITM head ranks the pairs)")  # fmt: skip
        cfg = _resolved(recipe, overrides, f"{cell} {task}")
        overrides = [*overrides, f"train.out={folder / task}"]
        return RunPlan(task, "evaluate", task, "", str(recipe), overrides, str(folder / task), cell,
                       identity(cfg, self.out), [], self.kinds[task], inputs)  # fmt: skip

    @staticmethod
    def _check_selection(cfg: Config, recipe: Path, overrides: list[str], where: str) -> None:
        chosen = _resolved(recipe, overrides, f"{where} selection")
        section = cfg.task
        # the split and the files it is read from, not the whole section: another shortlist or a subset of the same
        # split is still selecting on it; the same split's name in another annotation file is another split
        if _evaluated_split(chosen) == _evaluated_split(cfg):
            raise ConfigError(
                f"{where}: its selection evaluates the same {section} split the table reports; select on another "
                f"(select.overrides such as {section}.eval_split=..., or select.holdout for VQA)"
            )
        trained = getattr(cfg, section)
        splits = getattr(trained, "train_splits", None) or [getattr(trained, "train_split", None)]
        selected = getattr(getattr(chosen, section), "eval_split", None)
        if selected in splits:  # a point would be chosen by how well it fits its own training data
            raise ConfigError(
                f"{where}: its selection evaluates {section}.eval_split = {selected}, a split it trains on "
                f"({section}.train_split{'s' if hasattr(trained, 'train_splits') else ''} = {splits}); select on a "
                f"split it does not train on (or leave it out of training), or use select.holdout for VQA"
            )


def _evaluated_split(cfg: Config) -> tuple[str, list[str]]:
    """The split a config evaluates, and the files and folders its task reads it from (those of no split, as a
    Karpathy file, or of that split; not the training splits')."""
    split = getattr(getattr(cfg, cfg.task), "eval_split", "")
    files = task_plan(cfg.task).files(cfg)
    return split, sorted(str(path) for key, path in files if not key.endswith(")") or key.endswith(f"({split})"))


def slug_point(point: str) -> str:
    return "".join(c if c.isalnum() or c in "._=-" else "+" if c == "," else "_" for c in point)


def plan_study(
    spec: StudySpec, out: str | Path, prepare: bool = True, running: Callable[[str], str] | None = None
) -> StudyPlan:
    """The study's cells and runs; with `prepare` the data is made and the plan is checked against run folders that
    exist (a changed run is an error) and written to OUT (plan.json, each cell's cell.json, each run's
    study_run.json). `running(cell folder)`: the live worker that runs a cell ("" none), which keeps its plan."""
    if prepare and (Path(out) / PLAN).is_file():  # runs exist: a changed study is refused before its data is remade
        try:
            before_data = Planner(spec, Path(out), prepare=False).plan()
        except DataError:  # its data is not all there (deleted to be made again): checked below once it is
            before_data = None
        if before_data is not None:
            check_unchanged(before_data, Path(out).resolve())
            if running is not None:  # before the holdout and unseen files its worker's runs read are written again
                check_running_cells(before_data, running)
    planner = Planner(spec, Path(out), prepare)
    plan = planner.plan()
    if prepare:
        check_unchanged(plan, planner.out)
        if running is not None:
            check_running_cells(plan, running)
        save_plan(plan, planner.out)
        write_text_atomically(planner.out / SHARED_PRETRAINING, json.dumps(planner.shared, indent=1))
    return plan


def has_output(folder: Path) -> bool:
    """Whether a run folder holds anything of a run (more than the plan's record)."""
    return any(path.name != RUN for path in folder.iterdir()) if folder.is_dir() else False


def settings_by_key(data: dict[str, Any], defaults: Any = None, prefix: str = "") -> dict[str, Any]:
    """A config dict as {dotted key: value}, down to its settings: a mapping setting (timm_kwargs, hf_kwargs) is one
    value, so that a key it gains or loses is a change of it, not a setting one record lacks."""
    defaults = Config() if defaults is None else defaults
    out: dict[str, Any] = {}
    for key, value in data.items():
        default = getattr(defaults, key, None)
        if isinstance(value, dict) and dataclasses.is_dataclass(default):
            out.update(settings_by_key(value, default, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _comparable(config: dict[str, Any], out: str) -> dict[str, str]:
    """A config's settings by dotted key, paths inside the study's folder written relative to it."""
    flat = at_current_defaults(settings_by_key(config))
    for section, key in NOT_IDENTITY | NOT_RESULT:
        flat.pop(f"{section}.{key}", None)
    return {k: in_study(json.dumps(v, sort_keys=True, default=str), out) for k, v in flat.items()}


def config_changes(before: dict[str, Any], run: RunPlan, out: Path) -> list[str]:
    """The settings in which the run planned now differs from the record of the run in its folder. Settings only
    one of them has (a setting that a newer meter added or removed) are not changes of the study."""
    old = _comparable(before["config"], before.get("study", str(out)))
    new = _comparable(to_dict(run.config()), str(out))
    return [f"{k}: {old[k]} -> {new[k]}" for k in sorted(old.keys() & new.keys()) if old[k] != new[k]]


INPUT_NAMES = {"pretraining": "the pretraining it starts from", "world": "data.shapes", "holdout": "select.holdout",
               "unseen": "the pretraining corpora whose images the unseen split leaves out (unseen: true)"}  # fmt: skip


def input_changes(before: dict[str, Any], run: RunPlan, same_runs: dict[str, str] | None = None) -> list[str]:
    """The inputs (RunPlan.inputs) in which the run planned now differs from the record in its folder; a record
    written before runs recorded them has none to compare. `same_runs`: recorded pretraining identities -> the
    identities planned now of the same runs (they differ in NOT_RESULT settings alone)."""
    old = before.get("inputs")
    if old is None:
        return []
    old, new = dict(old), json.loads(json.dumps(run.inputs, default=str))  # as the record holds them (lists)
    for inputs in (old, new):  # both sides as planned now: each names the pretraining as its folder recorded it
        if "pretraining" in inputs:
            inputs["pretraining"] = (same_runs or {}).get(inputs["pretraining"], inputs["pretraining"])
    return [_input_change(key, old, new) for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)]


def _input_change(key: str, old: dict[str, Any], new: dict[str, Any]) -> str:
    if key == "holdout" and key not in old:  # the split is held out only where a search chooses by it
        return "it trained on the whole training split; a search now holds select.holdout of it out to choose by"
    return f"{INPUT_NAMES.get(key, key)} changed"


def check_unchanged(plan: StudyPlan, out: Path) -> None:
    """Every run folder that holds a run must hold this run: its planned config unchanged."""
    problems = []
    same_runs: dict[str, str] = {}  # pretraining identities recorded -> planned now, of runs that did not change
    for kinds in (("pretrain",), ("finetune", "evaluate")):  # the pretraining first: the fine-tunings' input
        for cell in plan.cells:
            for run in (run for run in cell.own_runs() if run.kind in kinds):
                stored = Path(run.folder) / RUN
                if not stored.is_file() or not has_output(Path(run.folder)):
                    continue
                before = _study_file(stored)
                changed = input_changes(before, run, same_runs)
                if before["identity"] != run.identity:
                    changed += config_changes(before, run, out)
                    if not changed and run.kind == "pretrain":
                        same_runs[before["identity"]] = run.identity
                if changed:
                    problems.append(f"{run.folder} ({'; '.join(changed[:4])})")
    if problems:
        raise ConfigError(
            f"{len(problems)} run folder(s) hold a run of another config than the study now plans there: "
            f"{', '.join(problems[:3])}. The study file changed after they ran: give the changed row a new name "
            "(its runs then go to new folders), or delete those folders to run them again"
        )


def check_running_cells(plan: StudyPlan, running: Callable[[str], str]) -> None:
    """A cell that a live worker runs keeps the plan that worker read: the study file changed for it is refused (its
    records rewritten, the worker's old run was taken for the new one, and its number reported under the change)."""
    for cell in plan.cells:
        stored = Path(cell.folder) / CELL
        if not stored.is_file() or _study_file(stored) == json.loads(json.dumps(asdict(cell))):
            continue
        worker = running(cell.folder)
        if worker:
            raise ConfigError(f"the study file now plans {cell.name} otherwise, and {worker} runs it as it was "
                              "planned: run the changed file once that worker is done (or stopped)")  # fmt: skip


def save_plan(plan: StudyPlan, out: Path) -> None:
    """The plan and each cell's and run's record, each written whole or not at all (a full disk or a kill left a
    cut file that every later command failed to read)."""
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomically(out / PLAN, json.dumps(asdict(plan), indent=1))
    for cell in plan.cells:
        folder = Path(cell.folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomically(folder / CELL, json.dumps(asdict(cell), indent=1))
        for run in cell.own_runs():
            stored = Path(run.folder) / RUN
            if stored.is_file() and has_output(Path(run.folder)):
                continue  # the record of what it ran with
            stored.parent.mkdir(parents=True, exist_ok=True)
            record = {"identity": run.identity, "study": str(out), "command": run.command(),
                      "config": to_dict(run.config()), "inputs": run.inputs}  # fmt: skip
            write_text_atomically(stored, json.dumps(record, indent=1, default=str))


# what to do about a damaged file of the study's: the plan's are written anew; the records of which run a folder
# holds are not (without them, folders are taken for the runs planned now)
DAMAGED_ADVICE = {
    PLAN: "delete it and run `meter study run` again: it plans the study anew (finished runs are kept)",
    CELL: "delete it and run `meter study run` again: it plans the cell anew (finished runs are kept)",
    SHARED_PRETRAINING: "restore it from a copy: it says which folder holds each pretraining (deleted, a renamed "
    "row's pretraining is planned into a folder of its own, and its fine-tunings refused)",
    RUN: "restore it from a copy: it records what the run in this folder ran with (deleted, an edit of the study "
    "would be taken for that run); or delete the run's folder to run it again",
}


def _study_file(path: Path, text_of: Callable[[str], str] = str) -> Any:
    """A file the study wrote, read back; one cut short (written by an older meter as the disk filled) is named,
    with what to do about it."""
    try:
        return json.loads(text_of(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        advice = DAMAGED_ADVICE.get(path.name, "restore it from a copy")
        raise DataError(f"{path} is damaged ({error}): {advice}") from None


def _cell_from_dict(data: dict[str, Any]) -> CellPlan:
    return CellPlan(**{**data, "runs": [RunPlan(**run) for run in data["runs"]]})


def load_cell(path: str | Path) -> CellPlan:
    return _cell_from_dict(_study_file(Path(path)))


def _moved(text: str, out: Path) -> str:
    """A plan read from a study folder that was moved since it was planned (copied off the cluster to write its
    report): the folders it names under the planned one, under the folder it is in now."""
    cells = json.loads(text)["cells"]
    if not cells:
        return text
    planned = Path(cells[0]["folder"]).parents[len(Path(cells[0]["name"]).parts)]  # PLANNED/cells/vlp/row/seed-0
    if planned == out:
        return text
    return text.replace(json.dumps(f"{planned}/")[1:-1], json.dumps(f"{out}/")[1:-1])


def load_plan(out: str | Path) -> StudyPlan:
    path = Path(out) / PLAN
    if not path.is_file():
        raise ConfigError(f"{out} holds no study ({PLAN} not found): run `meter study run STUDY.yaml --out {out}`")
    data = _study_file(path, lambda text: _moved(text, Path(out).resolve()))
    data["tasks"] = {name: TaskColumns(**columns) for name, columns in data["tasks"].items()}
    data["cells"] = [_cell_from_dict(cell) for cell in data["cells"]]
    return StudyPlan(**data)


__all__ = ["CellPlan", "RunPlan", "StudyPlan", "load_cell", "load_plan", "plan_study", "slug"]
