"""The study file: what a study compares and how, typed like the run configs.

    name, title, description        what the table is (the paper's table it mirrors)
    protocol: vlp | no-vlp | [both]  with vision-and-language pretraining, or fine-tuned straight from the encoders
    data: {root: DIR} | {shapes: {images: N, seed: S}}   every run's data.root; `shapes` generates the world in OUT
    base:                            the recipe every row starts from
      name: base                     its row's name
      overrides: [key=value]         every run;  finetune: [...] every fine-tuning run
      pretrain: {recipe, steps, overrides}
      tasks: {NAME: {recipe, steps, metrics, overrides, select: {holdout: F} | {overrides: [...]}, zero_shot,
                     unseen}}
    variants: [{name, overrides, pretrain, finetune, pretrain_recipe}]   one-factor changes from the base, or
    grid: {AXIS: {VALUE: {overrides, ...}}}                              every combination (base: each axis' first)
    seeds: [0, 1]
    search: {train.lr: [5.0e-5, 2.0e-4]}   per variant and task, the fine-tuning settings to try (the tuned table)
    slurm: {partition, gpus_per_node, nodes, time_min, cpus_per_task, mem_gb, stop_s, requeues, extra}

An unknown key or a wrong type is a `ConfigError` that names the key (as `base.tasks.vqa.stepz`) and what is allowed;
`load_study` then checks what the file alone can tell (names, protocols, a selection split for every searched task).
What the recipes say (the task each runs, whether every override applies) is checked when the study is planned.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meter.config import from_dict, read_recipe
from meter.data.shapes import WorldSpec
from meter.errors import ConfigError

# a cell folder's own files: its plan, its status, its worker's log (no task may take their names)
CELL_RECORD, CELL_STATUS, CELL_LOG = "cell.json", "status.json", "worker.log"

PROTOCOLS = {
    "vlp": "with VLP: pretrained on image-text pairs, then each task fine-tuned from that pretraining",
    "no-vlp": "without VLP: each task fine-tuned straight from the encoders' own weights (fusion and heads random)",
}


@dataclass
class PretrainSpec:
    recipe: str = ""  # a recipe file beside the study, or one shipped in meter/configs (by its name)
    steps: int = 0  # train.max_steps of the run; 0 keeps the recipe's
    overrides: list[str] = field(default_factory=list)


@dataclass
class SelectSpec:
    """Where a searched task's candidates are compared: never the split the table reports."""

    holdout: float = 0.0  # VQA: this fraction of the training split's images is held out of training to select on
    overrides: list[str] = field(default_factory=list)  # or: settings that point evaluation at a validation split


@dataclass
class TaskSpec:
    recipe: str = ""
    steps: int = 0
    metrics: list[str] = field(default_factory=list)  # keys of the task's scores (a.b for nested); [] = its default
    overrides: list[str] = field(default_factory=list)
    select: SelectSpec = field(default_factory=SelectSpec)
    # retrieval only, with VLP: the cell's pretraining evaluated as it is on the recipe's evaluation split, not
    # fine-tuned (the paper's Flickr-ZS columns: the ITM head ranks the pairs)
    zero_shot: bool = False
    # VQA, with VLP: every cell reports the evaluation split's questions on the images that no pretraining of the
    # study saw (`<split>-unseen`; the 4M corpus holds most val2014 images)
    unseen: bool = False


@dataclass
class Change:
    """A variant (one row), or one value of a grid axis."""

    name: str = ""
    overrides: list[str] = field(default_factory=list)  # every run of the row
    pretrain: list[str] = field(default_factory=list)  # its pretraining only
    finetune: list[str] = field(default_factory=list)  # its fine-tuning runs only
    pretrain_recipe: str = ""  # another pretraining recipe (e.g. the encoder-decoder's); "" keeps the base's


@dataclass
class BaseSpec:
    name: str = "base"
    overrides: list[str] = field(default_factory=list)
    finetune: list[str] = field(default_factory=list)
    pretrain: PretrainSpec = field(default_factory=PretrainSpec)
    tasks: dict[str, Any] = field(default_factory=dict)  # name -> TaskSpec (typed by load_study)


@dataclass
class DataSpec:
    root: str = ""  # every run's data.root (relative to the study file); "" keeps each recipe's
    shapes: dict[str, Any] = field(default_factory=dict)  # a WorldSpec: the shapes world, generated in OUT/shapes


@dataclass
class SlurmSpec:
    partition: str = ""
    gpus_per_node: int = 1
    nodes: int = 1
    time_min: int = 240
    cpus_per_task: int = 8
    mem_gb: int = 0  # 0: the partition's default
    stop_s: int = 120  # this long before the time limit a cell checkpoints, stops and its job is requeued
    requeues: int = 10  # at most this many time-limit requeues per cell (preemptions are not counted)
    extra: dict[str, Any] = field(default_factory=dict)  # more sbatch settings (submitit's slurm_additional_parameters)


def check_slurm(slurm: SlurmSpec) -> None:
    if not 30 <= slurm.stop_s < slurm.time_min * 60:
        raise ConfigError(f"slurm.stop_s = {slurm.stop_s} must be at least 30 (seconds for the step, the checkpoint "
                          f"and the requeue) and under slurm.time_min ({slurm.time_min} min)")  # fmt: skip
    if slurm.requeues < 0:
        raise ConfigError(f"slurm.requeues = {slurm.requeues} must be at least 0")


@dataclass
class StudySpec:
    name: str = ""
    title: str = ""
    description: str = ""
    protocol: list[str] = field(default_factory=lambda: ["vlp"])
    data: DataSpec = field(default_factory=DataSpec)
    base: BaseSpec = field(default_factory=BaseSpec)
    variants: list[Change] = field(default_factory=list)
    grid: dict[str, Any] = field(default_factory=dict)  # axis -> {value: Change} (typed by load_study)
    seeds: list[int] = field(default_factory=lambda: [0])
    search: dict[str, list[Any]] = field(default_factory=dict)
    slurm: SlurmSpec = field(default_factory=SlurmSpec)
    folder: str = ""  # where the study file lies (recipes and data.root are found relative to it); set on load


@dataclass
class Row:
    """One row of the study's tables: the base, a variant, or a grid point, with its changes from the base."""

    name: str
    slug: str
    changes: list[Change]


def slug(name: str) -> str:
    """A folder name for a display name: `CLIP-ViT 224/16` -> `clip-vit-224-16`."""
    return re.sub(r"[^a-z0-9._]+", "-", name.lower()).strip("-.") or "row"


def _typed_sections(data: Any, cls: type, key: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError(f"{key} = {data!r} must be a mapping of names to sections")
    typed = {}
    for name, value in data.items():
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{key}.{name} = {value!r} must be a section (a mapping of settings)")
        typed[str(name)] = from_dict(cls, value, prefix=f"{key}.{name}")
    return typed


def study_from_dict(data: dict[str, Any], folder: str | Path = ".", name: str = "") -> StudySpec:
    """The typed study from a parsed study file; `folder` is where relative paths in it start."""
    if not isinstance(data, dict):
        raise ConfigError("a study file holds a mapping of settings at the top level")
    data = dict(data)
    if isinstance(data.get("protocol"), str):
        data["protocol"] = [data["protocol"]]
    spec = from_dict(StudySpec, data)
    spec.base.tasks = _typed_sections(spec.base.tasks, TaskSpec, "base.tasks")
    spec.grid = {axis: _typed_sections(values, Change, f"grid.{axis}") for axis, values in spec.grid.items()}
    for axis, values in spec.grid.items():
        for value_name, change in values.items():
            change.name = change.name or value_name
        if not values:
            raise ConfigError(f"grid.{axis} has no values; give at least one (the first is the base's)")
    if spec.data.shapes:
        from_dict(WorldSpec, spec.data.shapes, prefix="data.shapes")
    spec.name = spec.name or name
    spec.folder = str(Path(folder).resolve())
    check_study(spec)
    return spec


def load_study(path: str | Path) -> StudySpec:
    """Reads and checks a study file (a path, or the name of one shipped in meter/studies)."""
    path = study_path(path)
    data = read_recipe(path)  # as a recipe is read: a key set twice, or `010` read as octal 8, is named by its line
    try:
        return study_from_dict(data or {}, path.parent, path.stem)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error.args[0]}") from None


def study_path(path: str | Path) -> Path:
    from importlib import resources

    path = Path(path)
    if path.is_file():
        return path
    shipped = Path(str(resources.files("meter.studies").joinpath(path.name)))
    if path.name == str(path) and shipped.is_file():
        return shipped
    raise ConfigError(f"study file not found: {path} (nor a shipped study of that name: see `meter study list`)")


def world_spec(spec: StudySpec) -> WorldSpec | None:
    return from_dict(WorldSpec, spec.data.shapes, prefix="data.shapes") if spec.data.shapes else None


def _check_zero_shot(spec: StudySpec, task: TaskSpec, key: str) -> None:
    """A zero-shot task evaluates the cell's pretraining: it needs one, and trains nothing (no steps, no search)."""
    if spec.protocol != ["vlp"]:
        raise ConfigError(f"{key}.zero_shot evaluates each cell's pretraining: it needs protocol vlp alone "
                          f"(protocol = {spec.protocol})")  # fmt: skip
    if task.steps or task.select.holdout or task.select.overrides:
        raise ConfigError(f"{key}.zero_shot trains nothing: it takes no steps and no select (the search leaves it "
                          "as it is)")  # fmt: skip


# settings the study sets for every run, after its overrides: one given there would be silently overruled
STUDY_SETS = {"train.seed": "seeds", "train.out": "the cell's folder", "train.init_from": "the cell's pretraining"}
# settings a study cannot take: a run stopped at train.stop_at was recorded as finished, and its scores reported
NOT_IN_A_STUDY = {
    "train.stop_at": "a study runs each run to its train.max_steps (a job stopped by its time limit "
    "checkpoints and is resumed by the next `meter study run` or slurm's requeue)"
}


def _check_overrides(overrides: list[str], key: str, steps: str = "") -> None:
    """`steps`: the study setting that sets train.max_steps for these runs ("" where none does)."""
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"{key}: {override!r} must look like key.sub=value (e.g. model.text=roberta)")
        _check_setting(override.split("=", 1)[0].strip(), key, steps)


def _check_setting(setting: str, key: str, steps: str) -> None:
    if setting in STUDY_SETS:
        raise ConfigError(f"{key}: {setting} is set by the study ({STUDY_SETS[setting]}), over any value given here")
    if setting in NOT_IN_A_STUDY:
        raise ConfigError(f"{key}: {setting} cannot be set in a study: {NOT_IN_A_STUDY[setting]}")
    if setting == "train.max_steps" and steps:
        raise ConfigError(f"{key}: train.max_steps is set by {steps}, over any value given here; change {steps} (0 "
                          "takes each recipe's train.max_steps)")  # fmt: skip


def check_study(spec: StudySpec) -> None:
    """What the file alone can tell; the recipes are checked when the study is planned."""
    if not spec.name:
        raise ConfigError("name is empty; give the study a name")
    for protocol in spec.protocol:
        if protocol not in PROTOCOLS:
            raise ConfigError(f"protocol = {protocol!r}; choose one of: {', '.join(PROTOCOLS)} (or a list of them)")
    if not spec.protocol or len(set(spec.protocol)) != len(spec.protocol):
        raise ConfigError(f"protocol = {spec.protocol}: give each of {', '.join(PROTOCOLS)} at most once, at least one")
    if "vlp" in spec.protocol and not spec.base.pretrain.recipe:
        raise ConfigError("base.pretrain.recipe is empty: protocol vlp pretrains; name its recipe (or use no-vlp)")
    if spec.data.root and spec.data.shapes:
        raise ConfigError("data.root and data.shapes are both set; give one (shapes: the world generated in OUT)")
    if not spec.base.tasks:
        raise ConfigError("base.tasks is empty; name at least one downstream task with its recipe")
    if spec.variants and spec.grid:
        raise ConfigError("variants and grid are both set; a study is a list of one-factor changes or a grid")
    if not spec.seeds or len(set(spec.seeds)) != len(spec.seeds):
        raise ConfigError(f"seeds = {spec.seeds} must be a non-empty list of distinct integers")
    check_slurm(spec.slurm)
    pretrain_steps = "base.pretrain.steps" if spec.base.pretrain.steps else ""
    task_steps = next((f"base.tasks.{name}.steps" for name, task in spec.base.tasks.items() if task.steps), "")
    _check_overrides(spec.base.overrides, "base.overrides", pretrain_steps or task_steps)
    _check_overrides(spec.base.finetune, "base.finetune", task_steps)
    _check_overrides(spec.base.pretrain.overrides, "base.pretrain.overrides", pretrain_steps)
    if spec.base.pretrain.steps < 0:
        raise ConfigError(f"base.pretrain.steps = {spec.base.pretrain.steps} must be at least 0 (0: the recipe's)")
    for name, task in spec.base.tasks.items():
        key = f"base.tasks.{name}"
        if slug(name) != name:
            raise ConfigError(f"{key}: a task's name is a folder name; use lower case, digits, - . _ ({slug(name)!r})")
        kept = ("pretrain", CELL_RECORD, CELL_STATUS, CELL_LOG)
        if name in kept or name.startswith("pretrain-"):
            raise ConfigError(f"{key}: a cell's folder keeps {name!r} for its pretraining or its records "
                              f"({', '.join(kept)}, pretrain-*); name the task otherwise")  # fmt: skip
        if not task.recipe:
            raise ConfigError(f"{key}.recipe is empty; name the task's fine-tuning recipe")
        if task.steps < 0:
            raise ConfigError(f"{key}.steps = {task.steps} must be at least 0 (0: the recipe's train.max_steps)")
        _check_overrides(task.overrides, f"{key}.overrides", f"{key}.steps" if task.steps else "")
        _check_overrides(task.select.overrides, f"{key}.select.overrides")
        if not 0 <= task.select.holdout < 1:
            raise ConfigError(f"{key}.select.holdout = {task.select.holdout} must be in [0, 1)")
        if task.select.holdout and task.select.overrides:
            raise ConfigError(f"{key}.select: give holdout or overrides, not both")
        if task.unseen and "vlp" not in spec.protocol:
            raise ConfigError(f"{key}.unseen leaves out of the reported split the images that the study's pretraining "
                              f"saw: it needs protocol vlp (protocol = {spec.protocol}; without pretraining every "
                              "image is unseen)")  # fmt: skip
        if task.zero_shot:
            _check_zero_shot(spec, task, key)
            continue
        if spec.search and not (task.select.holdout or task.select.overrides):
            raise ConfigError(
                f"{key}.select is empty, but the study searches {', '.join(spec.search)}: the tuned table picks each "
                "variant's best on a validation split, never on the split it reports; give select.holdout (VQA: a "
                "held-out part of the training split) or select.overrides (e.g. nlvr2.eval_split=dev)"
            )
    for key, values in spec.search.items():
        if "=" in key or not values:
            raise ConfigError(f"search.{key} must map a setting (e.g. train.lr) to a non-empty list of values")
        _check_setting(key, f"search.{key}", task_steps)
    rows = study_rows(spec)
    seen: dict[str, str] = {}
    for row in rows:
        if row.slug in seen:
            raise ConfigError(f"variants {seen[row.slug]!r} and {row.name!r} have the same folder name {row.slug!r}")
        seen[row.slug] = row.name
        if not row.name.isprintable():  # a line break in a name broke the report's table
            raise ConfigError(f"row name {row.name!r}: a row's name is shown in the report's tables; give it printable "
                              "characters only (no line breaks, tabs or other invisible characters)")  # fmt: skip
        for change in row.changes:
            steps = {"overrides": pretrain_steps or task_steps, "pretrain": pretrain_steps, "finetune": task_steps}
            for part in ("overrides", "pretrain", "finetune"):
                _check_overrides(getattr(change, part), f"variant {row.name!r} {part}", steps[part])


def study_rows(spec: StudySpec) -> list[Row]:
    """The tables' rows in order: the base first, then each variant; for a grid, every combination (its first is
    the base)."""
    if spec.grid:
        import itertools

        rows = []
        for combination in itertools.product(*(list(values.values()) for values in spec.grid.values())):
            pairs = zip(spec.grid, combination, strict=True)
            name = ", ".join(f"{axis}={change.name}" for axis, change in pairs) if len(spec.grid) > 1 else ""
            name = name or combination[0].name
            rows.append(Row(name, slug("-".join(change.name for change in combination)), list(combination)))
        return rows
    rows = [Row(spec.base.name, slug(spec.base.name), [])]
    for index, change in enumerate(spec.variants):
        if not change.name:
            raise ConfigError(f"variants[{index}].name is empty; every variant needs a display name")
        if not (change.overrides or change.pretrain or change.finetune or change.pretrain_recipe):
            raise ConfigError(
                f"variants[{index}] ({change.name!r}) changes nothing from the base: give its overrides, pretrain,"
                f" finetune or pretrain_recipe (e.g. {{name: {change.name}, overrides: [model.fusion=merged]}})"
            )
        rows.append(Row(change.name, slug(change.name), [change]))
    return rows
